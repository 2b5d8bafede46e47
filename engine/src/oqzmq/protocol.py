"""Messages on the wire: pickle protocol 5 with out-of-band buffers, signed by :mod:`oqzmq.auth`.

A message is ``[*envelope] [mac] [header] [meta] [layout] [data...]`` where ``meta`` is a
small pickle (routing: command, task number, calculation token) and the *logical* body frames
(pickle streams, and the raw buffers of large objects such as numpy arrays that pickle 5
hands out of band, so they are never copied into a stream) travel in ``data``: each big frame
as its own zmq frame (not copied), runs of small ones joined into one frame, so a batch of a
thousand tiny tasks costs a few zmq frames, not thousands. ``layout`` (int64 triples: data
index, offset, length) restores the logical frames as zero-copy slices. Nothing is
unpickled before :meth:`Verifier.verify` has accepted every frame.

Results (worker -> receiver) split each big frame into ``CHUNK_BYTES`` zmq frames: its triple
points at the first chunk and its length runs on through the next data frames. A receiver
joins the chunks into one buffer (:class:`ReceiveBuffers`), which costs a copy but saves the
kernel work that a single 50 MB zmq frame costs per message: zmq allocates every frame it
receives, and glibc maps an allocation over 32 MB afresh each time (12,000 page faults per
50 MB), whereas chunks come from memory the process already has.

Every receiving socket has ``MAXMSGSIZE`` (:func:`limit`): zmq drops a bigger frame, before
buffering it, and disconnects its sender; :func:`recv` drops a message whose frames add up to
more, before verifying it.

Channels (what the MAC binds a message to, see :mod:`oqzmq.auth`):

* ``ctrl:<endpoint>``        master -> workerpool control socket
* ``ctrl-reply:<endpoint>``  workerpool -> master replies on that socket
* ``pool:<endpoint>``        worker process -> its workerpool
* ``worker:<endpoint>``      workerpool -> its worker processes
* ``recv:<endpoint>``        worker processes and workerpools -> a calculation's receiver

What ``meta`` holds is one of the messages named at the end of this module (:class:`Submit`,
:class:`ResultBatch`, :class:`Pong`...): each side builds and reads it by those names, and it
travels as the plain tuple ``(KIND, *fields)`` (:meth:`Message.to_meta`): the cheapest to
pickle (tiny tasks pay for every byte), and the same bytes on the wire as before it had a name.
"""

from __future__ import annotations

import logging
import pickle
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import numpy as np
import zmq

from oqzmq.auth import AuthError, Buffer, Signer, Verifier, as_view
from oqzmq.errors import MessageError

log = logging.getLogger(__name__)


def dumps(obj: Any) -> list[Buffer]:
    """Pickle ``obj`` into frames: the stream, then each out-of-band buffer (not copied)."""
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    if not buffers:  # small objects: skip the generator (tiny tasks pay for every step)
        return [stream]
    return [stream, *(buffer.raw() for buffer in buffers)]


def loads(frames: Sequence[Buffer]) -> Any:
    """Inverse of :func:`dumps`. Only ever call it on verified frames."""
    if len(frames) == 1:
        return pickle.loads(frames[0])
    return pickle.loads(frames[0], buffers=frames[1:])


def nbytes(frames: Sequence[Buffer]) -> int:
    """Total payload size of frames (what the Monitor reports as bytes)."""
    total = 0
    for frame in frames:  # bytes: most frames of tiny tasks, no view needed
        total += len(frame) if type(frame) is bytes else memoryview(frame).nbytes
    return total


PACK_LIMIT = 64 * 1024  # frames smaller than this are joined (copied); bigger ones are not
CHUNK_BYTES = 4 << 20  # results: big frames travel in chunks of this size (see the module doc)
HEADROOM = 1 << 20  # what a message may carry beyond the cap: meta, layout, MAC, header


def limit(sock: zmq.Socket, max_bytes: int) -> zmq.Socket:
    """Make ``sock`` refuse messages over ``max_bytes`` (plus HEADROOM): see the module doc."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes + HEADROOM)
    return sock


def encode(meta: Any, body: Sequence[Buffer] = (), chunk: int = 0) -> list[Buffer]:
    """The unsigned frames of a message: ``[meta, layout, *data]`` (see the module doc);
    ``chunk``: split frames bigger than this into zmq frames of this size."""
    data: list[Buffer] = []
    layout: list[int] = []
    run: list[Buffer] = []
    run_length = 0
    for frame in body:
        if type(frame) is bytes:  # most small frames (pickle streams): no view needed
            view, size = frame, len(frame)
        else:
            view = as_view(frame)
            size = view.nbytes
        if size >= PACK_LIMIT:
            if run:
                data.append(b"".join(run))
                run, run_length = [], 0
            layout += (len(data), 0, size)
            if chunk and size > chunk:
                whole = memoryview(view)
                data += [whole[start:start + chunk] for start in range(0, size, chunk)]
            else:
                data.append(view)
        else:
            layout += (len(data), run_length, size)
            run.append(view)
            run_length += size
    if run:
        data.append(b"".join(run))
    return [pickle.dumps(meta, protocol=5), array("q", layout).tobytes(), *data]


def decode_body(layout: memoryview, data: Sequence[memoryview],
                buffers: ReceiveBuffers | None = None) -> list[memoryview]:
    """The logical body frames of verified ``layout`` and ``data`` frames: zero-copy slices,
    and frames sent in chunks joined into one read-only buffer (from ``buffers``)."""
    triples = layout.cast("q")
    if len(triples) % 3:
        raise ValueError("layout frame is not a list of (index, offset, length) triples")
    numbers = iter(triples.tolist())
    sizes = [frame.nbytes for frame in data]
    return [data[index][offset:offset + length] if offset + length <= sizes[index]
            else _gather(data, index, offset, length, buffers)
            for index, offset, length in zip(numbers, numbers, numbers, strict=True)]


def _gather(data: Sequence[memoryview], index: int, offset: int, length: int,
            buffers: ReceiveBuffers | None) -> memoryview:
    """One logical frame that runs from ``data[index][offset:]`` on through the next frames."""
    joined = buffers.take(length) if buffers is not None else _fresh(length)
    filled = 0
    while filled < length:
        if index >= len(data) or offset < 0:
            raise ValueError("layout frame points past the data frames")
        part = data[index][offset:offset + length - filled]
        joined[filled:filled + part.nbytes] = part
        filled += part.nbytes
        index, offset = index + 1, 0
    return joined.toreadonly()


def _fresh(size: int) -> memoryview:
    # numpy asks for transparent huge pages for big arrays: 25 page faults per 50 MB, not 12,000
    return memoryview(np.empty(size, np.uint8))


def _references(buffers: list[np.ndarray], position: int) -> int:
    return sys.getrefcount(buffers[position])


# What _references counts for a buffer nothing else refers to, measured rather than assumed
# (how many references the interpreter itself holds differs between Python versions). An
# array made from a buffer refers to it (numpy keeps it as the array's base), as does any
# view of that array: either makes the count higher.
_UNREFERENCED = _references([np.empty(1)], 0)


class ReceiveBuffers:
    """Buffers to join chunked frames into, reused once nothing refers to their last result.

    A buffer whose last result the caller still holds (an array it kept, a view of it) is
    never written to again; a free one is, instead of faulting fresh pages in for every large
    result. At most ``keep`` buffers are held, and only as long as this object (one per
    Starmap).
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._buffers: list[np.ndarray] = []

    def take(self, size: int) -> memoryview:
        """A writable buffer of ``size`` bytes; its result keeps it from being reused."""
        for position in range(len(self._buffers)):
            if _references(self._buffers, position) == _UNREFERENCED:
                buffer = self._buffers[position]
                if buffer.nbytes < size:
                    buffer = self._buffers[position] = np.empty(size, np.uint8)
                return memoryview(buffer)[:size]
        buffer = np.empty(size, np.uint8)
        if len(self._buffers) < self.keep:
            self._buffers.append(buffer)
        return memoryview(buffer)


def send(
    sock: zmq.Socket,
    signer: Signer,
    message: Message,
    body: Sequence[Buffer] = (),
    envelope: Sequence[bytes] = (),
    chunk: int = 0,
) -> None:
    """Sign and send ``message`` (its meta pickled here) followed by the already-pickled
    ``body`` frames (``chunk``: see :func:`encode`)."""
    frames = signer.sign(encode(message.to_meta(), body, chunk))
    sock.send_multipart([*envelope, *frames], copy=False)


def send_encoded(
    sock: zmq.Socket,
    signer: Signer,
    message: Message,
    layout: Buffer,
    data: Sequence[Buffer],
    envelope: Sequence[bytes] = (),
) -> None:
    """Like :func:`send` for a body already encoded as ``layout`` and ``data`` (forwarding)."""
    frames = [pickle.dumps(message.to_meta(), protocol=5), layout, *data]
    sock.send_multipart([*envelope, *signer.sign(frames)], copy=False)


def send_nowait(
    sock: zmq.Socket, signer: Signer, message: Message, body: Sequence[Buffer] = ()
) -> bool:
    """Like :func:`send` but give up (False) instead of blocking when the peer is not there."""
    try:
        frames = signer.sign(encode(message.to_meta(), body))
        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


class Received:
    """An authenticated message: ``meta`` unpickled, body frames still raw.

    ``body`` (the logical frames) is decoded on first use; a workerpool forwards tasks from
    ``layout`` and ``data`` as they came, without decoding them.
    """

    __slots__ = ("_body", "buffers", "data", "envelope", "layout", "meta")

    def __init__(self, envelope: list[bytes], meta: Any, layout: memoryview,
                 data: list[memoryview], buffers: ReceiveBuffers | None = None) -> None:
        self.envelope = envelope
        self.meta = meta
        self.layout = layout
        self.data = data
        self.buffers = buffers
        self._body: list[memoryview] | None = None

    @property
    def kind(self) -> str:
        """Which message this is (its ``KIND``), "" when meta is no message at all."""
        meta = self.meta
        if type(meta) is tuple and meta and type(meta[0]) is str:
            return meta[0]
        return ""

    @property
    def body(self) -> list[memoryview]:
        if self._body is None:
            self._body = decode_body(self.layout, self.data, self.buffers)
        return self._body


REJECTION_LOG_LIMIT = 10  # of each kind, per socket and minute: a flood must not fill logs


def _log_rejection(verifier: Verifier, sender: str, why: str) -> None:
    kind = why.split(":")[0].split("(")[0].strip()
    now = time.monotonic()
    start, logged, skipped = verifier.rejections.get(kind, (now, 0, 0))
    if now - start >= 60:
        start, logged = now, 0
    if logged >= REJECTION_LOG_LIMIT:
        verifier.rejections[kind] = (start, logged, skipped + 1)
        return
    more = f" [{skipped} more of this kind were not logged]" if skipped else ""
    log.warning("rejected message on %s from %s: %s%s", verifier.channel, sender, why, more)
    verifier.rejections[kind] = (start, logged + 1, 0)


def recv(sock: zmq.Socket, verifier: Verifier, envelope: int = 0,
         buffers: ReceiveBuffers | None = None) -> Received | None:
    """Receive one message; verify it; None (after logging why) if it is not authentic or
    over the socket's cap (see :func:`limit`). ``buffers``: where chunked frames are joined.

    A rejected message never raises: a bad peer must not be able to stop a server.
    """
    frames = sock.recv_multipart(copy=False)
    cap = sock.getsockopt(zmq.MAXMSGSIZE)
    if cap >= 0 and sum(len(frame) for frame in frames) > cap:
        log.warning("rejected message on %s from %s: %d frames over the cap of %d bytes "
                    "([zworkers] max_message_mb)", verifier.channel, peer(frames), len(frames),
                    cap)
        return None
    head, signed = frames[:envelope], frames[envelope:]
    try:
        verified = verifier.verify(signed)
    except AuthError as exc:
        _log_rejection(verifier, peer(frames), str(exc))
        return None
    try:
        if len(verified) < 2:
            raise ValueError(f"message has {len(verified)} frame(s), expected meta and layout")
        meta = pickle.loads(verified[0])
    except Exception as exc:  # an authentic peer with a bug: log, never crash
        log.error("undecodable authenticated message on %s: %r", verifier.channel, exc)
        return None
    return Received([bytes(frame.bytes) for frame in head], meta, verified[1], verified[2:],
                    buffers)


def peer(frames: Sequence[zmq.Frame]) -> str:
    """The sender's address as zmq knows it (for logs), or 'unknown peer'."""
    for frame in frames[-1:]:
        try:
            return str(frame.get("Peer-Address"))
        except (zmq.ZMQError, AttributeError):
            break
    return "unknown peer"


# --- The messages: what ``meta`` holds, by name.

ReplyT = TypeVar("ReplyT", bound="Message")

# What a worker reports about one task: (time_sec, bytes, nresults, stats, traceback);
# stats: {block: (time_sec, memory_mb, counts)} of the task's named blocks, or None.
Report = tuple[float, int, int, dict[str, tuple[float, float, int]] | None, str | None]
# One task message in a ResultBatch: (kind, task_no, nframes, report); see ResultBatch.
Entry = tuple[str, int, int, Report | None]


@dataclass(frozen=True, slots=True)
class Message:
    """The meta of a message: sent as ``(KIND, *fields)`` (see the module doc)."""

    KIND: ClassVar[str] = ""

    def to_meta(self) -> tuple[Any, ...]:
        """The tuple that goes over the wire."""
        return (self.KIND, *[getattr(self, name) for name in self.__match_args__])

    @classmethod
    def from_meta(cls, meta: Any) -> Self:
        """The message whose wire tuple is ``meta``; MessageError if ``meta`` is not one."""
        if type(meta) is not tuple or not meta or meta[0] != cls.KIND:
            raise MessageError(f"expected a {cls.KIND!r} message, got {_clip(meta)}: "
                               "run the same release of oq-zmq-engine on every node")
        try:
            return cls(*meta[1:])
        except TypeError as exc:
            raise MessageError(f"a {cls.KIND!r} message of another release of oq-zmq-engine "
                               f"({_clip(meta)}: {exc}): run the same release on every "
                               "node") from exc


def _clip(meta: Any) -> str:
    text = repr(meta)
    return text if len(text) <= 200 else text[:200] + "..."


# master -> workerpool (channel ctrl:), and workerpool -> worker process (worker:)

@dataclass(frozen=True, slots=True)
class TaskBatch(Message):
    """Tasks of one calculation; the body: each task's pickled arguments, ``nframes`` frames
    each. ``func``: the pickled (task function, monitor name), the same for every task of a
    calculation; ``reply_endpoint``: where the results go (the calculation's receiver)."""

    token: str
    reply_endpoint: str
    func: bytes
    task_nos: list[int]
    nframes: list[int]


@dataclass(frozen=True, slots=True)
class Submit(TaskBatch):
    """Master -> workerpool: queue these tasks (no reply)."""

    KIND: ClassVar[str] = "submit"


@dataclass(frozen=True, slots=True)
class Tasks(TaskBatch):
    """Workerpool -> worker process: run these tasks, forwarded as the master encoded them."""

    KIND: ClassVar[str] = "tasks"


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Master -> workerpool: drop the queued tasks of a calculation, revoke its running ones."""

    KIND: ClassVar[str] = "cancel"
    token: str


@dataclass(frozen=True, slots=True)
class Release(Message):
    """Master -> workerpool: give back up to ``count`` tasks of a calculation still queued in
    the pool (not yet sent to a worker process), taken from the end of the queue, for a pool
    that rejoined the calculation. The pool answers :class:`Released`."""

    KIND: ClassVar[str] = "release"
    token: str
    count: int


@dataclass(frozen=True, slots=True)
class Lease(Message):
    """Master -> workerpool: the master of these calculations is alive (no reply)."""

    KIND: ClassVar[str] = "lease"
    tokens: list[str]


@dataclass(frozen=True, slots=True)
class Query(Message, Generic[ReplyT]):
    """Master -> workerpool: a request the pool answers with one ``REPLY`` message."""

    REPLY: ClassVar[type[Message]]

    def read_reply(self, meta: Any) -> ReplyT:
        """The reply whose wire tuple is ``meta``; MessageError if it is not one."""
        return cast(ReplyT, self.REPLY.from_meta(meta))


# workerpool -> master (channel ctrl-reply:)

@dataclass(frozen=True, slots=True)
class Pong(Message):
    """The answer to :class:`Ping`: the pool's host, its worker processes, its pid."""

    KIND: ClassVar[str] = "pong"
    host: str
    size: int
    pid: int


@dataclass(frozen=True, slots=True)
class Released(Message):
    """The answer to :class:`Release`: the numbers (as submitted) of the tasks dropped from
    the pool's queue; none of them ran or will run there."""

    KIND: ClassVar[str] = "released"
    token: str
    task_nos: list[int]


@dataclass(frozen=True, slots=True)
class PoolStatus(Message):
    """The answer to :class:`StatusQuery`: worker processes busy (``running``) and in all
    (``total``), tasks queued in the pool."""

    KIND: ClassVar[str] = "status"
    host: str
    running: int
    total: int
    queued: int


@dataclass(frozen=True, slots=True)
class PoolInspection(Message):
    """The answer to :class:`InspectQuery`: the task keys (``token8#task_no``) each worker
    process holds (running and sent ahead), by pid, and those queued in the pool."""

    KIND: ClassVar[str] = "inspect"
    host: str
    running: dict[int, list[str]]
    queued: list[str]


@dataclass(frozen=True, slots=True)
class Stopping(Message):
    """The answer to :class:`Stop`."""

    KIND: ClassVar[str] = "stopping"
    host: str


@dataclass(frozen=True, slots=True)
class Killed(Message):
    """The answer to :class:`Kill`."""

    KIND: ClassVar[str] = "killed"
    host: str


@dataclass(frozen=True, slots=True)
class Refused(Message):
    """The answer to a request the pool does not know (another release on the master)."""

    KIND: ClassVar[str] = "error"
    reason: str


@dataclass(frozen=True, slots=True)
class Ping(Query[Pong]):
    KIND: ClassVar[str] = "ping"
    REPLY: ClassVar[type[Message]] = Pong


@dataclass(frozen=True, slots=True)
class StatusQuery(Query[PoolStatus]):
    KIND: ClassVar[str] = "status"
    REPLY: ClassVar[type[Message]] = PoolStatus


@dataclass(frozen=True, slots=True)
class InspectQuery(Query[PoolInspection]):
    KIND: ClassVar[str] = "inspect"
    REPLY: ClassVar[type[Message]] = PoolInspection


@dataclass(frozen=True, slots=True)
class Stop(Query[Stopping]):
    """Finish the running tasks, then exit (to a worker process: exit now; no reply)."""

    KIND: ClassVar[str] = "stop"
    REPLY: ClassVar[type[Message]] = Stopping


@dataclass(frozen=True, slots=True)
class Kill(Query[Killed]):
    """Kill the worker processes now (their tasks are reported lost), then exit."""

    KIND: ClassVar[str] = "kill"
    REPLY: ClassVar[type[Message]] = Killed


# worker process -> its workerpool (channel pool:)

@dataclass(frozen=True, slots=True)
class Ready(Message):
    """A worker process started and takes tasks."""

    KIND: ClassVar[str] = "ready"
    pid: int


@dataclass(frozen=True, slots=True)
class Done(Message):
    """A worker process finished ``count`` more of its tasks, in ``seconds``."""

    KIND: ClassVar[str] = "done"
    count: int
    seconds: float


# worker processes and workerpools -> a calculation's receiver (channel recv:)

@dataclass(frozen=True, slots=True)
class ResultBatch(Message):
    """Task messages for one calculation, one :data:`Entry` each, their body frames one after
    the other (``nframes`` each)::

        kind "result"  body: one partial result of a generator task (report None)
             "last"    body: the return value of a plain task
             "end"     a generator task finished
             "error"   the task raised: the report's traceback says what and where
             "lost"    (sent by a workerpool) the task will not run: the traceback says why
             "oom"     (sent by a workerpool) as "lost", because memory ran out

    ``memory_mb``: the peak resident memory of the process that ran the tasks when the
    message left. Entries and reports are plain tuples: one per task, the cheapest to pickle.
    """

    KIND: ClassVar[str] = "batch"
    pool_id: str
    token: str
    host: str
    pid: int
    memory_mb: float
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """A workerpool holds tasks for this receiver and is alive; ``memory_warning``: its
    host's memory is above ``[memory] soft_mem_limit`` ("" when not)."""

    KIND: ClassVar[str] = "heartbeat"
    pool_id: str
    memory_warning: str = ""
