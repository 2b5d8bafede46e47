"""Messages on the wire: pickle protocol 5 with out-of-band buffers, signed by :mod:`oqzmq.auth`.

A message is ``[*envelope] [mac] [header] [meta] [body...]`` where ``meta`` is a small pickle
(routing: command, task number, calculation token) and ``body`` the frames of an optional
pickled payload: frame 0 the pickle stream, frames 1.. the raw buffers of large objects
(numpy arrays) that pickle 5 hands out of band, so they travel without being copied into the
stream. Nothing is unpickled before :meth:`Verifier.verify` has accepted every frame.

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
from collections.abc import Sequence
from typing import Any

import zmq

from oqzmq.auth import AuthError, Buffer, Signer, Verifier

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
    return sum(memoryview(frame).nbytes for frame in frames)


def send(
    sock: zmq.Socket,
    signer: Signer,
    meta: Any,
    body: Sequence[Buffer] = (),
    envelope: Sequence[bytes] = (),
) -> None:
    """Sign and send ``meta`` (pickled here) followed by the already-pickled ``body`` frames."""
    frames = signer.sign([pickle.dumps(meta, protocol=5), *body])
    sock.send_multipart([*envelope, *frames], copy=False)


def send_nowait(
    sock: zmq.Socket, signer: Signer, meta: Any, body: Sequence[Buffer] = ()
) -> bool:
    """Like :func:`send` but give up (False) instead of blocking when the peer is not there."""
    try:
        sock.send_multipart(signer.sign([pickle.dumps(meta, protocol=5), *body]),
                            flags=zmq.NOBLOCK, copy=False)
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
        verified = verifier.verify(signed)
        if not verified:
            raise AuthError("authenticated message has no meta frame")
        meta = pickle.loads(verified[0])
    except AuthError as exc:
        log.warning("rejected message on %s from %s: %s", verifier.channel, peer(frames), exc)
        return None
    except Exception as exc:  # an authentic peer with a bug: log, never crash
        log.error("undecodable authenticated message on %s: %r", verifier.channel, exc)
        return None
    return Received([bytes(frame.bytes) for frame in head], meta, verified[1:])


def peer(frames: Sequence[zmq.Frame]) -> str:
    """The sender's address as zmq knows it (for logs), or 'unknown peer'."""
    for frame in frames[-1:]:
        try:
            return str(frame.get("Peer-Address"))
        except (zmq.ZMQError, AttributeError):
            break
    return "unknown peer"
