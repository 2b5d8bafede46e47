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
task, the host and the remote traceback. Faults (see "Faults" in the engine's README):

* a task whose worker process dies (SIGKILL, crash) is re-run, on another pool when there is
  one, at most ``[distribution] task_retries`` times; one whose worker ran out of memory (the
  OOM killer, or the pool's ``[memory] hard_mem_limit``) at most ``[memory] oom_retries``
  times (default 0: the calculation fails with :class:`WorkerLost` saying so);
* a workerpool silent for ``pool_timeout`` seconds (host gone, frozen) is dropped from the
  Starmap and its outstanding tasks re-run on the other pools (the same bound); with no pool
  left the iteration ends with :class:`WorkerLost`. A dropped pool is pinged every
  ``PROBE_INTERVAL`` s and rejoins when it answers again: it takes re-runs and new tasks, and
  the other pools give back its share of the tasks still queued there, not started
  (:class:`~oqzmq.protocol.Release`), which are dealt to it (a task of ``submit_to`` stays on
  its host);
* every move is logged (a warning, which reaches the calculation's log) and recorded in the
  datastore's ``task_retries`` table (``attempt`` 0: a queued task dealt to a rejoined pool,
  not a re-run: it does not count against ``task_retries``); a re-run generator task's
  partial results already received from its lost run are skipped (tasks must be
  deterministic, as OpenQuake's are);
* a thread of this process renews the lease of its live Starmaps on their pools every
  ``LEASE_INTERVAL`` s: when the process dies, the pools drop its tasks (LEASE_TIMEOUT);
* ``[memory]`` limits are checked on this host while results arrive, as the real engine
  does: a warning above ``soft_mem_limit``, :class:`MemoryError` above ``hard_mem_limit``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import pickle
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import zmq

from oqzmq import protocol, zap
from oqzmq.auth import Buffer, Signer, Verifier
from oqzmq.config import Config, load_config
from oqzmq.errors import PortsExhausted, TaskError, UserError, WorkerLost
from oqzmq.memory import MemoryLimits
from oqzmq.monitor import Monitor, OperationStats, TaskRecord, TaskRetry, peak_memory_mb
from oqzmq.poolclient import PING_TIMEOUT, PoolHandle, connect_pool, ping_pools
from oqzmq.protocol import (
    Cancel,
    Heartbeat,
    Lease,
    Ping,
    Pong,
    Release,
    Released,
    Report,
    ResultBatch,
)
from oqzmq.worker import execute, stats_from_report, task_name

log = logging.getLogger(__name__)

POOL_TIMEOUT = float(os.environ.get("OQ_POOL_TIMEOUT", "10"))
PROBE_INTERVAL = 2.0  # a dropped pool is pinged this often, to rejoin when it answers
LEASE_INTERVAL = 2.0  # see oqzmq.workerpool LEASE_TIMEOUT
MEMORY_CHECK = 1.0


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


class LeaseKeeper:
    """The thread that tells the pools, every LEASE_INTERVAL s, which Starmaps of this
    process are alive: a thread, so a master busy between two results still renews them, and
    its own sockets (zmq sockets are not thread-safe). When the process dies, renewals stop."""

    _lock = threading.Lock()
    _instance: LeaseKeeper | None = None

    def __init__(self) -> None:
        self.leases: dict[str, tuple[str, tuple[str, ...]]] = {}  # token -> authkey, endpoints
        self.thread = threading.Thread(target=self._run, name="oqz-leases", daemon=True)
        self.thread.start()

    @classmethod
    def hold(cls, token: str, authkey: str, endpoints: Sequence[str]) -> None:
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = LeaseKeeper()
            cls._instance.leases[token] = (authkey, tuple(endpoints))

    @classmethod
    def release(cls, token: str) -> None:
        with cls._lock:
            if cls._instance is not None:
                cls._instance.leases.pop(token, None)

    def _run(self) -> None:
        context = zmq.Context()
        sockets: dict[tuple[str, str], tuple[zmq.Socket, Signer]] = {}
        while True:
            time.sleep(LEASE_INTERVAL)
            with self._lock:
                leases = list(self.leases.items())
            tokens: dict[tuple[str, str], list[str]] = {}
            for token, (authkey, endpoints) in leases:
                for endpoint in endpoints:
                    tokens.setdefault((endpoint, authkey), []).append(token)
            for key, held in tokens.items():
                if key not in sockets:
                    sock = zap.client(context.socket(zmq.DEALER), key[1], key[0])
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.setsockopt(zmq.SNDHWM, 16)  # a frozen pool needs only the latest
                    sock.connect(key[0])
                    sockets[key] = (sock, Signer(key[1], f"ctrl:{key[0]}"))
                protocol.send_nowait(*sockets[key], Lease(held))


_CONTEXT_LOCK = threading.Lock()
_CONTEXT: tuple[int, zmq.Context] | None = None  # (pid, context): a forked child makes its own


def _starmap_context() -> zmq.Context:
    """The zmq context of this process's Starmaps, made once: a context per Starmap started
    its I/O thread and its ZAP handler thread and stopped them again for every task group
    (about a millisecond each time, a few per cent of a short calculation). Each Starmap still
    has sockets of its own and closes them in :meth:`Starmap.shutdown`."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None or _CONTEXT[0] != os.getpid():
            _CONTEXT = (os.getpid(), zmq.Context())
            atexit.register(_flush_starmap_context, _CONTEXT[1])
        return _CONTEXT[1]


def _flush_starmap_context(context: zmq.Context, timeout: float = 1.0) -> None:
    """At exit, let the last messages of closed Starmaps leave (a Cancel that frees a pool's
    workers of an aborted calculation: LINGER 200 ms), as terminating a context per Starmap
    did; bounded, so that a socket some other thread still holds cannot hang the exit."""
    if context.closed:
        return
    closing = threading.Thread(target=context.destroy, kwargs={"linger": 200}, daemon=True,
                               name="oqz-context-exit")
    closing.start()
    closing.join(timeout)


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
        task_retries: int | None = None,
    ) -> None:
        self.func = func
        self.name = task_name(func)
        self.monitor = monitor if monitor is not None else Monitor(self.name)
        self.config = config if config is not None else load_config()
        self.distribute = distribute or self.config.distribute
        self.pool_timeout = POOL_TIMEOUT if pool_timeout is None else pool_timeout
        self.task_retries = self.config.task_retries if task_retries is None else task_retries
        self.limits = MemoryLimits(self.config.soft_mem_limit, self.config.hard_mem_limit)
        self._memory_warned: set[str] = set()
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
        # Re-running lost tasks: a run is known by its "wire" number, the task number for the
        # first, a negative number for each re-run, so results of a run given up are dropped.
        self._args: dict[int, list[Buffer]] = {}  # pickled arguments of unfinished tasks
        self._retries: dict[int, int] = {}  # task_no -> times re-run
        self._current: dict[int, int] = {}  # task_no -> wire of its live run, once re-run
        self._rerun_of: dict[int, int] = {}  # wire (< 0) -> task_no
        self._yielded: dict[int, int] = {}  # task_no -> partial results received
        self._skip: dict[int, int] = {}  # wire -> partial results of a re-run still to drop
        self._wires = itertools.count(-1, -1)
        self._pinned: set[int] = set()  # tasks of submit_to: never dealt to another pool
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
        if self.task_retries or self.config.oom_retries:  # kept to re-run or move the task
            self._args[task_no] = frames
        if host is not None:
            self._pinned.add(task_no)
        self._send_task(self._choose_pool(host), task_no, task_no, frames)
        return task_no

    def _send_task(self, pool: PoolHandle, task_no: int, wire: int,
                   frames: list[Buffer]) -> None:
        if pool.outstanding == 0:  # silence is measured from when it got work
            pool.last_heard = max(pool.last_heard, time.monotonic())
        pool.outstanding += 1
        self._outstanding[task_no] = pool
        pool.queue_task(wire, frames, protocol.nbytes(frames))

    def _choose_pool(self, host: str | None, avoid: str | None = None) -> PoolHandle:
        """The pool of ``host``, else the least loaded live pool (not ``avoid``'s if another
        is alive)."""
        if host is not None:
            for pool in self._pools:
                if pool.host == host and pool.alive:
                    return pool
            if all(pool.host != host for pool in self._pools):
                raise UserError(f"no workerpool for host {host!r} in [zworkers] host_cores")
        if len(self._pools) == 1 and self._pools[0].alive:
            return self._pools[0]
        live = [p for p in self._pools if p.alive]
        if not live:
            raise WorkerLost(f"no workerpool of {self.name} is left: "
                             f"{', '.join(p.host for p in self._pools)} stopped answering; "
                             "see `oqz workers status`")
        preferred = [p for p in live if p.host != avoid] or live
        return min(preferred, key=lambda p: p.outstanding / p.size)

    def _open(self) -> None:
        self._func_frame = pickle.dumps((self.func, self.monitor.operation), protocol=5)
        self._context = _starmap_context()
        max_bytes = self.config.max_message_bytes
        self._receiver = protocol.limit(self._context.socket(zmq.PULL), max_bytes)
        self._receiver.setsockopt(zmq.LINGER, 0)
        self._receiver.setsockopt(zmq.RCVHWM, 0)
        if self.distribute == "processpool":
            local = LocalPool.get()
            authkey = local.authkey
            self.endpoint = f"ipc://{local.tmpdir.name}/recv-{self.token}"
            zap.bind(self._receiver, authkey, f"the result receiver {self.endpoint}",
                     self.endpoint)
            self._pools = [connect_pool(self._context, authkey, "localhost", local.endpoint,
                                        max_bytes)]
            timeout = 60.0  # the first start of the private pool imports the world
        elif self.distribute == "zmq":
            authkey = self.config.require_authkey()
            zap.serve(self._receiver, authkey, f"the result receiver of {self.name}")
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
        names = ", ".join(f"{p.host} ({p.endpoint})" for p in silent)
        if len(silent) == len(self._pools):
            self.shutdown()
            raise UserError(
                f"no answer within {timeout:.0f}s from the workerpool on {names}: start the "
                "pools with `oqz workers start` (and check `oqz workers status`, the firewall "
                "and that the authkey in openquake.cfg is the same on every node)"
            )
        if silent:
            log.warning("%s starts without the workerpool on %s (no answer within %.0fs); it "
                        "joins when it answers", self.name, names, timeout)
        for pool in silent:
            pool.alive, pool.last_ping = False, time.monotonic()
        LeaseKeeper.hold(self.token, authkey, [p.endpoint for p in self._pools])

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

    @property
    def live_hosts(self) -> list[str]:
        """The hosts whose workerpools take this Starmap's tasks (not dropped as silent)."""
        return [pool.host for pool in self._pools if pool.alive]

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
        last_check = 0.0  # check at once: a short Starmap is checked too
        last_loop = time.monotonic()
        while self._outstanding:
            now = time.monotonic()
            if now - last_loop > 1.0:  # the caller held the results, or this process stopped:
                for pool in self._pools:  # the pools were not silent, we were not listening
                    pool.last_heard += now - last_loop
            last_loop = now
            for pool in self._pools:
                pool.flush_tasks()
            if time.monotonic() - last_check > MEMORY_CHECK:
                last_check = time.monotonic()
                self._check_pools()
                self._check_memory()
            if not self._receiver.poll(250):
                continue
            message = protocol.recv(self._receiver, self._verifier, buffers=self._buffers)
            if message is not None:
                yield from self._handle(message)

    def _handle(self, message: protocol.Received) -> Iterator[Any]:
        """A :class:`~oqzmq.protocol.ResultBatch` of task messages, or a workerpool's
        :class:`~oqzmq.protocol.Heartbeat`."""
        if message.kind == Heartbeat.KIND:
            heartbeat = Heartbeat.from_meta(message.meta)
            self._heard(heartbeat.pool_id)
            if heartbeat.memory_warning:
                self._warn_once(heartbeat.pool_id, heartbeat.memory_warning)
            return
        batch = ResultBatch.from_meta(message.meta)
        self._heard(batch.pool_id)
        if batch.token != self.token:
            return
        host, pid, memory_mb = batch.host, batch.pid, batch.memory_mb
        body, offset = message.body, 0
        for kind, wire, nframes, report in batch.entries:
            task_no = wire if not self._current else self._live_task(wire)
            # done: e.g. a result after its task was reported lost; None: a run given up
            if task_no is None or task_no in self._done or (self._skip and self._skipped(
                    wire, kind)):
                offset += nframes
                continue
            if kind == "result" or kind == "last":
                yield protocol.loads(body[offset:offset + nframes])
                if kind == "result":
                    self._yielded[task_no] = self._yielded.get(task_no, 0) + 1
            offset += nframes
            if kind == "lost" or kind == "oom":
                self._rerun(task_no, kind, report, host)
            elif kind != "result":
                self._finish(task_no, kind, report, host, pid, memory_mb)

    def _live_task(self, wire: int) -> int | None:
        """The task of a run (its wire number), None if that run was given up."""
        task_no = wire if wire >= 0 else self._rerun_of.get(wire)
        if task_no is None or self._current.get(task_no, task_no) != wire:
            return None
        return task_no

    def _skipped(self, wire: int, kind: str) -> bool:
        """Whether this partial result of a re-run was already received from the lost run."""
        left = self._skip.get(wire, 0)
        if kind != "result" or not left:
            return False
        self._skip[wire] = left - 1
        return True

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._memory_warned:
            self._memory_warned.add(key)
            log.warning("%s", text)

    def _check_memory(self) -> None:
        """The real engine's check_mem_usage, on this (the master's) host."""
        use, soft, hard = self.limits.check()
        host = socket.gethostname()
        if hard:
            raise MemoryError(self.limits.error(use, host, f"{self.name} stopped"))
        if soft:
            self._warn_once("master", self.limits.warning(use, host))

    def _heard(self, pool_id: str) -> None:
        now = time.monotonic()
        for pool in self._pools:
            if pool.pool_id == pool_id:
                pool.last_heard = now

    def _check_pools(self) -> None:
        now = time.monotonic()
        for pool in self._pools:
            if not pool.alive:
                self._probe(pool, now)
                continue
            self._read_replies(pool)
            if pool.outstanding and now - pool.last_heard > self.pool_timeout:
                self._drop_pool(pool, now)

    def _drop_pool(self, pool: PoolHandle, now: float) -> None:
        """Re-run the outstanding tasks of a silent pool on the others."""
        tasks = sorted(n for n, p in self._outstanding.items() if p is pool)
        reason = (f"workerpool on host {pool.host} ({pool.endpoint}) has been silent for "
                  f"{now - pool.last_heard:.0f}s with {len(tasks)} task(s) of {self.name} "
                  f"outstanding (tasks {_short(tasks)})")
        pool.alive, pool.last_ping = False, now
        pool.outbox.clear()
        with contextlib.suppress(zmq.ZMQError):
            pool.send(Cancel(self.token))  # if it wakes up, it drops them
        if not any(p.alive for p in self._pools):
            raise WorkerLost(f"{reason}: the host or its pool is gone, and no other workerpool "
                             "is left to run them; see `oqz workers status`")
        log.warning("%s: re-running them on the other workerpools (each at most "
                    "[distribution] task_retries = %d times)", reason, self.task_retries)
        why = (f"its workerpool on host {pool.host} was silent for {now - pool.last_heard:.0f}s"
               " (host gone or frozen)")
        for task_no in tasks:
            self._rerun(task_no, "lost", None, pool.host, why)

    def _probe(self, pool: PoolHandle, now: float) -> None:
        """Ping a dropped pool; when it answers, it rejoins (takes re-runs and new tasks, and
        its share of the tasks still queued on the other pools)."""
        for reply in _replies(pool):
            if reply.kind == Pong.KIND:
                pool.heard_pong(Pong.from_meta(reply.meta))
                pool.alive = True
                log.warning("workerpool on host %s answers again: it rejoins %s", pool.host,
                            self.name)
                self._rebalance(pool)
                return
        if now - pool.last_ping >= PROBE_INTERVAL:
            pool.last_ping = now
            with contextlib.suppress(zmq.ZMQError):
                protocol.send_nowait(pool.sock, pool.signer, Ping())

    def _rebalance(self, joined: PoolHandle) -> None:
        """Ask every other live pool to give back the rejoined pool's share of its tasks (those
        still queued there, not started): :meth:`_take_released` deals them to it."""
        if not self._args:  # task_retries = oom_retries = 0: arguments not kept, no moves
            return
        live = [p for p in self._pools if p.alive]
        total_size = sum(p.size for p in live)
        for pool in live:
            count = pool.outstanding * joined.size // total_size
            if pool is not joined and count:
                with contextlib.suppress(zmq.ZMQError):
                    pool.send(Release(self.token, count))

    def _read_replies(self, pool: PoolHandle) -> None:
        """Replies a live pool sent on its control socket: :class:`Released` tasks."""
        for reply in _replies(pool):
            if reply.kind == Released.KIND:
                released = Released.from_meta(reply.meta)
                if released.token == self.token and released.task_nos:
                    self._take_released(pool, released.task_nos)

    def _take_released(self, source: PoolHandle, wires: list[int]) -> None:
        """Deal the tasks ``source`` gave back (queued, never started there) to the least
        loaded other pool (a pool that rejoined); a task sent to ``source`` by
        :meth:`submit_to` goes back to it."""
        moved: dict[str, list[int]] = {}
        for wire in wires:
            task_no = self._live_task(wire)
            if (task_no is None or task_no in self._done or task_no not in self._args
                    or self._outstanding.get(task_no) is not source):
                continue
            self._outstanding.pop(task_no)
            source.outstanding -= 1
            target = source if task_no in self._pinned else self._choose_pool(
                None, avoid=source.host)
            self._send_task(target, task_no, wire, self._args[task_no])
            if target is not source:
                moved.setdefault(target.host, []).append(task_no)
        for host, tasks in moved.items():
            reason = (f"queued on host {source.host}, not started: dealt to the workerpool "
                      f"on host {host}, which rejoined the calculation")
            log.warning("%d task(s) of %s move from host %s to %s (tasks %s): %s", len(tasks),
                        self.name, source.host, host, _short(tasks), reason)
            for task_no in tasks:
                self.monitor.add_retry(TaskRetry(task_no, self.name, source.host, host, 0,
                                                 reason))

    def _rerun(self, task_no: int, kind: str, report: Report | None, host: str,
               reason: str = "") -> None:
        """Run a lost task again (elsewhere if possible), or fail when its retries are spent."""
        pool = self._outstanding.pop(task_no, None)
        if pool is not None:
            pool.outstanding -= 1
        reason = reason or (report[4] if report else "") or "lost"
        retries = self._retries.get(task_no, 0)
        limit = self.config.oom_retries if kind == "oom" else self.task_retries
        if retries >= limit:
            self._done.add(task_no)
            key = "[memory] oom_retries" if kind == "oom" else "[distribution] task_retries"
            raise WorkerLost(f"task {self.name}#{task_no} failed on host {host}: "
                             f"{reason.rstrip()}\n(re-run {retries} time(s); {key} = {limit})")
        target = self._choose_pool(None, avoid=host)
        wire = next(self._wires)
        self._retries[task_no] = retries + 1
        self._current[task_no], self._rerun_of[wire] = wire, task_no
        if self._yielded.get(task_no):
            self._skip[wire] = self._yielded[task_no]
        log.warning("task %s#%d moves from host %s to %s (re-run %d of at most %d): %s",
                    self.name, task_no, host, target.host, retries + 1, limit, reason.rstrip())
        self.monitor.add_retry(TaskRetry(task_no, self.name, host, target.host, retries + 1,
                                         reason.rstrip()))
        self._send_task(target, task_no, wire, self._args[task_no])

    def _finish(self, task_no: int, kind: str, report: Report, host: str, pid: int,
                memory_mb: float) -> None:
        pool = self._outstanding.pop(task_no, None)
        if pool is not None:
            pool.outstanding -= 1
        self._done.add(task_no)
        self._args.pop(task_no, None)
        self._pinned.discard(task_no)
        self._yielded.pop(task_no, None)
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
        self._args.clear()
        LeaseKeeper.release(self.token)
        self._buffers = protocol.ReceiveBuffers()  # results still referenced keep theirs
        for pool in self._pools:
            if pool.outstanding:
                with contextlib.suppress(zmq.ZMQError):
                    pool.send(Cancel(self.token))
            pool.close(linger=200)
        if self._receiver is not None:
            self._receiver.close(linger=0)

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


def _replies(pool: PoolHandle) -> Iterator[protocol.Received]:
    """The authenticated messages waiting on a pool's control socket (none blocks)."""
    while pool.sock.poll(0):
        reply = protocol.recv(pool.sock, pool.verifier)
        if reply is not None:
            yield reply


def _elapsed(start: float) -> OperationStats:
    return OperationStats(time.perf_counter() - start, peak_memory_mb(), 1)


def _short(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:10])) + (" ..." if len(numbers) > 10 else "")
