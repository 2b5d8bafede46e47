"""Running one task, and the worker process that runs tasks for a workerpool.

:func:`execute` is the single place where a task is called: with its Monitor as the last
argument, streaming each value a generator task yields, measuring time, memory and bytes, and
turning an exception into an error report that names the task and the host. The ``no`` mode of
:class:`oqzmq.parallel.Starmap` calls it in-process; worker processes call it for tasks
received from their workerpool and send what it emits straight to the calculation's receiver.

Messages a worker sends to a receiver (``meta`` tuples, see :mod:`oqzmq.protocol`)::

    ("result", token, task_no, pool_id)        body: one partial result of a generator task
    ("last",   token, task_no, pool_id, info)  body: the return value of a plain task
    ("end",    token, task_no, pool_id, info)  a generator task finished
    ("error",  token, task_no, pool_id, info)  info["traceback"] says what went wrong

``info`` is a dict: host, pid, time, memory_mb, bytes, nresults, stats (the named blocks).
Small messages leave together as ``("batch", pool_id, [(meta, nframes), ...])`` (see
:class:`Outbox`); big partial results leave at once, alone.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from oqzmq import protocol
from oqzmq.auth import Buffer, Signer, Verifier
from oqzmq.monitor import Monitor, OperationStats, peak_memory_mb

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any] | None, Sequence[Buffer]], None]
# Sending to a receiver blocks at most this long when it stops reading (calculation gone).
SEND_TIMEOUT_MS = 120_000
RECEIVER_HWM = 64
MAX_RECEIVER_SOCKETS = 16
BATCH_BYTES = 256 * 1024  # results smaller than this wait (at most FLUSH_SECONDS) for company
FLUSH_SECONDS = 0.01


def task_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))


def execute(func: Callable[..., Any], args: Sequence[Any], host: str, emit: Emit) -> None:
    """Run ``func(*args)`` (the last arg is the Monitor) and emit its results and its report."""
    monitor = args[-1] if args and isinstance(args[-1], Monitor) else Monitor(task_name(func))
    start = time.perf_counter()
    nbytes = nresults = 0
    try:
        result = func(*args)
        if inspect.isgenerator(result):
            for value in result:
                frames = protocol.dumps(value)
                nbytes += protocol.nbytes(frames)
                nresults += 1
                emit("result", None, frames)
            emit("end", _info(monitor, host, start, nbytes, nresults), ())
        else:
            frames = protocol.dumps(result)
            info = _info(monitor, host, start, protocol.nbytes(frames), 1)
            emit("last", info, frames)
    except Exception:
        info = _info(monitor, host, start, nbytes, nresults)
        info["traceback"] = traceback.format_exc()
        emit("error", info, ())


def _info(monitor: Monitor, host: str, start: float, nbytes: int, nresults: int) -> dict[str, Any]:
    return {
        "host": host,
        "pid": os.getpid(),
        "time": time.perf_counter() - start,
        "memory_mb": peak_memory_mb(),
        "bytes": nbytes,
        "nresults": nresults,
        "stats": {op: (s.time_sec, s.memory_mb, s.counts) for op, s in monitor.stats.items()}
        if monitor.stats else {},
    }


def stats_from_info(info: dict[str, Any]) -> dict[str, OperationStats]:
    return {op: OperationStats(t, m, c) for op, (t, m, c) in info.get("stats", {}).items()}


class ReceiverSockets:
    """PUSH sockets to calculations' receivers: one per endpoint, for the latest Starmap there.

    The next Starmap may bind the same receiver port as soon as the last one released it;
    a socket kept from the last one would sit in zmq's reconnect interval (100 ms) before
    reaching the new one - most of the run time of a short Starmap. So a new Starmap token
    on an endpoint gets a fresh socket, which connects at once, and the old one is closed
    (its queued messages still go out: LINGER). A worker runs one task at a time, so a
    task's messages all leave through one socket, in order.
    """

    def __init__(self, context: zmq.Context, authkey: str) -> None:
        self._context = context
        self._authkey = authkey
        self._sockets: OrderedDict[str, tuple[zmq.Socket, Signer, str]] = OrderedDict()

    def get(self, endpoint: str, token: str) -> tuple[zmq.Socket, Signer]:
        cached = self._sockets.pop(endpoint, None)
        if cached is not None and cached[2] != token:
            cached[0].close()
            cached = None
        if cached is None:
            signer = Signer(self._authkey, f"recv:{endpoint}")
            cached = (self._connect(endpoint), signer, token)
        self._sockets[endpoint] = cached  # most recently used last
        while len(self._sockets) > MAX_RECEIVER_SOCKETS:
            _, (old, _, _) = self._sockets.popitem(last=False)
            old.close()
        return cached[0], cached[1]

    def _connect(self, endpoint: str) -> zmq.Socket:
        sock = self._context.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, RECEIVER_HWM)
        sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        sock.setsockopt(zmq.LINGER, 10_000)
        sock.connect(endpoint)
        return sock

    def close(self) -> None:
        for sock, _, _ in self._sockets.values():
            sock.close()
        self._sockets.clear()


_FUNCTIONS: OrderedDict[bytes, tuple[Callable[..., Any], Monitor]] = OrderedDict()


def _function(frame: memoryview) -> tuple[Callable[..., Any], Monitor]:
    """The task function of a task frame (unpickled once per Starmap) and a Monitor for it.

    The Monitor is reused by the tasks of that function (they run one after the other in
    this process) with its measurements reset, which is what a fresh one would give.
    """
    key = bytes(frame)
    found = _FUNCTIONS.get(key)
    if found is None:
        func, operation = pickle.loads(key)
        found = _FUNCTIONS[key] = (func, Monitor(operation))
        if len(_FUNCTIONS) > 256:
            _FUNCTIONS.popitem(last=False)
    found[1].stats = {}
    return found


class Outbox:
    """Results waiting to leave a worker: small messages are sent together, per receiver.

    Big messages (partial results of generator tasks) go at once, so memory stays bounded;
    the rest is flushed when FLUSH_SECONDS have passed, so only tiny tasks are batched.
    """

    def __init__(self, receivers: ReceiverSockets, pool_id: str) -> None:
        self.receivers = receivers
        self.pool_id = pool_id
        # keyed by (receiver endpoint, Starmap token); meta is (kind, token, ...)
        self.pending: dict[tuple[str, str], list[tuple[tuple[Any, ...], Sequence[Buffer]]]] = {}
        self.nbytes = 0
        self.since = time.monotonic()

    def add(self, endpoint: str, meta: tuple[Any, ...], frames: Sequence[Buffer]) -> None:
        size = protocol.nbytes(frames)
        if size >= BATCH_BYTES:
            self.flush()  # keep the order of this task's messages
            sock, signer = self.receivers.get(endpoint, meta[1])
            protocol.send(sock, signer, meta, frames)
            return
        if not self.pending:
            self.since = time.monotonic()
        self.pending.setdefault((endpoint, meta[1]), []).append((meta, frames))
        self.nbytes += size
        if self.nbytes >= BATCH_BYTES:
            self.flush()

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.since >= FLUSH_SECONDS

    def flush(self) -> None:
        for (endpoint, token), messages in self.pending.items():
            sock, signer = self.receivers.get(endpoint, token)
            entries = [(meta, len(frames)) for meta, frames in messages]
            body = [frame for _, frames in messages for frame in frames]
            protocol.send(sock, signer, ("batch", self.pool_id, entries), body)
        self.pending.clear()
        self.nbytes = 0



def worker_main(
    pool_endpoint: str,
    authkey: str,
    host: str,
    pool_id: str,
    ident: bytes,
    main_path: str | None = None,
) -> None:
    """Entry point of a worker process (started by the workerpool with multiprocessing spawn)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker {os.getpid()} %(message)s")
    if main_path:
        import multiprocessing.spawn

        multiprocessing.spawn.import_main_path(main_path)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, ident)
    dealer.setsockopt(zmq.LINGER, 2000)
    dealer.connect(pool_endpoint)
    to_pool = Signer(authkey, f"pool:{pool_endpoint}")
    from_pool = Verifier(authkey, f"worker:{pool_endpoint}")
    receivers = ReceiverSockets(context, authkey)
    outbox = Outbox(receivers, pool_id)
    parent = os.getppid()
    protocol.send(dealer, to_pool, ("ready", os.getpid()))
    try:
        while os.getppid() == parent:  # a worker whose pool died exits instead of lingering
            if not dealer.poll(1000):
                continue
            message = protocol.recv(dealer, from_pool)
            if message is None:
                continue
            if message.meta[0] == "stop":
                break
            _run_batch(message, host, outbox, dealer, to_pool)
    finally:
        receivers.close()
        dealer.close(linger=1000)
        context.term()


def _run_batch(
    message: protocol.Received, host: str, outbox: Outbox, dealer: zmq.Socket, to_pool: Signer
) -> None:
    """Run the tasks of one ("tasks", index) message; report them done as results leave."""
    done, busy, offset = 0, 0.0, 0
    for token, task_no, endpoint, nframes in message.meta[1]:
        started = time.perf_counter()
        _run_one(token, task_no, endpoint, message.body[offset:offset + nframes], host, outbox)
        offset += nframes
        done += 1
        busy += time.perf_counter() - started
        if outbox.due() or not outbox.pending:
            outbox.flush()
            protocol.send(dealer, to_pool, ("done", done, busy))
            done, busy = 0, 0.0
    outbox.flush()
    if done:
        protocol.send(dealer, to_pool, ("done", done, busy))


def _run_one(
    token: str, task_no: int, endpoint: str, body: list[memoryview], host: str, outbox: Outbox
) -> None:
    def emit(kind: str, info: dict[str, Any] | None, frames: Sequence[Buffer]) -> None:
        meta = (kind, token, task_no, outbox.pool_id) if info is None else (
            kind, token, task_no, outbox.pool_id, info)
        outbox.add(endpoint, meta, frames)

    try:
        func, monitor = _function(body[0])
        args = (*protocol.loads(body[1:]), monitor)
    except Exception:
        hint = (f"cannot unpickle the task on host {host}: its function and arguments must be "
                "importable there (tasks defined in a script's __main__ work in processpool "
                "mode only; install the module on every worker)\n")
        info = {"host": host, "pid": os.getpid(), "traceback": hint + traceback.format_exc()}
        emit("error", info, ())
        return
    try:
        execute(func, args, host, emit)
    except zmq.Again:
        log.error("receiver %s stopped reading: task %s#%d abandoned", endpoint, token, task_no)
