"""``Starmap``: submit tasks, iterate over their results as they arrive.

::

    smap = Starmap(compute, [(block, sites) for block in blocks], Monitor("hazard", path))
    for partial in smap:          # results in arrival order; generator tasks yield many
        ...

    smap = Starmap(compute, monitor=mon)     # or submit one by one
    smap.submit(block, sites)
    total = smap.reduce(operator.add)

Every task is called as ``func(*args, monitor)``. The distribution mode comes from
``[distribution] oq_distribute``, overridden by ``OQ_DISTRIBUTE`` (or the ``distribute``
argument):

``no``           tasks run in this process, one after the other, when iterated (breakpoints work)
``processpool``  a private workerpool on this machine, its workers started with spawn
``zmq``          the workerpools of ``[zworkers] host_cores``; results come back on a port of
                 ``[dbserver] receiver_ports`` (one per live Starmap)

No calculation hangs: a task that raises ends the iteration with a :class:`TaskError` naming the
task, the host and the remote traceback; a worker process that dies (OOM, SIGKILL) or a
workerpool that stops answering for ``pool_timeout`` seconds ends it with :class:`WorkerLost`.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import pickle
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from oqzmq import protocol
from oqzmq.auth import Buffer, Signer, Verifier
from oqzmq.config import Config, load_config
from oqzmq.errors import PortsExhausted, TaskError, UserError, WorkerLost
from oqzmq.monitor import Monitor, OperationStats, TaskRecord, peak_memory_mb
from oqzmq.worker import Report, execute, stats_from_report, task_name

log = logging.getLogger(__name__)

POOL_TIMEOUT = float(os.environ.get("OQ_POOL_TIMEOUT", "10"))
PING_TIMEOUT = 5.0
# Tasks submitted together travel together (fewer, larger messages for tiny tasks; see
# oqzmq.workerpool PREFETCH_MAX, which a batch should not be smaller than).
BATCH_TASKS = 256
BATCH_BYTES = 1 << 20
BURST_GAP = 0.002


@dataclass
class PoolHandle:
    """A master's connection to one workerpool."""

    host: str
    endpoint: str
    sock: zmq.Socket
    signer: Signer
    verifier: Verifier
    size: int = 1
    outstanding: int = 0
    last_heard: float = 0.0
    outbox: list[tuple[int, list[Buffer]]] = field(default_factory=list)
    outbox_bytes: int = 0
    token: str = ""  # the Starmap whose tasks go through this handle
    reply_endpoint: str = ""
    func: bytes = b""  # its pickled task function and monitor name
    last_flush: float = 0.0

    @property
    def pool_id(self) -> str:
        return self.endpoint

    def queue_task(self, task_no: int, frames: list[Buffer], size: int) -> None:
        """Send now if this is the first task of a burst, else batch it (sent when the batch
        fills up, and at the latest when the Starmap is iterated). ``size``: its bytes."""
        quiet = not self.outbox and time.monotonic() - self.last_flush > BURST_GAP
        self.outbox.append((task_no, frames))
        self.outbox_bytes += size
        if quiet or len(self.outbox) >= BATCH_TASKS or self.outbox_bytes >= BATCH_BYTES:
            self.flush_tasks()

    def flush_tasks(self) -> None:
        """Send the queued tasks in one message (see :mod:`oqzmq.workerpool`)."""
        if not self.outbox:
            return
        task_nos = [task_no for task_no, _ in self.outbox]
        nframes = [len(frames) for _, frames in self.outbox]
        body = [frame for _, frames in self.outbox for frame in frames]
        self.send(("submit", self.token, self.reply_endpoint, self.func, task_nos, nframes),
                  body)
        self.outbox.clear()
        self.outbox_bytes = 0
        self.last_flush = time.monotonic()

    def send(self, meta: Any, body: list[Buffer] | tuple[()] = ()) -> None:
        protocol.send(self.sock, self.signer, meta, body)

    def request(self, meta: Any, timeout: float = PING_TIMEOUT) -> Any:
        """Send a control command and wait for its reply (None on timeout)."""
        self.send(meta)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            reply = protocol.recv(self.sock, self.verifier)
            if reply is not None:
                return reply.meta
        return None


def connect_pool(context: zmq.Context, authkey: str, host: str, endpoint: str,
                 max_bytes: int) -> PoolHandle:
    """A handle on the workerpool at ``endpoint``; replies over ``max_bytes`` are refused."""
    sock = protocol.limit(context.socket(zmq.DEALER), max_bytes)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    return PoolHandle(host, endpoint, sock, Signer(authkey, f"ctrl:{endpoint}"),
                      Verifier(authkey, f"ctrl-reply:{endpoint}"))


def ping_pools(pools: list[PoolHandle], timeout: float = PING_TIMEOUT) -> list[PoolHandle]:
    """Ping all pools at once; set their sizes; return the ones that did not answer."""
    for pool in pools:
        pool.send(("ping",))
    silent = {pool.endpoint: pool for pool in pools}
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    for pool in pools:
        poller.register(pool.sock, zmq.POLLIN)
    while silent and (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(int(left * 1000) + 1):
            pool = next(p for p in pools if p.sock is sock)
            reply = protocol.recv(sock, pool.verifier)
            if reply is not None and reply.meta[0] == "pong":
                pool.size = int(reply.meta[2])
                pool.last_heard = time.monotonic()
                silent.pop(pool.endpoint, None)
    return list(silent.values())


class LocalPool:
    """The private workerpool of ``processpool`` mode: one per master process, started lazily."""

    _lock = threading.Lock()
    _instance: LocalPool | None = None

    def __init__(self, cores: int) -> None:
        self.authkey = secrets.token_urlsafe(32)
        self.tmpdir = tempfile.TemporaryDirectory(prefix="oqz-local-")
        os.chmod(self.tmpdir.name, 0o700)
        self.endpoint = f"ipc://{self.tmpdir.name}/ctrl"
        command = [sys.executable, "-m", "oqzmq.workerpool", "--host", "localhost",
                   "--endpoint", self.endpoint, "--cores", str(cores), "--authkey-stdin",
                   "--exit-with-parent"]
        main_path = _main_path()
        if main_path:
            command += ["--main-path", main_path]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, text=True)
        assert self.process.stdin is not None
        self.process.stdin.write(self.authkey + "\n")
        self.process.stdin.close()

    @classmethod
    def get(cls, cores: int = -1) -> LocalPool:
        with cls._lock:
            if cls._instance is None or cls._instance.process.poll() is not None:
                if cls._instance is None:
                    atexit.register(cls.shutdown)
                cls._instance = LocalPool(cores)
            return cls._instance

    @classmethod
    def shutdown(cls) -> None:
        with cls._lock:
            pool, cls._instance = cls._instance, None
        if pool is not None:
            pool.process.terminate()
            try:
                pool.process.wait(10)
            except subprocess.TimeoutExpired:
                pool.process.kill()
                pool.process.wait()
            pool.tmpdir.cleanup()


class Starmap:
    """Run ``func(*args, monitor)`` for each args in ``iterargs`` (and each ``submit``)."""

    _token_counter = itertools.count()

    def __init__(
        self,
        func: Callable[..., Any],
        iterargs: Iterable[tuple[Any, ...]] = (),
        monitor: Monitor | None = None,
        distribute: str | None = None,
        config: Config | None = None,
        pool_timeout: float | None = None,
    ) -> None:
        self.func = func
        self.name = task_name(func)
        self.monitor = monitor if monitor is not None else Monitor(self.name)
        self.config = config if config is not None else load_config()
        self.distribute = distribute or self.config.distribute
        self.pool_timeout = POOL_TIMEOUT if pool_timeout is None else pool_timeout
        self.token = f"{os.getpid():x}-{next(self._token_counter)}-{secrets.token_hex(4)}"
        self.task_no = 0
        self._pending: deque[tuple[int, tuple[Any, ...]]] = deque()  # mode "no"
        self._outstanding: dict[int, PoolHandle] = {}
        self._done: set[int] = set()
        self._context: zmq.Context | None = None
        self._receiver: zmq.Socket | None = None
        self._pools: list[PoolHandle] = []
        self._closed = False
        self._start = time.perf_counter()
        self._func_frame = b""  # pickled on the first remote submit (mode "no" never pickles)
        self._buffers = protocol.ReceiveBuffers()  # large results are joined into these
        for args in iterargs:
            self.submit(*args)

    # --- submitting
    def submit(self, *args: Any) -> int:
        """Queue one task; return its number. Arguments are pickled now (modes other than no)."""
        return self._submit(args, None)

    def submit_to(self, host: str, *args: Any) -> int:
        """Like :meth:`submit` but run the task on the workerpool of ``host`` (zmq mode)."""
        return self._submit(args, host)

    def _submit(self, args: tuple[Any, ...], host: str | None) -> int:
        if self._closed:
            raise UserError(f"Starmap({self.name}) is shut down: create a new one")
        task_no = self.task_no
        self.task_no += 1
        if self.distribute == "no":
            self._pending.append((task_no, (*args, self.monitor)))
            return task_no
        frames = protocol.dumps(args)
        size = protocol.nbytes(frames)
        if size > self.config.max_message_bytes:
            self.task_no -= 1
            raise UserError(
                f"the arguments of task {self.name}#{task_no} take {size / 2**20:.1f} MB, over "
                f"the {self.config.max_message_mb} MB cap of [zworkers] max_message_mb in "
                f"{self.config.source}: pass smaller pieces (or a path on the shared "
                "directory), or raise the cap"
            )
        if self._receiver is None:
            try:
                self._open()
            except BaseException:
                self.shutdown()  # no socket or context left behind (PortsExhausted, ...)
                raise
        pool = self._choose_pool(host)
        if pool.outstanding == 0:  # silence is measured from when it got work
            pool.last_heard = max(pool.last_heard, time.monotonic())
        pool.outstanding += 1
        self._outstanding[task_no] = pool
        pool.queue_task(task_no, frames, size)
        return task_no

    def _choose_pool(self, host: str | None) -> PoolHandle:
        if host is None:
            if len(self._pools) == 1:
                return self._pools[0]
            return min(self._pools, key=lambda p: p.outstanding / p.size)
        for pool in self._pools:
            if pool.host == host:
                return pool
        raise UserError(f"no workerpool for host {host!r} in [zworkers] host_cores")

    def _open(self) -> None:
        self._func_frame = pickle.dumps((self.func, self.monitor.operation), protocol=5)
        self._context = zmq.Context()
        max_bytes = self.config.max_message_bytes
        self._receiver = protocol.limit(self._context.socket(zmq.PULL), max_bytes)
        self._receiver.setsockopt(zmq.LINGER, 0)
        self._receiver.setsockopt(zmq.RCVHWM, 0)
        if self.distribute == "processpool":
            local = LocalPool.get()
            authkey = local.authkey
            self.endpoint = f"ipc://{local.tmpdir.name}/recv-{self.token}"
            self._receiver.bind(self.endpoint)
            self._pools = [connect_pool(self._context, authkey, "localhost", local.endpoint,
                                        max_bytes)]
            timeout = 60.0  # the first start of the private pool imports the world
        elif self.distribute == "zmq":
            authkey = self.config.require_authkey()
            self.endpoint = self._bind_receiver_port()
            self._pools = [
                connect_pool(self._context, authkey, hc.host, f"tcp://{hc.host}:"
                             f"{self.config.ctrl_port}", max_bytes)
                for hc in self.config.require_workers()
            ]
            timeout = PING_TIMEOUT
        else:
            raise UserError(f"unknown distribution mode {self.distribute!r}")
        self._verifier = Verifier(authkey, f"recv:{self.endpoint}")
        for pool in self._pools:
            pool.token, pool.reply_endpoint, pool.func = self.token, self.endpoint, self._func_frame
        silent = ping_pools(self._pools, timeout)
        if silent:
            names = ", ".join(f"{p.host} ({p.endpoint})" for p in silent)
            self.shutdown()
            raise UserError(
                f"no answer within {timeout:.0f}s from the workerpool on {names}: start the "
                "pools with `oqz workers start` (and check `oqz workers status`, the firewall "
                "and that the authkey in openquake.cfg is the same on every node)"
            )

    def _bind_receiver_port(self) -> str:
        assert self._receiver is not None
        host = self.config.receiver_host
        for port in self.config.receiver_ports:
            endpoint = f"tcp://{host}:{port}"
            try:
                self._receiver.bind(endpoint)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EADDRINUSE:
                    continue
                raise UserError(f"cannot listen on {endpoint} for results: {exc} (check "
                                "[dbserver] receiver_host in openquake.cfg)") from exc
            return endpoint
        ports = self.config.receiver_ports
        raise PortsExhausted(
            f"all receiver ports {ports.start}-{ports.stop - 1} on {host} are in use: at most "
            f"{len(ports)} calculations (Starmaps) can be alive at once; wait for one to "
            "finish or widen [dbserver] receiver_ports (and the firewall) in openquake.cfg"
        )

    # --- receiving
    def __iter__(self) -> Iterator[Any]:
        try:
            if self.distribute == "no":
                yield from self._iter_in_process()
            else:
                yield from self._iter_remote()
        finally:
            self.monitor.record(f"total {self.name}", _elapsed(self._start))
            self.shutdown()
            self.monitor.flush()

    def reduce(self, agg: Callable[[Any, Any], Any], acc: Any = None) -> Any:
        """Fold the results with ``agg(acc, result)`` (``acc`` None: the first result)."""
        for result in self:
            acc = result if acc is None else agg(acc, result)
        return acc

    def _iter_in_process(self) -> Iterator[Any]:
        while self._pending:
            task_no, args = self._pending.popleft()
            args = (*args[:-1], self.monitor.child())  # as a worker would get it
            results: list[Any] = []

            def emit(kind: str, report: Report | None, frames: Sequence[Buffer], size: int,
                     task_no: int = task_no, results: list[Any] = results) -> None:
                if frames:
                    results.append(protocol.loads(frames))
                if report is not None:
                    self._finish(task_no, kind, report, "localhost", os.getpid(),
                                 peak_memory_mb())

            execute(self.func, args, emit)
            yield from results

    def _iter_remote(self) -> Iterator[Any]:
        if self._receiver is None:  # nothing was submitted
            return
        last_check = time.monotonic()
        while self._outstanding:
            for pool in self._pools:
                pool.flush_tasks()
            if time.monotonic() - last_check > 1.0:
                last_check = time.monotonic()
                self._check_pools()
            if not self._receiver.poll(250):
                continue
            message = protocol.recv(self._receiver, self._verifier, buffers=self._buffers)
            if message is not None:
                yield from self._handle(message)

    def _handle(self, message: protocol.Received) -> Iterator[Any]:
        """A "batch" of task messages, or a workerpool's "heartbeat" (see oqzmq.worker)."""
        if message.meta[0] == "heartbeat":
            self._heard(message.meta[1])
            return
        _, pool_id, token, host, pid, memory_mb, entries = message.meta
        self._heard(pool_id)
        if token != self.token:
            return
        body, offset = message.body, 0
        for kind, task_no, nframes, report in entries:
            if task_no in self._done:  # e.g. a result after its task was reported lost
                offset += nframes
                continue
            if kind == "result" or kind == "last":
                yield protocol.loads(body[offset:offset + nframes])
            offset += nframes
            if kind != "result":
                self._finish(task_no, kind, report, host, pid, memory_mb)

    def _heard(self, pool_id: str) -> None:
        now = time.monotonic()
        for pool in self._pools:
            if pool.pool_id == pool_id:
                pool.last_heard = now

    def _check_pools(self) -> None:
        now = time.monotonic()
        for pool in self._pools:
            if pool.outstanding and now - pool.last_heard > self.pool_timeout:
                tasks = sorted(n for n, p in self._outstanding.items() if p is pool)
                raise WorkerLost(
                    f"workerpool on host {pool.host} ({pool.endpoint}) has been silent for "
                    f"{now - pool.last_heard:.0f}s with {len(tasks)} task(s) of {self.name} "
                    f"outstanding (tasks {_short(tasks)}): the host or its pool is gone; see "
                    "`oqz workers status`"
                )

    def _finish(self, task_no: int, kind: str, report: Report, host: str, pid: int,
                memory_mb: float) -> None:
        pool = self._outstanding.pop(task_no, None)
        if pool is not None:
            pool.outstanding -= 1
        self._done.add(task_no)
        time_sec, nbytes, nresults, stats, error = report
        if kind == "error" or kind == "lost":
            exception = WorkerLost if kind == "lost" else TaskError
            raise exception(f"task {self.name}#{task_no} failed on host {host} (pid {pid}):\n"
                            f"{(error or '').rstrip()}")
        if stats:
            self.monitor.merge(stats_from_report(stats))
        self.monitor.add_task(TaskRecord(task_no, self.name, host, pid, time_sec, memory_mb,
                                         nbytes, nresults))

    # --- ending
    def shutdown(self) -> None:
        """Drop this Starmap's queued tasks on the pools and release its receiver port."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._buffers = protocol.ReceiveBuffers()  # results still referenced keep theirs
        for pool in self._pools:
            if pool.outstanding:
                with contextlib.suppress(zmq.ZMQError):
                    pool.send(("cancel", self.token))
            pool.sock.close(linger=200)
        if self._receiver is not None:
            self._receiver.close(linger=0)
        if self._context is not None:
            self._context.term()

    def __enter__(self) -> Starmap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _main_path() -> str | None:
    """The master's main script, which workers import (as multiprocessing's spawn does) so
    that tasks defined in it can be unpickled there."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:
        return None  # interactive, or run with -m: the module is importable by name
    return os.path.abspath(path)


def _elapsed(start: float) -> OperationStats:
    return OperationStats(time.perf_counter() - start, peak_memory_mb(), 1)


def _short(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:10])) + (" ..." if len(numbers) > 10 else "")
