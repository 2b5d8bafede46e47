"""The workerpool: one per worker host, N worker processes, control socket on ``ctrl_port``.

Run it with ``python -m oqzmq.workerpool --host ADDR --port 1909 --cores -1`` (``oqz workers
start`` does that over ssh, or the ``openquake-workerpool`` systemd unit does). The cluster
secret comes from openquake.cfg (``[dbserver] authkey``), or from standard input with
``--authkey-stdin`` (used by the private pool of ``processpool`` mode).

Control messages (from a master's DEALER, every one authenticated; their names in
:mod:`oqzmq.protocol`: Submit, Cancel, Lease, Ping, StatusQuery...)::

    ("submit", token, reply_endpoint, func, [task_no, ...], [nframes, ...])
                              func: the pickled task function; body: the pickled arguments
                              of each task, nframes frames each - queued, no reply
    ("cancel", token)         drop the queued tasks of a calculation
    ("release", token, count) give back up to count queued (not started) tasks of a
                              calculation, from the end of the queue, for a pool that
                              rejoined it; reply ("released", token, [task_no, ...])
    ("lease", [token, ...])   the master of these calculations is alive (every LEASE_INTERVAL
                              s, from a thread of its process); a calculation whose lease is
                              not renewed for LEASE_TIMEOUT s is cancelled: its master is gone
    ("ping",) ("status",) ("inspect",)     replies: see _reply_*
    ("stop",)                 finish running tasks, then exit
    ("kill",)                 kill the worker processes now (their tasks are reported lost)

SIGHUP asks for a restart when idle (the ``openquake-workerpool`` unit's reload, sent by
site.yml after it changed this node's openquake.cfg or the engine): the pool serves on as
before, and exits with ``RESTART_EXIT`` (systemd starts it again, with the new settings and
code) once no task is queued or running here and no calculation has renewed a lease for
``LEASE_TIMEOUT`` s. A running calculation is never interrupted by it.

Tasks go to worker processes in batches, ``("tasks", token, reply_endpoint, func, task_nos,
nframes)``, their frames forwarded as the master encoded them (never unpickled here), up to a
prefetch depth that adapts to the observed task duration (deep for tiny tasks, so messages
carry many; shallow for long ones, so no worker hoards work); workers report finished tasks
with "done". Every ``HEARTBEAT`` seconds the pool tells each receiver with tasks here that it
is alive; a worker process that dies turns its running task into a "lost" report naming the
task, host and signal ("oom" when its cgroup's OOM-kill counter rose: out of memory), its
queued-but-unstarted tasks go to other workers, and a new worker process replaces it.

``[memory]`` limits of this node's openquake.cfg: above ``soft_mem_limit`` percent of the
host's (or the pool's cgroup's) memory the heartbeats carry a warning the master logs; above
``hard_mem_limit`` the biggest busy worker process is killed before the kernel's OOM killer
fires, and its task reported "oom" with a MemoryError naming the host and the memory used.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from oqzmq import protocol, zap
from oqzmq.auth import Signer, Verifier
from oqzmq.config import ConfigError, load_config
from oqzmq.memory import MemoryLimits, memory_cgroup, oom_kills
from oqzmq.protocol import (
    Cancel,
    Done,
    Heartbeat,
    InspectQuery,
    Kill,
    Killed,
    Lease,
    Message,
    Ping,
    Pong,
    PoolInspection,
    PoolStatus,
    Ready,
    Refused,
    Release,
    Released,
    ResultBatch,
    StatusQuery,
    Stop,
    Stopping,
    Submit,
    Tasks,
)
from oqzmq.sdnotify import notify
from oqzmq.worker import ReceiverSockets, failure_report, worker_main

log = logging.getLogger("oqzmq.workerpool")

# Tasks a worker process holds (running and sent ahead): PREFETCH_SECONDS of work at the
# observed task duration. Tiny tasks travel hundreds to a message (every message costs the
# sender and the receiver some 0.1 ms of CPU, system calls and wake-ups, on a VM); long ones
# are not hoarded by one worker while another idles.
PREFETCH_SECONDS = 0.05
PREFETCH_MIN = 2
PREFETCH_MAX = 256
HEARTBEAT = 1.0
CHECK_CHILDREN = 0.2
LEASE_TIMEOUT = float(os.environ.get("OQ_LEASE_TIMEOUT", "15"))
RESTART_EXIT = 75  # EX_TEMPFAIL: "restart me" (the unit's RestartForceExitStatus)


@dataclass
class Batch:
    """Tasks of one calculation as the master encoded them (see :mod:`oqzmq.protocol`).

    The pool never unpickles a task: it forwards a batch to a worker as it came, or splits
    it where a worker should get fewer tasks, by slicing its layout, never its bytes' meaning.
    """

    token: str
    endpoint: str
    func: bytes  # the pickled task function, the same for every task of a calculation
    task_nos: list[int]
    nframes: list[int]  # logical body frames per task
    layout: np.ndarray  # (sum(nframes), 3) int64: data frame index, offset, length
    data: list[memoryview]

    def __len__(self) -> int:
        return len(self.task_nos)

    def task_keys(self) -> list[str]:
        return [f"{self.token[:8]}#{task_no}" for task_no in self.task_nos]

    def split(self, count: int) -> tuple[Batch, Batch]:
        """The first ``count`` tasks and the rest, as two batches (frames shared, not copied)."""
        frames = sum(self.nframes[:count])
        head = Batch(self.token, self.endpoint, self.func, self.task_nos[:count],
                     self.nframes[:count], self.layout[:frames], self.data)
        tail = Batch(self.token, self.endpoint, self.func, self.task_nos[count:],
                     self.nframes[count:], self.layout[frames:], self.data)
        return head, tail

    def encoded(self) -> tuple[bytes, list[memoryview]]:
        """Layout and data frames of just these tasks: the data frames they use, the first
        and last cut to the bytes they use, so a worker receives nothing it does not run."""
        layout = self.layout.copy()
        (first, start), (last, end) = layout[0, :2], layout[-1, :2]
        end += layout[-1, 2]
        if first == last:
            data = [self.data[first][start:end]]
        else:
            data = [self.data[first][start:], *self.data[first + 1:last], self.data[last][:end]]
        layout[layout[:, 0] == first, 1] -= start
        layout[:, 0] -= first
        return layout.tobytes(), data


class BatchQueue:
    """Batches in order, and how many tasks they hold (``len``), taken task by task."""

    def __init__(self) -> None:
        self._batches: deque[Batch] = deque()
        self._tasks = 0

    def __len__(self) -> int:
        return self._tasks

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._batches)

    def append(self, batch: Batch) -> None:
        self._batches.append(batch)
        self._tasks += len(batch)

    def prepend(self, batches: Iterable[Batch]) -> None:
        """Put ``batches`` (in their order) in front of the queue."""
        for batch in reversed(list(batches)):
            self._batches.appendleft(batch)
            self._tasks += len(batch)

    def take(self, count: int) -> Batch:
        """The first ``count`` tasks (fewer if the first batch holds fewer), as one batch."""
        batch = self._batches.popleft()
        if len(batch) > count:
            batch, rest = batch.split(count)
            self._batches.appendleft(rest)
        self._tasks -= len(batch)
        return batch

    def drop(self, count: int) -> None:
        """Forget the first ``count`` tasks."""
        while count and self._tasks:
            count -= len(self.take(count))

    def release(self, token: str, count: int) -> list[int]:
        """Take up to ``count`` tasks of one calculation from the end of the queue; return
        their numbers (in queue order)."""
        kept: list[Batch] = []
        released: list[int] = []
        for batch in reversed(self._batches):
            wanted = count - len(released)
            if batch.token == token and wanted > 0:
                if len(batch) <= wanted:
                    released[:0] = batch.task_nos
                    continue
                batch, tail = batch.split(len(batch) - wanted)
                released[:0] = tail.task_nos
            kept.append(batch)
        self.clear()
        self.prepend(reversed(kept))
        return released

    def remove(self, token: str) -> None:
        """Forget the tasks of one calculation."""
        kept = [batch for batch in self._batches if batch.token != token]
        self.clear()
        self.prepend(kept)

    def clear(self) -> None:
        self._batches.clear()
        self._tasks = 0


@dataclass
class WorkerSlot:
    ident: bytes
    process: multiprocessing.process.BaseProcess
    ready: bool = False
    assigned: BatchQueue = field(default_factory=BatchQueue)  # sent, in the order it runs them
    revoked: bool = False  # being killed on purpose: its tasks were cancelled
    cgroup: Path | None = None  # its memory cgroup: did the OOM killer strike there?


def ctrl_endpoint(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"


class WorkerPool:
    """The pool's state and event loop (single-threaded, zmq poller)."""

    def __init__(
        self,
        endpoint: str,
        authkey: str,
        host: str,
        cores: int,
        max_bytes: int,
        main_path: str | None = None,
        exit_with_parent: bool = False,
        limits: MemoryLimits | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.max_bytes = max_bytes  # the cap on every message this pool and its workers take
        # the private pool of processpool mode must not outlive its master, even a SIGKILLed one
        self.parent = os.getppid() if exit_with_parent else None
        self.main_path = main_path
        self.host = host
        self.pool_id = endpoint
        self.authkey = authkey
        self.size = cores if cores > 0 else (os.cpu_count() or 1)
        self.context = zmq.Context()
        self.ctrl = protocol.limit(self.context.socket(zmq.ROUTER), max_bytes)
        self.ctrl.setsockopt(zmq.LINGER, 1000)
        zap.bind(self.ctrl, authkey, f"the workerpool's control socket {endpoint}", endpoint)
        # created once the port is ours: the previous pool is gone (see oqzmq.auth). The private
        # pool of processpool mode (ipc) has a fresh key and directory of its own every time.
        self._ctrl_in = Verifier(authkey, f"ctrl:{endpoint}",
                                 service=endpoint.startswith("tcp://"))
        self._ctrl_out = Signer(authkey, f"ctrl-reply:{endpoint}")
        self._tmp = tempfile.TemporaryDirectory(prefix="oqz-pool-")
        os.chmod(self._tmp.name, 0o700)
        self.workers_endpoint = f"ipc://{self._tmp.name}/workers"
        self.workers_sock = protocol.limit(self.context.socket(zmq.ROUTER), max_bytes)
        self.workers_sock.setsockopt(zmq.LINGER, 0)
        zap.bind(self.workers_sock, authkey, "the workerpool's worker socket",
                 self.workers_endpoint)
        self._from_workers = Verifier(authkey, f"pool:{self.workers_endpoint}")
        self._to_workers = Signer(authkey, f"worker:{self.workers_endpoint}")
        self.receivers = ReceiverSockets(self.context, authkey)
        self.queue = BatchQueue()
        self.mean_task_time = 1.0  # moving average of task durations (starts as "long")
        self.slots: dict[bytes, WorkerSlot] = {}
        self._generation = 0
        self.stopping = False
        self.running = True
        self.terminate_reason = ""  # set from a signal handler, acted on by the loop
        self.restart_requested = False  # SIGHUP: exit with RESTART_EXIT once idle
        self.exit_code = 0
        self._spawn = multiprocessing.get_context("spawn")
        self.limits = limits or MemoryLimits(90, 99)
        self.memory_warning = ""  # sent with the heartbeats while above the soft limit
        self.leases: dict[str, float] = {}  # calculation token -> when its master last said so
        self._oom_kills: dict[Path, int] = {}  # cgroup -> its OOM kills already accounted for

    # --- worker processes
    def start_workers(self) -> None:
        for _ in range(self.size):
            self._start_worker()

    def _start_worker(self) -> None:
        self._generation += 1
        ident = f"w{self._generation}".encode()
        process = self._spawn.Process(
            target=worker_main,
            args=(self.workers_endpoint, self.authkey, self.host, self.pool_id, ident,
                  self.max_bytes, self.main_path),
            daemon=True,
            name=f"oqz-worker-{self._generation}",
        )
        process.start()
        cgroup = memory_cgroup(process.pid or 0)
        if cgroup is not None:
            self._oom_kills.setdefault(cgroup, oom_kills(cgroup))
        self.slots[ident] = WorkerSlot(ident, process, cgroup=cgroup)

    def _reap_dead_workers(self) -> None:
        for slot in [s for s in self.slots.values() if not s.process.is_alive()]:
            del self.slots[slot.ident]
            kind, reason = self._death(slot)
            if slot.assigned and not slot.revoked:
                running = slot.assigned.take(1)
                self._report_lost(running, f"worker process pid {slot.process.pid} on host "
                                           f"{self.host} {reason} while running task "
                                           f"{running.task_nos[0]}", slot.process.pid or 0, kind)
                self.queue.prepend(slot.assigned)  # never started: run elsewhere
            if not slot.revoked:
                log.error("worker process %s %s", slot.process.pid, reason)
            if not self.stopping:
                self._start_worker()

    def _death(self, slot: WorkerSlot) -> tuple[str, str]:
        """("oom" or "lost", why) for a worker process that died: "oom" when the OOM-kill
        counter of its cgroup rose (the kernel says nothing else a parent can read)."""
        reason = _exit_reason(slot.process.exitcode)
        if slot.process.exitcode != -signal.SIGKILL or slot.cgroup is None:
            return "lost", reason
        kills = oom_kills(slot.cgroup)
        seen = self._oom_kills.get(slot.cgroup, kills)
        self._oom_kills[slot.cgroup] = kills
        if kills > seen:
            return "oom", (f"was killed by SIGKILL: out of memory (the OOM killer: the "
                           f"oom_kill counter of cgroup {slot.cgroup} rose to {kills})")
        return "lost", f"was killed by SIGKILL (not by the OOM killer of cgroup {slot.cgroup})"

    def _report_lost(self, batch: Batch, reason: str, pid: int = 0, kind: str = "lost") -> None:
        """Tell the receiver that the tasks of ``batch`` will not run (``reason``: why;
        ``kind``: "lost", or "oom" when memory ran out)."""
        sock, signer = self.receivers.get(batch.endpoint, batch.token)
        entries = [(kind, task_no, 0, failure_report(reason)) for task_no in batch.task_nos]
        lost = ResultBatch(self.pool_id, batch.token, self.host, pid, 0.0, entries)
        if not protocol.send_nowait(sock, signer, lost):
            log.warning("could not report lost tasks %s to %s", ", ".join(batch.task_keys()),
                        batch.endpoint)

    # --- event loop
    def wait_accepting(self) -> None:
        """Until the control socket takes messages: those stamped before are refused, as a
        replay from before a restart would be."""
        time.sleep(max(0.0, self._ctrl_in.not_before - time.time()))

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.ctrl, zmq.POLLIN)
        poller.register(self.workers_sock, zmq.POLLIN)
        last_check = last_beat = time.monotonic()
        log.info("workerpool %s: %d worker processes", self.endpoint, self.size)
        while self.running:
            if self.terminate_reason:
                self._kill_now(self.terminate_reason)
                break
            events = dict(poller.poll(int(CHECK_CHILDREN * 1000)))
            if self.workers_sock in events:
                self._drain(self.workers_sock, self._from_workers, self._on_worker)
            if self.ctrl in events:
                self._drain(self.ctrl, self._ctrl_in, self._on_ctrl)
            self._dispatch()
            now = time.monotonic()
            if now - last_check >= CHECK_CHILDREN:
                last_check = now
                self._reap_dead_workers()
                self._expire_leases(now)
                self._check_memory()
                if self.parent is not None and os.getppid() != self.parent:
                    self._kill_now("lost its master process")
                    break
                if self.stopping and not self.queue and not self._busy_slots():
                    self.running = False
                if self.restart_requested and self._idle(now):
                    log.info("restarting for the new settings or engine: no calculation "
                             "has used this pool for %.0f s", LEASE_TIMEOUT)
                    self.exit_code = RESTART_EXIT
                    self.running = False
            if now - last_beat >= HEARTBEAT:
                last_beat = now
                self._heartbeat()
        self._shutdown_workers()

    def _drain(self, sock: zmq.Socket, verifier: Verifier, handler: object) -> None:
        for _ in range(1000):  # bounded, so control messages are never starved
            if not sock.poll(0):
                return
            message = protocol.recv(sock, verifier, envelope=1)
            if message is not None:
                try:
                    handler(message)  # type: ignore[operator]
                except Exception:
                    log.exception("cannot handle message %.200r (sent by another release of "
                                  "oq-zmq-engine? run the same release on every node: re-run "
                                  "site.yml)", message.meta)

    def _dispatch(self) -> None:
        depth = prefetch_depth(self.mean_task_time)
        ready = [s for s in self.slots.values()
                 if s.ready and not s.revoked and len(s.assigned) < depth]
        # share what is queued fairly: no worker takes more than its part of the queue
        share = max(1, -(-len(self.queue) // max(1, len(ready))))
        for slot in sorted(ready, key=lambda s: len(s.assigned)):
            wanted = min(share, depth - len(slot.assigned))
            while wanted and self.queue:
                batch = self.queue.take(wanted)
                wanted -= len(batch)
                slot.assigned.append(batch)
                layout, data = batch.encoded()
                tasks = Tasks(batch.token, batch.endpoint, batch.func, batch.task_nos,
                              batch.nframes)
                protocol.send_encoded(self.workers_sock, self._to_workers, tasks, layout, data,
                                      envelope=[slot.ident])

    def _heartbeat(self) -> None:
        receivers = {(b.endpoint, b.token) for b in self.queue}
        receivers.update((b.endpoint, b.token) for s in self.slots.values() for b in s.assigned)
        for endpoint, token in receivers:
            sock, signer = self.receivers.get(endpoint, token)
            protocol.send_nowait(sock, signer, Heartbeat(self.pool_id, self.memory_warning))

    def _tokens(self) -> set[str]:
        """The calculations with tasks here (queued or held by a worker process)."""
        tokens = {b.token for b in self.queue}
        tokens.update(b.token for s in self.slots.values() if not s.revoked for b in s.assigned)
        return tokens

    def _expire_leases(self, now: float) -> None:
        """Cancel the calculations whose master stopped renewing their lease (process gone:
        SIGKILL, OOM, host down): their tasks would only burn CPU."""
        for token in self._tokens():
            silent = now - self.leases.setdefault(token, now)
            if silent > LEASE_TIMEOUT:
                why = (f"its master has not renewed its lease on the workerpool of host "
                       f"{self.host} for {silent:.0f} s (its process is gone or stopped)")
                log.warning("dropping the tasks of calculation %s: %s", token, why)
                self._report_token_lost(token, why)  # heard only by a master stopped, not gone
                self._cancel(token)
        for token in [t for t, seen in self.leases.items() if now - seen > 2 * LEASE_TIMEOUT]:
            del self.leases[token]

    def _report_token_lost(self, token: str, why: str) -> None:
        held = [b for s in self.slots.values() if not s.revoked for b in s.assigned]
        for batch in [*self.queue, *held]:
            if batch.token == token:
                self._report_lost(batch, why)

    def _cancel(self, token: str) -> None:
        self.queue.remove(token)
        self._revoke_running(token)

    def _check_memory(self) -> None:
        """Warn above the soft limit; above the hard limit kill the biggest busy worker (one
        at a time: the next check sees what that freed) before the kernel's OOM killer does."""
        use, soft, hard = self.limits.check()
        self.memory_warning = self.limits.warning(use, self.host) if soft else ""
        if not hard or any(s.revoked and s.process.is_alive() for s in self.slots.values()):
            return
        busy = [(_rss_mb(s.process.pid or 0), s) for s in self._busy_slots() if not s.revoked]
        if not busy:
            return
        rss, slot = max(busy, key=lambda item: item[0])
        running = slot.assigned.take(1)
        what = (f"killed worker process pid {slot.process.pid} ({rss:.0f} MB resident) running "
                f"task {running.task_nos[0]}")
        log.error("%s", self.limits.error(use, self.host, what))
        self._report_lost(running, self.limits.error(use, self.host, what),
                          slot.process.pid or 0, "oom")
        self.queue.prepend(slot.assigned)
        slot.assigned.clear()
        slot.revoked = True
        _kill(slot.process)

    # --- handlers
    def _on_worker(self, message: protocol.Received) -> None:
        slot = self.slots.get(message.envelope[0])
        if slot is None or slot.revoked:
            return
        if message.kind == Ready.KIND:
            slot.ready = True
        elif message.kind == Done.KIND:
            done = Done.from_meta(message.meta)
            slot.assigned.drop(done.count)
            if done.count:
                self.mean_task_time = (0.7 * self.mean_task_time
                                       + 0.3 * done.seconds / done.count)

    def _on_ctrl(self, message: protocol.Received) -> None:
        command = message.kind
        if command == Submit.KIND:
            self._on_submit(Submit.from_meta(message.meta), message)
            return
        if command == Cancel.KIND:
            self._cancel(Cancel.from_meta(message.meta).token)
            return
        if command == Release.KIND:
            self._on_release(Release.from_meta(message.meta), message.envelope)
            return
        if command == Lease.KIND:
            now = time.monotonic()
            self.leases.update((token, now) for token in Lease.from_meta(message.meta).tokens)
            return
        reply = self._reply(command)
        protocol.send(self.ctrl, self._ctrl_out, reply, envelope=message.envelope)

    def _on_submit(self, submit: Submit, message: protocol.Received) -> None:
        task_nos, nframes = submit.task_nos, submit.nframes
        layout = np.frombuffer(message.layout, dtype=np.int64).reshape(-1, 3)
        if len(task_nos) != len(nframes) or sum(nframes) != len(layout) or not task_nos:
            raise ValueError(f"submit of {len(task_nos)} tasks with {len(nframes)} frame "
                             f"counts for {len(layout)} frames")
        batch = Batch(submit.token, submit.reply_endpoint, submit.func, task_nos, nframes,
                      layout, message.data)
        self.leases[submit.token] = time.monotonic()
        if self.stopping:
            self._report_lost(batch, f"workerpool on {self.host} is stopping and refused "
                                     f"the task")
        else:
            self.queue.append(batch)

    def _on_release(self, release: Release, envelope: Sequence[bytes]) -> None:
        task_nos = self.queue.release(release.token, release.count)
        log.info("calculation %s takes back %d queued task(s) for another pool",
                 release.token, len(task_nos))
        protocol.send(self.ctrl, self._ctrl_out, Released(release.token, task_nos),
                      envelope=envelope)

    def _revoke_running(self, token: str) -> None:
        """Kill the worker processes busy only with tasks of a cancelled calculation (`oqz
        abort`, a failed Starmap); a new process replaces each. A worker that also holds
        tasks of another calculation is left to finish (it may already have started one of
        them): killing it would disturb that calculation."""
        for slot in self.slots.values():
            if slot.revoked or not slot.assigned:
                continue
            if all(batch.token == token for batch in slot.assigned):
                log.info("revoking %s: killing worker process %s",
                         ", ".join(_task_keys(slot.assigned)),
                         slot.process.pid)
                slot.assigned.clear()
                slot.revoked = True
                _kill(slot.process)

    def _reply(self, command: str) -> Message:
        if command == Ping.KIND:
            return Pong(self.host, self.size, os.getpid())
        if command == StatusQuery.KIND:
            return PoolStatus(self.host, len(self._busy_slots()), self.size, len(self.queue))
        if command == InspectQuery.KIND:
            running = {s.process.pid: _task_keys(s.assigned) for s in self.slots.values()}
            return PoolInspection(self.host, running, _task_keys(self.queue))
        if command == Stop.KIND:
            self.stopping = True
            return Stopping(self.host)
        if command == Kill.KIND:
            self._kill_now("killed by `oqz workers kill`")
            return Killed(self.host)
        return Refused(f"unknown command {command!r}")

    def _idle(self, now: float) -> bool:
        """No task here and no calculation that used this pool in the last LEASE_TIMEOUT s."""
        leased = any(now - seen <= LEASE_TIMEOUT for seen in self.leases.values())
        return not self.queue and not self._busy_slots() and not leased

    def request_restart(self) -> None:
        if not self.restart_requested:
            log.info("restart requested (SIGHUP): restarting once idle")
        self.restart_requested = True

    def _busy_slots(self) -> list[WorkerSlot]:
        return [s for s in self.slots.values() if s.assigned]

    def _kill_now(self, why: str) -> None:
        self.stopping = True
        self.running = False
        for slot in self.slots.values():
            for batch in slot.assigned:
                self._report_lost(batch, f"workerpool on host {self.host} {why}")
            _kill(slot.process)
        for batch in self.queue:
            self._report_lost(batch, f"workerpool on host {self.host} {why}")
        self.queue.clear()

    def _shutdown_workers(self) -> None:
        for slot in self.slots.values():
            _kill(slot.process)
        for slot in self.slots.values():
            slot.process.join(5)
        self.receivers.close()
        self.ctrl.close(linger=500)
        self.workers_sock.close(linger=0)
        self.context.term()
        self._tmp.cleanup()
        log.info("workerpool %s stopped", self.endpoint)


def prefetch_depth(mean_task_time: float) -> int:
    """How many tasks a worker process may hold when they take ``mean_task_time`` s each."""
    wanted = PREFETCH_SECONDS / max(mean_task_time, 1e-9)
    return int(max(PREFETCH_MIN, min(PREFETCH_MAX, wanted)))


def _task_keys(batches: Iterable[Batch]) -> list[str]:
    return [key for batch in batches for key in batch.task_keys()]


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive() and process.pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


def _rss_mb(pid: int) -> float:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m oqzmq.workerpool", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", required=True, help="address to listen on (as in host_cores)")
    parser.add_argument("--port", type=int, help="control port (default: [zworkers] ctrl_port)")
    parser.add_argument("--endpoint", help="bind this zmq endpoint instead of tcp://HOST:PORT")
    parser.add_argument("--cores", type=int, default=-1, help="worker processes (-1 = all)")
    parser.add_argument("--authkey-stdin", action="store_true",
                        help="read the cluster secret from the first line of standard input")
    parser.add_argument("--pidfile", type=Path, help="write the pool's pid here")
    parser.add_argument("--main-path", help="script whose tasks the workers must unpickle")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the process that started the pool exits")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s workerpool: %(message)s")
    try:
        config = load_config()
        authkey = sys.stdin.readline().strip() if args.authkey_stdin else config.require_authkey()
        endpoint = args.endpoint or ctrl_endpoint(args.host, args.port or config.ctrl_port)
        limits = MemoryLimits(config.soft_mem_limit, config.hard_mem_limit)
        pool = WorkerPool(endpoint, authkey, args.host, args.cores, config.max_message_bytes,
                          args.main_path, args.exit_with_parent, limits)
    except (ConfigError, zmq.ZMQError, OSError, ValueError) as exc:  # ValueError: zap.bind
        print(f"workerpool: error: {exc}", file=sys.stderr)
        return 2
    if args.pidfile:
        args.pidfile.write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: setattr(pool, "terminate_reason", "got SIGTERM"))
    signal.signal(signal.SIGHUP, lambda *_: pool.request_restart())
    pool.start_workers()
    pool.wait_accepting()
    notify("READY=1")  # systemd Type=notify: the control socket takes messages, workers starting
    pool.serve()
    return pool.exit_code


if __name__ == "__main__":
    sys.exit(main())
