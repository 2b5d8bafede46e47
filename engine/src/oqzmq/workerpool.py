"""The workerpool: one per worker host, N worker processes, control socket on ``ctrl_port``.

Run it with ``python -m oqzmq.workerpool --host ADDR --port 1909 --cores -1`` (``oqz workers
start`` does that over ssh, or the ``openquake-workerpool`` systemd unit does). The cluster
secret comes from openquake.cfg (``[dbserver] authkey``), or from standard input with
``--authkey-stdin`` (used by the private pool of ``processpool`` mode).

Control messages (``meta`` tuples from a master's DEALER; every one authenticated)::

    ("submit", token, reply_endpoint, [(task_no, nframes), ...])
                              body: each task's pickled (func, args) frames - queued, no reply
    ("cancel", token)         drop the queued tasks of a calculation
    ("ping",) ("status",) ("inspect",)     replies: see _reply_*
    ("stop",)                 finish running tasks, then exit
    ("kill",)                 kill the worker processes now (their tasks are reported lost)

Tasks go to worker processes in batches, up to a prefetch depth that adapts to the observed
task duration (deep for tiny tasks, so messages carry many; shallow for long ones, so no
worker hoards work); workers report finished tasks with "done". Every ``HEARTBEAT`` seconds
the pool tells each receiver with tasks here that it is alive; a worker process that dies
turns its running task into a "lost" report naming the task, host and signal, its
queued-but-unstarted tasks go to other workers, and a new worker process replaces it.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from oqzmq import protocol
from oqzmq.auth import Signer, Verifier
from oqzmq.config import ConfigError, load_config
from oqzmq.sdnotify import notify
from oqzmq.worker import ReceiverSockets, worker_main

log = logging.getLogger("oqzmq.workerpool")

PREFETCH_SHORT = 64  # tasks per worker when tasks take less than SHORT_TASK seconds,
SLICE_SHORT = 16  # sent in slices, so the next slice waits while a worker runs the current
PREFETCH_LONG = 2
SHORT_TASK = 0.02
HEARTBEAT = 1.0
CHECK_CHILDREN = 0.2


@dataclass
class Task:
    token: str
    task_no: int
    endpoint: str
    body: list[memoryview]

    @property
    def key(self) -> str:
        return f"{self.token[:8]}#{self.task_no}"


@dataclass
class WorkerSlot:
    ident: bytes
    process: multiprocessing.process.BaseProcess
    ready: bool = False
    assigned: deque[Task] = field(default_factory=deque)
    revoked: bool = False  # being killed on purpose: its tasks were cancelled


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
        main_path: str | None = None,
        exit_with_parent: bool = False,
    ) -> None:
        self.endpoint = endpoint
        # the private pool of processpool mode must not outlive its master, even a SIGKILLed one
        self.parent = os.getppid() if exit_with_parent else None
        self.main_path = main_path
        self.host = host
        self.pool_id = endpoint
        self.authkey = authkey
        self.size = cores if cores > 0 else (os.cpu_count() or 1)
        self.context = zmq.Context()
        self.ctrl = self.context.socket(zmq.ROUTER)
        self.ctrl.setsockopt(zmq.LINGER, 1000)
        self.ctrl.bind(endpoint)
        self._ctrl_in = Verifier(authkey, f"ctrl:{endpoint}")
        self._ctrl_out = Signer(authkey, f"ctrl-reply:{endpoint}")
        self._tmp = tempfile.TemporaryDirectory(prefix="oqz-pool-")
        os.chmod(self._tmp.name, 0o700)
        self.workers_endpoint = f"ipc://{self._tmp.name}/workers"
        self.workers_sock = self.context.socket(zmq.ROUTER)
        self.workers_sock.setsockopt(zmq.LINGER, 0)
        self.workers_sock.bind(self.workers_endpoint)
        self._from_workers = Verifier(authkey, f"pool:{self.workers_endpoint}")
        self._to_workers = Signer(authkey, f"worker:{self.workers_endpoint}")
        self.receivers = ReceiverSockets(self.context, authkey)
        self.queue: deque[Task] = deque()
        self.mean_task_time = 1.0  # moving average of task durations (starts as "long")
        self.slots: dict[bytes, WorkerSlot] = {}
        self._generation = 0
        self.stopping = False
        self.running = True
        self.terminate_reason = ""  # set from a signal handler, acted on by the loop
        self._spawn = multiprocessing.get_context("spawn")

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
                  self.main_path),
            daemon=True,
            name=f"oqz-worker-{self._generation}",
        )
        process.start()
        self.slots[ident] = WorkerSlot(ident, process)

    def _reap_dead_workers(self) -> None:
        for slot in [s for s in self.slots.values() if not s.process.is_alive()]:
            del self.slots[slot.ident]
            reason = _exit_reason(slot.process.exitcode)
            if slot.assigned and not slot.revoked:
                running = slot.assigned.popleft()
                self._report_lost(running, f"worker process pid {slot.process.pid} on host "
                                           f"{self.host} {reason} while running task "
                                           f"{running.task_no}")
                self.queue.extendleft(reversed(slot.assigned))  # never started: run elsewhere
            if not slot.revoked:
                log.error("worker process %s %s", slot.process.pid, reason)
            if not self.stopping:
                self._start_worker()

    def _report_lost(self, task: Task, reason: str) -> None:
        sock, signer = self.receivers.get(task.endpoint, task.token)
        info = {"host": self.host, "pid": 0, "traceback": reason}
        if not protocol.send_nowait(sock, signer, ("lost", task.token, task.task_no,
                                                   self.pool_id, info)):
            log.warning("could not report lost task %s to %s", task.key, task.endpoint)

    # --- event loop
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
                if self.parent is not None and os.getppid() != self.parent:
                    self._kill_now("lost its master process")
                    break
                if self.stopping and not self.queue and not self._busy_slots():
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
                    log.exception("bad message %r", message.meta)

    def _dispatch(self) -> None:
        depth = PREFETCH_SHORT if self.mean_task_time < SHORT_TASK else PREFETCH_LONG
        ready = [s for s in self.slots.values()
                 if s.ready and not s.revoked and len(s.assigned) < depth]
        # share what is queued fairly: no worker takes more than its part of the queue
        share = max(1, -(-len(self.queue) // max(1, len(ready))))
        for slot in sorted(ready, key=lambda s: len(s.assigned)):
            batch = [self.queue.popleft()
                     for _ in range(min(share, depth - len(slot.assigned), len(self.queue)))]
            if not batch:
                return
            slot.assigned.extend(batch)
            index = [(t.token, t.task_no, t.endpoint, len(t.body)) for t in batch]
            protocol.send(self.workers_sock, self._to_workers, ("tasks", index),
                          [frame for t in batch for frame in t.body], envelope=[slot.ident])

    def _heartbeat(self) -> None:
        receivers = {(t.endpoint, t.token) for t in self.queue}
        receivers.update((t.endpoint, t.token) for s in self.slots.values() for t in s.assigned)
        for endpoint, token in receivers:
            sock, signer = self.receivers.get(endpoint, token)
            protocol.send_nowait(sock, signer, ("heartbeat", "", -1, self.pool_id))

    # --- handlers
    def _on_worker(self, message: protocol.Received) -> None:
        slot = self.slots.get(message.envelope[0])
        if slot is None or slot.revoked:
            return
        kind = message.meta[0]
        if kind == "ready":
            slot.ready = True
        elif kind == "done":
            _, count, seconds = message.meta
            for _ in range(min(count, len(slot.assigned))):
                slot.assigned.popleft()
            if count:
                self.mean_task_time = 0.7 * self.mean_task_time + 0.3 * seconds / count

    def _on_ctrl(self, message: protocol.Received) -> None:
        command = message.meta[0]
        if command == "submit":
            _, token, endpoint, index = message.meta
            offset = 0
            for task_no, nframes in index:
                task = Task(token, task_no, endpoint, message.body[offset:offset + nframes])
                offset += nframes
                if self.stopping:
                    self._report_lost(task, f"workerpool on {self.host} is stopping and "
                                            f"refused task {task_no}")
                else:
                    self.queue.append(task)
            return
        if command == "cancel":
            token = message.meta[1]
            self.queue = deque(t for t in self.queue if t.token != token)
            self._revoke_running(token)
            return
        reply = self._reply(command)
        protocol.send(self.ctrl, self._ctrl_out, reply, envelope=message.envelope)

    def _revoke_running(self, token: str) -> None:
        """Kill the worker processes busy only with tasks of a cancelled calculation (`oqz
        abort`, a failed Starmap); a new process replaces each. A worker that also holds
        tasks of another calculation is left to finish (it may already have started one of
        them): killing it would disturb that calculation."""
        for slot in self.slots.values():
            if slot.revoked or not slot.assigned:
                continue
            if all(task.token == token for task in slot.assigned):
                log.info("revoking %s: killing worker process %s",
                         ", ".join(task.key for task in slot.assigned), slot.process.pid)
                slot.assigned.clear()
                slot.revoked = True
                _kill(slot.process)

    def _reply(self, command: str) -> tuple[object, ...]:
        if command == "ping":
            return ("pong", self.host, self.size, os.getpid())
        if command == "status":
            return ("status", self.host, len(self._busy_slots()), self.size, len(self.queue))
        if command == "inspect":
            running = {s.process.pid: [t.key for t in s.assigned] for s in self.slots.values()}
            return ("inspect", self.host, running, [t.key for t in self.queue])
        if command == "stop":
            self.stopping = True
            return ("stopping", self.host)
        if command == "kill":
            self._kill_now("killed by `oqz workers kill`")
            return ("killed", self.host)
        return ("error", f"unknown command {command!r}")

    def _busy_slots(self) -> list[WorkerSlot]:
        return [s for s in self.slots.values() if s.assigned]

    def _kill_now(self, why: str) -> None:
        self.stopping = True
        self.running = False
        for slot in self.slots.values():
            for task in slot.assigned:
                self._report_lost(task, f"workerpool on host {self.host} {why} (task "
                                        f"{task.task_no})")
            _kill(slot.process)
        for task in self.queue:
            self._report_lost(task, f"workerpool on host {self.host} {why} (task {task.task_no})")
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


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive() and process.pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory? see the kernel log)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {exitcode}"


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
        pool = WorkerPool(endpoint, authkey, args.host, args.cores, args.main_path,
                          args.exit_with_parent)
    except (ConfigError, zmq.ZMQError) as exc:
        print(f"workerpool: error: {exc}", file=sys.stderr)
        return 2
    if args.pidfile:
        args.pidfile.write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: setattr(pool, "terminate_reason", "got SIGTERM"))
    pool.start_workers()
    notify("READY=1")  # systemd Type=notify: the control socket is bound, workers starting
    pool.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
