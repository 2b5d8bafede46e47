"""Messages on the wire: pickle protocol 5 with out-of-band buffers, signed by :mod:`oqzmq.auth`.

A message is ``[*envelope] [mac] [header] [meta] [layout] [data...]`` where ``meta`` is a
small pickle (routing: command, task number, calculation token) and the *logical* body frames
(pickle streams, and the raw buffers of large objects such as numpy arrays that pickle 5
hands out of band, so they are never copied into a stream) travel in ``data``: each big frame
as its own zmq frame (not copied), runs of small ones joined into one frame, so a batch of a
thousand tiny tasks costs a few zmq frames, not thousands. ``layout`` (int64 triples: data
index, offset, length) restores the logical frames as zero-copy slices. Nothing is
unpickled before :meth:`Verifier.verify` has accepted every frame.

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
from array import array
from collections.abc import Sequence
from typing import Any

import zmq

from oqzmq.auth import AuthError, Buffer, Signer, Verifier, as_view

log = logging.getLogger(__name__)


def dumps(obj: Any) -> list[Buffer]:
    """Pickle ``obj`` into frames: the stream, then each out-of-band buffer (not copied)."""
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [stream, *(buffer.raw() for buffer in buffers)]


def loads(frames: Sequence[Buffer]) -> Any:
    """Inverse of :func:`dumps`. Only ever call it on verified frames."""
    return pickle.loads(frames[0], buffers=frames[1:])


def nbytes(frames: Sequence[Buffer]) -> int:
    """Total payload size of frames (what the Monitor reports as bytes)."""
    total = 0
    for frame in frames:  # bytes: most frames of tiny tasks, no view needed
        total += len(frame) if type(frame) is bytes else memoryview(frame).nbytes
    return total


PACK_LIMIT = 64 * 1024  # frames smaller than this are joined (copied); bigger ones are not


def encode(meta: Any, body: Sequence[Buffer] = ()) -> list[Buffer]:
    """The unsigned frames of a message: ``[meta, layout, *data]`` (see the module doc)."""
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
            data.append(view)
        else:
            layout += (len(data), run_length, size)
            run.append(view)
            run_length += size
    if run:
        data.append(b"".join(run))
    return [pickle.dumps(meta, protocol=5), array("q", layout).tobytes(), *data]


def decode(frames: Sequence[memoryview]) -> tuple[Any, list[memoryview]]:
    """Inverse of :func:`encode` on verified frames: (meta, logical body frames)."""
    if len(frames) < 2:
        raise ValueError(f"message has {len(frames)} frame(s), expected meta and layout")
    layout = frames[1].cast("q")
    if len(layout) % 3:
        raise ValueError("layout frame is not a list of (index, offset, length) triples")
    data = frames[2:]
    triples = iter(layout.tolist())
    body = [data[index][offset:offset + length]
            for index, offset, length in zip(triples, triples, triples, strict=True)]
    return pickle.loads(frames[0]), body


def send(
    sock: zmq.Socket,
    signer: Signer,
    meta: Any,
    body: Sequence[Buffer] = (),
    envelope: Sequence[bytes] = (),
) -> None:
    """Sign and send ``meta`` (pickled here) followed by the already-pickled ``body`` frames."""
    sock.send_multipart([*envelope, *signer.sign(encode(meta, body))], copy=False)


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
    """An authenticated message: ``meta`` unpickled, ``body`` frames still raw."""

    __slots__ = ("body", "envelope", "meta")

    def __init__(self, envelope: list[bytes], meta: Any, body: list[memoryview]) -> None:
        self.envelope = envelope
        self.meta = meta
        self.body = body

    def payload(self) -> Any:
        return loads(self.body)


def recv(sock: zmq.Socket, verifier: Verifier, envelope: int = 0) -> Received | None:
    """Receive one message; verify it; None (after logging why) if it is not authentic.

    A rejected message never raises: a bad peer must not be able to stop a server.
    """
    frames = sock.recv_multipart(copy=False)
    head, signed = frames[:envelope], frames[envelope:]
    try:
        meta, body = decode(verifier.verify(signed))
    except AuthError as exc:
        log.warning("rejected message on %s from %s: %s", verifier.channel, peer(frames), exc)
        return None
    except Exception as exc:  # an authentic peer with a bug: log, never crash
        log.error("undecodable authenticated message on %s: %r", verifier.channel, exc)
        return None
    return Received([bytes(frame.bytes) for frame in head], meta, body)


def peer(frames: Sequence[zmq.Frame]) -> str:
    """The sender's address as zmq knows it (for logs), or 'unknown peer'."""
    for frame in frames[-1:]:
        try:
            return str(frame.get("Peer-Address"))
        except (zmq.ZMQError, AttributeError):
            break
    return "unknown peer"
