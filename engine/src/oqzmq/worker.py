"""Running one task, and the worker process that runs tasks for a workerpool.

:func:`execute` is the single place where a task is called: with its Monitor as the last
argument, streaming each value a generator task yields, measuring time, memory and bytes, and
turning an exception into an error report that names the task and the host. The ``no`` mode of
:class:`oqzmq.parallel.Starmap` calls it in-process; worker processes call it for tasks
received from their workerpool and send what it emits straight to the calculation's receiver.

What a worker sends to a receiver is a :class:`oqzmq.protocol.ResultBatch`: one entry per
task message (a partial result, a return value, the end of a generator task, an error), with
the report of each finished task. Small messages wait to leave together (see
:class:`Outbox`); a big partial result leaves at once, alone.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import GeneratorType
from typing import Any

import zmq

from oqzmq import protocol, zap
from oqzmq.auth import Buffer, Signer, Verifier
from oqzmq.errors import ResultTooLarge
from oqzmq.monitor import Monitor, OperationStats, peak_memory_mb
from oqzmq.protocol import Done, Entry, Ready, Report, ResultBatch, Stop, Tasks

log = logging.getLogger(__name__)

# emit(kind, report, frames, their size in bytes)
Emit = Callable[[str, Report | None, Sequence[Buffer], int], None]
# Sending to a receiver blocks at most this long when it stops reading (calculation gone).
SEND_TIMEOUT_MS = 120_000
RECEIVER_HWM = 64
MAX_RECEIVER_SOCKETS = 16
# Results smaller than this wait (at most FLUSH_SECONDS) for company; a batch of them
# leaves once it holds this many bytes.
RESULT_BATCH_BYTES = 256 * 1024
FLUSH_SECONDS = 0.01


def task_name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))


def execute(func: Callable[..., Any], args: Sequence[Any], emit: Emit,
            max_bytes: int | None = None) -> None:
    """Run ``func(*args)`` (the last arg is the Monitor) and emit its results and its report;
    a result (or yielded part) over ``max_bytes`` is an error of the task."""
    monitor = args[-1] if args and isinstance(args[-1], Monitor) else Monitor(task_name(func))
    start = time.perf_counter()
    nbytes = nresults = 0
    try:
        result = func(*args)
        if isinstance(result, GeneratorType):
            for value in result:
                frames = protocol.dumps(value)
                size = _checked_size(frames, max_bytes, func)
                nbytes += size
                nresults += 1
                emit("result", None, frames, size)
            emit("end", _report(monitor, start, nbytes, nresults), (), 0)
        else:
            frames = protocol.dumps(result)
            size = _checked_size(frames, max_bytes, func)
            emit("last", _report(monitor, start, size, 1), frames, size)
    except Exception:
        emit("error", _report(monitor, start, nbytes, nresults, traceback.format_exc()), (), 0)


def _checked_size(frames: Sequence[Buffer], max_bytes: int | None,
                  func: Callable[..., Any]) -> int:
    size = protocol.nbytes(frames)
    if max_bytes is not None and size > max_bytes:
        raise ResultTooLarge(
            f"{task_name(func)} produced a result of {size / 2**20:.1f} MB, over the "
            f"{max_bytes / 2**20:.0f} MB cap of [zworkers] max_message_mb: yield the result in "
            "parts (make the task a generator: each yielded part travels as its own message), "
            "or raise the cap in openquake.cfg"
        )
    return size


def _report(monitor: Monitor, start: float, nbytes: int, nresults: int,
            error: str | None = None) -> Report:
    stats = {op: (s.time_sec, s.memory_mb, s.counts) for op, s in monitor.stats.items()}
    return (time.perf_counter() - start, nbytes, nresults, stats or None, error)


def failure_report(reason: str) -> Report:
    """The report of a task that could not run (``reason`` in place of a traceback)."""
    return (0.0, 0, 0, None, reason)


def stats_from_report(stats: dict[str, tuple[float, float, int]]) -> dict[str, OperationStats]:
    return {op: OperationStats(t, m, c) for op, (t, m, c) in stats.items()}


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
        sock = zap.client(self._context.socket(zmq.PUSH), self._authkey, endpoint)
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


def _function(pickled: bytes) -> tuple[Callable[..., Any], Monitor]:
    """The task function (unpickled once per calculation) and a Monitor for it.

    The Monitor is reused by the tasks of that function (they run one after the other in
    this process): :func:`_run_one` resets its measurements, which is what a fresh one gives.
    """
    found = _FUNCTIONS.get(pickled)
    if found is None:
        func, operation = pickle.loads(pickled)
        found = _FUNCTIONS[pickled] = (func, Monitor(operation))
        if len(_FUNCTIONS) > 256:
            _FUNCTIONS.popitem(last=False)
    return found


class Outbox:
    """Results waiting to leave a worker: small messages are sent together, per receiver.

    Big messages (partial results of generator tasks) go at once, so memory stays bounded;
    the rest is flushed when FLUSH_SECONDS have passed, so only tiny tasks are batched.
    """

    def __init__(self, receivers: ReceiverSockets, pool_id: str, host: str,
                 max_bytes: int) -> None:
        self.receivers = receivers
        self.max_bytes = max_bytes  # the cap on each result (see execute)
        self.pool_id = pool_id
        self.host = host
        self.pid = os.getpid()
        # keyed by (receiver endpoint, Starmap token)
        self.pending: dict[tuple[str, str], tuple[list[Entry], list[Buffer]]] = {}
        self.nbytes = 0
        self.since = time.monotonic()

    def add(self, endpoint: str, token: str, entry: Entry, frames: Sequence[Buffer],
            size: int) -> None:
        """Queue (or send) one task message; ``size``: its frames' bytes."""
        if size >= RESULT_BATCH_BYTES:
            self.flush()  # keep the order of this task's messages
            self._send(endpoint, token, [entry], frames)
            return
        if not self.pending:
            self.since = time.monotonic()
        entries, body = self.pending.setdefault((endpoint, token), ([], []))
        entries.append(entry)
        body += frames
        self.nbytes += size
        if self.nbytes >= RESULT_BATCH_BYTES:
            self.flush()

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.since >= FLUSH_SECONDS

    def flush(self) -> None:
        for (endpoint, token), (entries, body) in self.pending.items():
            self._send(endpoint, token, entries, body)
        self.pending.clear()
        self.nbytes = 0

    def _send(self, endpoint: str, token: str, entries: list[Entry],
              body: Sequence[Buffer]) -> None:
        sock, signer = self.receivers.get(endpoint, token)
        batch = ResultBatch(self.pool_id, token, self.host, self.pid, peak_memory_mb(), entries)
        protocol.send(sock, signer, batch, body, chunk=protocol.CHUNK_BYTES)


def worker_main(
    pool_endpoint: str,
    authkey: str,
    host: str,
    pool_id: str,
    ident: bytes,
    max_bytes: int,
    main_path: str | None = None,
) -> None:
    """Entry point of a worker process (started by the workerpool with multiprocessing spawn)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker {os.getpid()} %(message)s")
    if main_path:
        import multiprocessing.spawn

        multiprocessing.spawn.import_main_path(main_path)
    context = zmq.Context()
    dealer = zap.client(protocol.limit(context.socket(zmq.DEALER), max_bytes), authkey,
                        pool_endpoint)
    dealer.setsockopt(zmq.ROUTING_ID, ident)
    dealer.setsockopt(zmq.LINGER, 2000)
    dealer.connect(pool_endpoint)
    to_pool = Signer(authkey, f"pool:{pool_endpoint}")
    from_pool = Verifier(authkey, f"worker:{pool_endpoint}")
    receivers = ReceiverSockets(context, authkey)
    outbox = Outbox(receivers, pool_id, host, max_bytes)
    parent = os.getppid()
    protocol.send(dealer, to_pool, Ready(os.getpid()))
    try:
        while os.getppid() == parent:  # a worker whose pool died exits instead of lingering
            if not dealer.poll(1000):
                continue
            message = protocol.recv(dealer, from_pool)
            if message is None:
                continue
            if message.kind == Stop.KIND:
                break
            _run_batch(message, host, outbox, dealer, to_pool)
    finally:
        receivers.close()
        dealer.close(linger=1000)
        context.term()


def _run_batch(
    message: protocol.Received, host: str, outbox: Outbox, dealer: zmq.Socket, to_pool: Signer
) -> None:
    """Run the tasks of one :class:`~oqzmq.protocol.Tasks` message; report them done as
    results leave."""
    tasks = Tasks.from_meta(message.meta)
    token, endpoint = tasks.token, tasks.reply_endpoint
    body = message.body
    try:
        func, monitor = _function(tasks.func)
    except Exception:
        report = failure_report(_unpickling_hint(host) + traceback.format_exc())
        for task_no in tasks.task_nos:
            outbox.add(endpoint, token, ("error", task_no, 0, report), (), 0)
        outbox.flush()
        protocol.send(dealer, to_pool, Done(len(tasks.task_nos), 0.0))
        return
    done, offset, started = 0, 0, time.perf_counter()
    for task_no, count in zip(tasks.task_nos, tasks.nframes, strict=True):
        _run_one(func, monitor, body[offset:offset + count], host, outbox, endpoint, token,
                 task_no)
        offset += count
        done += 1
        if outbox.due() or not outbox.pending:
            outbox.flush()
            now = time.perf_counter()
            protocol.send(dealer, to_pool, Done(done, now - started))
            done, started = 0, now
    outbox.flush()
    if done:
        protocol.send(dealer, to_pool, Done(done, time.perf_counter() - started))


def _run_one(
    func: Callable[..., Any], monitor: Monitor, frames: list[memoryview], host: str,
    outbox: Outbox, endpoint: str, token: str, task_no: int,
) -> None:
    def emit(kind: str, report: Report | None, frames: Sequence[Buffer], size: int) -> None:
        outbox.add(endpoint, token, (kind, task_no, len(frames), report), frames, size)

    monitor.stats = {}
    try:
        args = (*protocol.loads(frames), monitor)
    except Exception:
        emit("error", failure_report(_unpickling_hint(host) + traceback.format_exc()), (), 0)
        return
    try:
        execute(func, args, emit, outbox.max_bytes)
    except zmq.Again:
        log.error("receiver %s stopped reading: task %s#%d abandoned", endpoint, token, task_no)


def _unpickling_hint(host: str) -> str:
    return (f"cannot unpickle the task on host {host}: its function and arguments must be "
            "importable there (tasks defined in a script's __main__ work in processpool "
            "mode only; install the module on every worker)\n")
