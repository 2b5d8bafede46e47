"""A master's connection to workerpools: :class:`PoolHandle` (one DEALER socket per pool).

A Starmap (:mod:`oqzmq.parallel`) submits its tasks through one handle per pool; ``oqz
workers`` (:mod:`oqzmq.launcher`) asks the pools for their status through the same handles.
The messages are those of :mod:`oqzmq.protocol` on the ``ctrl:``/``ctrl-reply:`` channels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import zmq

from oqzmq import protocol, zap
from oqzmq.auth import Buffer, Signer, Verifier
from oqzmq.protocol import Message, Ping, Pong, Query, ReplyT, Submit

log = logging.getLogger(__name__)

PING_TIMEOUT = 5.0
# A pool refuses what was stamped before it could take messages (oqzmq.auth, "Replays"): a
# ping sent while it (re)started goes unanswered, so silent pools are pinged again this often
# (seconds; not tied to MAX_CLOCK_SKEW: a pool that got ready is heard at most this late).
REPING = 0.5
# Tasks submitted together travel together: fewer, larger messages for tiny tasks (see
# oqzmq.workerpool PREFETCH_MAX, which a batch should not be smaller than). A batch leaves
# when it holds TASK_BATCH_COUNT tasks or TASK_BATCH_BYTES of arguments, or when the
# Starmap is iterated; the first task after a pause of BURST_GAP s leaves at once.
TASK_BATCH_COUNT = 256
TASK_BATCH_BYTES = 1 << 20
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
    pid: int = 0  # of the pool process, once it answered a ping
    outstanding: int = 0
    last_heard: float = 0.0
    outbox: list[tuple[int, list[Buffer]]] = field(default_factory=list)
    outbox_bytes: int = 0
    token: str = ""  # the Starmap whose tasks go through this handle
    reply_endpoint: str = ""
    func: bytes = b""  # its pickled task function and monitor name
    last_flush: float = 0.0
    alive: bool = True  # False once dropped (silent); True again when it answers a ping
    last_ping: float = 0.0
    handshake: zmq.Socket | None = None  # the monitor of sock (zap.watch_handshake)
    refused: str = ""  # why the pool refused our zmq handshake, once it did

    @property
    def pool_id(self) -> str:
        return self.endpoint

    def queue_task(self, task_no: int, frames: list[Buffer], size: int) -> None:
        """Send now if this is the first task of a burst, else batch it (sent when the batch
        fills up, and at the latest when the Starmap is iterated). ``size``: its bytes."""
        quiet = not self.outbox and time.monotonic() - self.last_flush > BURST_GAP
        self.outbox.append((task_no, frames))
        self.outbox_bytes += size
        if (quiet or len(self.outbox) >= TASK_BATCH_COUNT
                or self.outbox_bytes >= TASK_BATCH_BYTES):
            self.flush_tasks()

    def flush_tasks(self) -> None:
        """Send the queued tasks in one :class:`~oqzmq.protocol.Submit` message."""
        if not self.outbox:
            return
        task_nos = [task_no for task_no, _ in self.outbox]
        nframes = [len(frames) for _, frames in self.outbox]
        body = [frame for _, frames in self.outbox for frame in frames]
        self.send(Submit(self.token, self.reply_endpoint, self.func, task_nos, nframes), body)
        self.outbox.clear()
        self.outbox_bytes = 0
        self.last_flush = time.monotonic()

    def send(self, message: Message, body: list[Buffer] | tuple[()] = ()) -> None:
        """Send (waiting while the pool's queue is full); a pool that refused our handshake
        (another authkey) has no connection to take it: the message is dropped and the pool
        stays silent, where zmq would block for ever."""
        while True:
            try:
                protocol.send(self.sock, self.signer, message, body)
                return
            except zmq.Again:
                if self.handshake_refused():
                    return

    def handshake_refused(self) -> bool:
        if not self.refused and self.handshake is not None:
            self.refused = zap.handshake_refusal(self.handshake)
            if self.refused:
                log.warning("the workerpool at %s refused our zmq handshake (%s): its [dbserver] "
                            "authkey differs from ours, or it runs another release; see its log",
                            self.endpoint, self.refused)
        return bool(self.refused)

    def close(self, linger: int = 0) -> None:
        if self.handshake is not None:
            self.sock.disable_monitor()
            self.handshake.close(linger=0)
            self.handshake = None
        self.sock.close(linger=linger)

    def request(self, query: Query[ReplyT], timeout: float = PING_TIMEOUT) -> ReplyT | None:
        """Send ``query`` and wait for its reply (None on timeout)."""
        self.send(query)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            reply = protocol.recv(self.sock, self.verifier)
            if reply is not None:
                return query.read_reply(reply.meta)
        return None

    def heard_pong(self, pong: Pong) -> None:
        """The pool answered a ping: it is alive, with this many worker processes."""
        self.size, self.pid, self.last_heard = pong.size, pong.pid, time.monotonic()


def connect_pool(context: zmq.Context, authkey: str, host: str, endpoint: str,
                 max_bytes: int) -> PoolHandle:
    """A handle on the workerpool at ``endpoint``; replies over ``max_bytes`` are refused."""
    sock = zap.client(protocol.limit(context.socket(zmq.DEALER), max_bytes), authkey, endpoint)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDTIMEO, 1000)  # then PoolHandle.send checks the handshake
    handshake = None if zap.is_private(endpoint) else zap.watch_handshake(sock)  # ipc: none
    sock.connect(endpoint)
    return PoolHandle(host, endpoint, sock, Signer(authkey, f"ctrl:{endpoint}"),
                      Verifier(authkey, f"ctrl-reply:{endpoint}"), handshake=handshake)


def ping_pools(pools: list[PoolHandle], timeout: float = PING_TIMEOUT) -> list[PoolHandle]:
    """Ping all pools at once (the silent ones again every :data:`REPING` s); note their
    sizes and pids; return the ones that did not answer."""
    silent = {pool.endpoint: pool for pool in pools}
    deadline = time.monotonic() + timeout
    poller = zmq.Poller()
    for pool in pools:
        poller.register(pool.sock, zmq.POLLIN)
    reping = time.monotonic()
    while silent and (left := deadline - time.monotonic()) > 0:
        if time.monotonic() >= reping:
            for pool in silent.values():
                pool.send(Ping())
            reping = time.monotonic() + REPING
        for sock, _ in poller.poll(int(min(left, reping - time.monotonic()) * 1000) + 1):
            pool = next(p for p in pools if p.sock is sock)
            reply = protocol.recv(sock, pool.verifier)
            if reply is not None and reply.kind == Pong.KIND:
                pool.heard_pong(Pong.from_meta(reply.meta))
                silent.pop(pool.endpoint, None)
    return list(silent.values())
