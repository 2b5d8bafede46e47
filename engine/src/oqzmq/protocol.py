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
"""

from __future__ import annotations

import logging
import pickle
import sys
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from oqzmq.auth import AuthError, Buffer, Signer, Verifier, as_view

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
    meta: Any,
    body: Sequence[Buffer] = (),
    envelope: Sequence[bytes] = (),
    chunk: int = 0,
) -> None:
    """Sign and send ``meta`` (pickled here) followed by the already-pickled ``body`` frames
    (``chunk``: see :func:`encode`)."""
    sock.send_multipart([*envelope, *signer.sign(encode(meta, body, chunk))], copy=False)


def send_encoded(
    sock: zmq.Socket,
    signer: Signer,
    meta: Any,
    layout: Buffer,
    data: Sequence[Buffer],
    envelope: Sequence[bytes] = (),
) -> None:
    """Like :func:`send` for a body already encoded as ``layout`` and ``data`` (forwarding)."""
    frames = [pickle.dumps(meta, protocol=5), layout, *data]
    sock.send_multipart([*envelope, *signer.sign(frames)], copy=False)


def send_nowait(
    sock: zmq.Socket, signer: Signer, meta: Any, body: Sequence[Buffer] = ()
) -> bool:
    """Like :func:`send` but give up (False) instead of blocking when the peer is not there."""
    try:
        sock.send_multipart(signer.sign(encode(meta, body)), flags=zmq.NOBLOCK, copy=False)
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
    def body(self) -> list[memoryview]:
        if self._body is None:
            self._body = decode_body(self.layout, self.data, self.buffers)
        return self._body


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
        log.warning("rejected message on %s from %s: %s", verifier.channel, peer(frames), exc)
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
