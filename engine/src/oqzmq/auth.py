"""Authenticated zmq messages: a MAC over every frame, keyed from ``[dbserver] authkey``.

Wire format of one signed message (a zmq multipart message)::

    [mac(32)] [header(33)] [frame 0] [frame 1] ...
    header = scheme(1) | sender(16) | counter(8, big-endian) | timestamp(8, float64)
    mac    = MAC_scheme(K_scheme, len(channel) channel | header
                                  | for each frame: len(frame, 8 bytes) frame)

    scheme 1: keyed BLAKE2b-256, person=b'oqzmq-msg-v1',
              K_1 = BLAKE2b-256(key=authkey, person=b'oqzmq-key-v1')(b'message-mac')
    scheme 2: HMAC-SHA256, K_2 = HMAC-SHA256(authkey, b'oqzmq-key-v2 message-mac')

Why a MAC and not zmq CURVE: the key comes straight from the one cluster secret that
provisioning already writes into openquake.cfg (no key distribution, no ZAP handler thread),
and the check happens where we can log the peer and carry on.

Why two schemes: every result byte is hashed twice (by the signer and by the verifier), so the
MAC's speed bounds the bandwidth of large results. OpenSSL runs SHA-256 on the CPU's SHA
extensions (x86 ``sha_ni``, ARMv8 ``sha2``) at ~1.7 GB/s per core on the CI-class CPU, twice
keyed BLAKE2b's ~0.9 GB/s; without them SHA-256 drops to ~0.5 GB/s and BLAKE2b is the faster.
So a signer uses scheme 2 where its CPU has SHA extensions and scheme 1 elsewhere, and a
verifier accepts both: both are 256-bit MACs with their own derived keys, and the scheme byte
is covered by the MAC it selects, so it cannot be switched without the key. (CURVE measured
~0.2 GB/s and also encrypts, which the cluster network does not need.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BLAKE2B = 1
HMAC_SHA256 = 2
MAC_SIZE = 32
HEADER = struct.Struct("!B16sQd")
_LENGTH = struct.Struct("!Q")
DEFAULT_WINDOW = 300.0

Buffer = Any  # bytes | memoryview | zmq.Frame | pickle.PickleBuffer: anything with a buffer
Digest = Any  # a started hashlib.blake2b or hmac.HMAC object: .copy(), .update(), .digest()


class AuthError(Exception):
    """A message failed authentication; the text says why (never includes the key)."""


def _secret(authkey: str | bytes) -> bytes:
    secret = authkey.encode() if isinstance(authkey, str) else authkey
    if not secret:
        raise ValueError("empty authkey: set [dbserver] authkey in openquake.cfg")
    return secret


def _blake2b_digest(secret: bytes) -> Digest:
    # blake2b keys are limited to 64 bytes: pre-hash longer secrets.
    if len(secret) > 64:
        secret = hashlib.blake2b(secret).digest()
    key = hashlib.blake2b(b"message-mac", key=secret, person=b"oqzmq-key-v1").digest()[:32]
    return hashlib.blake2b(key=key, digest_size=MAC_SIZE, person=b"oqzmq-msg-v1")


def _hmac_sha256_digest(secret: bytes) -> Digest:
    key = hmac.digest(secret, b"oqzmq-key-v2 message-mac", hashlib.sha256)
    return hmac.new(key, digestmod=hashlib.sha256)


SCHEMES: dict[int, Callable[[bytes], Digest]] = {
    BLAKE2B: _blake2b_digest,
    HMAC_SHA256: _hmac_sha256_digest,
}


def cpu_has_sha_extensions(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True if this CPU hashes SHA-256 in hardware (x86 ``sha_ni``, ARMv8 ``sha2``)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return bool({"sha_ni", "sha2"} & set(value.split()))
    return False


def fastest_scheme() -> int:
    """The scheme this machine signs with: HMAC-SHA256 on SHA hardware, BLAKE2b elsewhere."""
    return HMAC_SHA256 if cpu_has_sha_extensions() else BLAKE2B


def _channel_digests(authkey: str | bytes, channel: str) -> dict[int, Digest]:
    """Per scheme, a keyed digest that has absorbed the channel; copied for each message."""
    secret = _secret(authkey)
    digests = {}
    for scheme, start in SCHEMES.items():
        digest = start(secret)
        digest.update(_LENGTH.pack(len(channel.encode())))
        digest.update(channel.encode())
        digests[scheme] = digest
    return digests


def _mac(channel_digest: Digest, header: Buffer, frames: Sequence[Buffer]) -> bytes:
    digest = channel_digest.copy()
    digest.update(header)
    for frame in frames:
        view = as_view(frame)
        digest.update(_LENGTH.pack(view.nbytes))
        digest.update(view)
    return digest.digest()


def as_view(frame: Buffer) -> memoryview:
    """A flat byte view of a frame (bytes, memoryview, zmq.Frame, PickleBuffer), no copy."""
    if type(frame) is memoryview:  # the common case: slices of received frames
        view = frame
    else:
        buffer = getattr(frame, "buffer", None)  # zmq.Frame
        view = memoryview(buffer if buffer is not None else frame)
    return view if view.format == "B" and view.contiguous else view.cast("B")


class Signer:
    """Signs outgoing multipart messages for one channel (destination endpoint)."""

    def __init__(self, authkey: str | bytes, channel: str, scheme: int | None = None) -> None:
        self.scheme = fastest_scheme() if scheme is None else scheme
        self._channel_digest = _channel_digests(authkey, channel)[self.scheme]
        self.channel = channel
        self.sender = os.urandom(16)
        self._counter = 0

    def sign(self, frames: Sequence[Buffer]) -> list[Buffer]:
        """Return ``[mac, header, *frames]`` ready for ``send_multipart(..., copy=False)``."""
        self._counter += 1
        header = HEADER.pack(self.scheme, self.sender, self._counter, time.time())
        return [_mac(self._channel_digest, header, frames), header, *frames]


class Verifier:
    """Checks incoming messages for one channel; remembers senders to reject replays."""

    def __init__(
        self, authkey: str | bytes, channel: str, window: float = DEFAULT_WINDOW
    ) -> None:
        self._channel_digests = _channel_digests(authkey, channel)
        self.channel = channel
        self.window = window
        self._last: dict[bytes, tuple[int, float]] = {}
        self._last_prune = time.monotonic()

    def verify(self, message: Sequence[Buffer]) -> list[memoryview]:
        """The payload frames of an authentic, fresh message; AuthError otherwise."""
        if len(message) < 2:
            raise AuthError(f"truncated message: {len(message)} frame(s), need at least 2")
        mac, header = as_view(message[0]), as_view(message[1])
        if mac.nbytes != MAC_SIZE or header.nbytes != HEADER.size:
            raise AuthError("malformed message: MAC or header frame has the wrong size")
        scheme, sender, counter, stamp = HEADER.unpack(header)
        if scheme not in self._channel_digests:
            raise AuthError(f"unknown MAC scheme {scheme} (this engine knows {sorted(SCHEMES)}): "
                            f"run the same oq-zmq-engine release on every node (re-run site.yml)")
        frames = [as_view(frame) for frame in message[2:]]
        expected = _mac(self._channel_digests[scheme], header, frames)
        if not hmac.compare_digest(expected, bytes(mac)):
            raise AuthError(f"bad MAC (unsigned, tampered or signed with another key/channel "
                            f"than {self.channel!r})")
        self._check_fresh(sender, counter, stamp)
        return frames

    def _check_fresh(self, sender: bytes, counter: int, stamp: float) -> None:
        now = time.time()
        if abs(now - stamp) > self.window:
            raise AuthError(
                f"stale message: timestamp {now - stamp:+.0f}s from this clock, more than the "
                f"{self.window:.0f}s window (replay, or clocks out of sync: run NTP)"
            )
        last = self._last.get(sender)
        if last is not None and counter <= last[0]:
            raise AuthError(f"replayed message: counter {counter} <= {last[0]} already seen")
        self._last[sender] = (counter, now)
        self._prune(now)

    def _prune(self, now: float) -> None:
        if time.monotonic() - self._last_prune < self.window:
            return
        self._last_prune = time.monotonic()
        cutoff = now - 2 * self.window
        for sender in [s for s, (_, seen) in self._last.items() if seen < cutoff]:
            del self._last[sender]
