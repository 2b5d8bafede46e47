"""Authenticated zmq messages: a MAC over every frame, keyed from ``[dbserver] authkey``.

Wire format of one signed message (a zmq multipart message)::

    [mac(32)] [header(33)] [frame 0] [frame 1] ...
    header = scheme(1) | sender(16) | counter(8, big-endian) | timestamp(8, float64)
    frames = for each frame: len(frame, 8 bytes) frame

    scheme 1: mac = keyed BLAKE2b-256(K_1, len(channel) channel | header | frames),
              person=b'oqzmq-msg-v1',
              K_1 = BLAKE2b-256(key=authkey, person=b'oqzmq-key-v1')(b'message-mac')
    scheme 2: mac = HMAC-SHA256(K_2, len(channel) channel | header | frames),
              K_2 = HMAC-SHA256(authkey, b'oqzmq-key-v2 message-mac')
    scheme 3: mac = nonce(16) | Poly1305(k, header | frames)
              k   = BLAKE2b-256(key=K_3, person=b'oqzmq-otk-v3')(len(channel) channel
                                                                | header | nonce)
              K_3 = HMAC-SHA256(authkey, b'oqzmq-key-v3 one-time-keys'),
              nonce: 16 random bytes per message

Why a MAC and not zmq CURVE: the key comes straight from the one cluster secret that
provisioning already writes into openquake.cfg (no key distribution), and the check happens
where we can log the peer and carry on. (Peers without the key are refused earlier, at the
zmq handshake: :mod:`oqzmq.zap`; the MAC still authenticates every message.)

Why three schemes: every result byte is hashed twice (by the signer and by the verifier), so
the MAC's speed bounds the bandwidth of large results. Poly1305 (OpenSSL's SIMD code, through
the ``cryptography`` package) runs at ~12-15 GB/s per core, 6-7x HMAC-SHA256 on SHA hardware
and twice keyed BLAKE3; it is what every node signs with (:func:`fastest_scheme`). Poly1305 is
a one-time authenticator: a key must never authenticate two messages. So each message gets its
own key from a PRF (keyed BLAKE2b) of the channel, the header (sender id, counter, timestamp)
and a fresh random nonce: the key stays unique even if a counter repeated (a forked process, a
race), and an attacker without the authkey cannot compute it. Its 128-bit tag bounds a forgery
to ~2^-80 per attempt at the largest allowed message, and each attempt is logged. Schemes 1
and 2 (standard library only) remain for nodes whose OpenSSL lacks Poly1305 (FIPS builds): a
verifier accepts all three, and the scheme byte is covered by the MAC it selects, so it cannot
be switched without the key. (CURVE measured ~0.2 GB/s and also encrypts, which the cluster
network does not need.)

Replays. A verifier refuses a message whose counter it has already seen from that sender
(kept for ``window`` seconds), one stamped more than ``window`` seconds ago (queueing delay
plus skew) and one stamped more than ``skew`` (:data:`MAX_CLOCK_SKEW`) seconds ahead of its
clock. Its memory dies with the process, so a restart alone would reopen the window; the
timestamp closes it, with no state kept across runs and no change on the wire: a *service*
verifier (a fixed address that a previous run may have served: the dbserver, a workerpool's
control socket) is created once its socket is bound and refuses anything stamped up to
``skew`` seconds after that (``not_before``). The previous run is dead by then (it held the
port) and never accepted a stamp later than its own clock + ``skew``: the same host's clock,
earlier. So every message it accepted is refused now, however quick the restart; this holds
whatever the senders' clocks say, and only needs this host's clock not to step back across
the restart (NTP slews; chrony steps only at boot). Clock skew between hosts costs
availability, not safety: a sender whose clock is ahead by more than ``skew`` is refused with
the skew in the log; one that is behind waits that much longer after a restart. A legitimate
sender's first message within ``skew`` seconds of a restart is refused as too early
(:class:`StampError` with ``retry``): the dbserver's clients sign it again, the master pings a
pool until it answers. Verifiers with a channel or a token of their own per run (a
calculation's receiver, worker <-> pool over a private ipc socket) refuse stamps older than
their start - ``skew``: the ipc channel names a fresh directory per pool, so a message for an
earlier pool fails its MAC; results for an earlier calculation carry its token and are dropped.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.poly1305 import Poly1305

BLAKE2B = 1
HMAC_SHA256 = 2
POLY1305 = 3
MAC_SIZE = 32
HEADER = struct.Struct("!B16sQd")
_LENGTH = struct.Struct("!Q")
DEFAULT_WINDOW = 300.0
MAX_CLOCK_SKEW = 2.0  # seconds a sender's clock may be ahead of a verifier's (NTP: ~1 ms; an
# unsynced VM reads its RTC at boot to the second, so two can start up to 1 s apart)
_HOST = socket.gethostname()

Buffer = Any  # bytes | memoryview | zmq.Frame | pickle.PickleBuffer: anything with a buffer
Digest = Any  # a started hashlib.blake2b, hmac.HMAC or Poly1305 object: .update()


class AuthError(Exception):
    """A message failed authentication; the text says why (never includes the key)."""


class StampError(AuthError):
    """An authentic message whose timestamp is refused. ``retry``: the same request signed
    again later passes (the verifier has just started, or the sender's clock is behind)."""

    def __init__(self, text: str, retry: bool = False) -> None:
        super().__init__(text)
        self.retry = retry
        self.header = b""  # the refused message's header: its sender and counter
        self.frames: list[memoryview] = []  # its payload: authentic, only too old or early


def _secret(authkey: str | bytes) -> bytes:
    secret = authkey.encode() if isinstance(authkey, str) else authkey
    if not secret:
        raise ValueError("empty authkey: set [dbserver] authkey in openquake.cfg")
    return secret


def _absorb(digest: Digest, frames: Sequence[Buffer]) -> None:
    for frame in frames:
        view = as_view(frame)
        digest.update(_LENGTH.pack(view.nbytes))
        digest.update(view)


def _absorb_channel(digest: Digest, channel: str) -> Digest:
    name = channel.encode()
    digest.update(_LENGTH.pack(len(name)))
    digest.update(name)
    return digest


class KeyedHash:
    """Schemes 1 and 2: one keyed hash over the channel, the header and the frames."""

    nonce_size = 0

    def __init__(self, started: Digest, channel: str) -> None:
        self._channel_digest = _absorb_channel(started, channel)  # copied for each message

    def mac(self, header: Buffer, frames: Sequence[Buffer], nonce: bytes = b"") -> bytes:
        digest = self._channel_digest.copy()
        digest.update(header)
        _absorb(digest, frames)
        return digest.digest()


class OneTimePoly1305:
    """Scheme 3: Poly1305 under a key used for one message only (see the module doc)."""

    nonce_size = 16

    def __init__(self, secret: bytes, channel: str) -> None:
        key = hmac.digest(secret, b"oqzmq-key-v3 one-time-keys", hashlib.sha256)
        started = hashlib.blake2b(key=key, digest_size=32, person=b"oqzmq-otk-v3")
        self._channel_kdf = _absorb_channel(started, channel)

    def mac(self, header: Buffer, frames: Sequence[Buffer], nonce: bytes = b"") -> bytes:
        if len(nonce) != self.nonce_size:
            raise AuthError(f"scheme 3 needs a {self.nonce_size}-byte nonce")
        kdf = self._channel_kdf.copy()
        kdf.update(header)
        kdf.update(nonce)
        tag = Poly1305(kdf.digest())
        tag.update(header)
        _absorb(tag, frames)
        return nonce + tag.finalize()


Mac = KeyedHash | OneTimePoly1305


def _blake2b_mac(secret: bytes, channel: str) -> Mac:
    # blake2b keys are limited to 64 bytes: pre-hash longer secrets.
    if len(secret) > 64:
        secret = hashlib.blake2b(secret).digest()
    key = hashlib.blake2b(b"message-mac", key=secret, person=b"oqzmq-key-v1").digest()[:32]
    return KeyedHash(hashlib.blake2b(key=key, digest_size=MAC_SIZE, person=b"oqzmq-msg-v1"),
                     channel)


def _hmac_sha256_mac(secret: bytes, channel: str) -> Mac:
    key = hmac.digest(secret, b"oqzmq-key-v2 message-mac", hashlib.sha256)
    return KeyedHash(hmac.new(key, digestmod=hashlib.sha256), channel)


@functools.cache
def poly1305_supported() -> bool:
    """False where the ``cryptography`` package's OpenSSL has no Poly1305 (FIPS builds)."""
    try:
        Poly1305(bytes(32))
    except UnsupportedAlgorithm:
        return False
    return True


def _schemes() -> dict[int, Any]:
    schemes: dict[int, Any] = {BLAKE2B: _blake2b_mac, HMAC_SHA256: _hmac_sha256_mac}
    if poly1305_supported():
        schemes[POLY1305] = OneTimePoly1305
    return schemes


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
    """The scheme this machine signs with: Poly1305 where OpenSSL has it; otherwise
    HMAC-SHA256 on SHA hardware and BLAKE2b elsewhere."""
    if poly1305_supported():
        return POLY1305
    return HMAC_SHA256 if cpu_has_sha_extensions() else BLAKE2B


def as_view(frame: Buffer) -> memoryview:
    """A flat byte view of a frame (bytes, memoryview, zmq.Frame, PickleBuffer), no copy."""
    if type(frame) is memoryview:  # the common case: slices of received frames
        view = frame
    else:
        buffer = getattr(frame, "buffer", None)  # zmq.Frame
        view = memoryview(buffer if buffer is not None else frame)
    return view if view.format == "B" and view.contiguous else view.cast("B")


Clock = Callable[[], float]


class Signer:
    """Signs outgoing multipart messages for one channel (destination endpoint)."""

    def __init__(self, authkey: str | bytes, channel: str, scheme: int | None = None,
                 clock: Clock = time.time) -> None:
        self.scheme = fastest_scheme() if scheme is None else scheme
        self._mac = _schemes()[self.scheme](_secret(authkey), channel)
        self.channel = channel
        self.sender = os.urandom(16)
        self._counter = itertools.count(1)  # next() is atomic: threads never share a value
        self._clock = clock

    def next_header(self) -> bytes:
        """A fresh header (sender id, next counter, now), for :meth:`sign`'s ``header``."""
        return HEADER.pack(self.scheme, self.sender, next(self._counter), self._clock())

    def sign(self, frames: Sequence[Buffer], header: bytes | None = None) -> list[Buffer]:
        """Return ``[mac, header, *frames]`` ready for ``send_multipart(..., copy=False)``.
        ``header``: one from :meth:`next_header` when a frame must cover it (the dbserver's
        user MAC); a fresh one otherwise."""
        if header is None:
            header = self.next_header()
        nonce = os.urandom(self._mac.nonce_size) if self._mac.nonce_size else b""
        return [self._mac.mac(header, frames, nonce), header, *frames]


class Verifier:
    """Checks incoming messages for one channel; refuses replays (see "Replays" above).

    ``service``: this verifier serves a fixed address that a previous run of the same service
    may have served (the dbserver, a workerpool's control socket): create it once the socket
    is bound; it refuses every message stamped up to ``skew`` seconds after its creation (see
    :attr:`not_before`), so nothing the previous run accepted is accepted again. Otherwise it
    refuses messages stamped more than ``skew`` seconds before its creation.
    """

    def __init__(
        self, authkey: str | bytes, channel: str, window: float = DEFAULT_WINDOW, *,
        service: bool = False, skew: float = MAX_CLOCK_SKEW, clock: Clock = time.time,
    ) -> None:
        secret = _secret(authkey)
        self._macs: dict[int, Mac] = {scheme: make(secret, channel)
                                      for scheme, make in _schemes().items()}
        self.channel = channel
        self.window = window
        self.skew = skew
        self.service = service
        self._clock = clock
        self.started = clock()
        self.not_before = self.started + skew if service else self.started - skew
        self._last: dict[bytes, tuple[int, float]] = {}
        self._last_prune = time.monotonic()
        # kind of rejection -> (minute started, logged, not logged): protocol's log limit
        self.rejections: dict[str, tuple[float, int, int]] = {}

    def verify(self, message: Sequence[Buffer]) -> list[memoryview]:
        """The payload frames of an authentic, fresh message; AuthError otherwise."""
        if len(message) < 2:
            raise AuthError(f"truncated message: {len(message)} frame(s), need at least 2")
        mac, header = as_view(message[0]), as_view(message[1])
        if mac.nbytes != MAC_SIZE or header.nbytes != HEADER.size:
            raise AuthError("malformed message: MAC or header frame has the wrong size")
        scheme, sender, counter, stamp = HEADER.unpack(header)
        scheme_mac = self._macs.get(scheme)
        if scheme_mac is None:
            raise AuthError(f"unknown MAC scheme {scheme} (this engine knows {sorted(self._macs)}"
                            f"): run the same oq-zmq-engine release on every node (re-run "
                            f"site.yml)")
        frames = [as_view(frame) for frame in message[2:]]
        expected = scheme_mac.mac(header, frames, bytes(mac[:scheme_mac.nonce_size]))
        if not hmac.compare_digest(expected, bytes(mac)):
            raise AuthError(f"bad MAC (unsigned, tampered or signed with another key/channel "
                            f"than {self.channel!r})")
        try:
            self._check_fresh(sender, counter, stamp)
        except StampError as exc:  # a service may answer it: name the message it refuses
            exc.header, exc.frames = bytes(header), frames
            raise
        return frames

    def _check_fresh(self, sender: bytes, counter: int, stamp: float) -> None:
        now = self._clock()
        if not (self.not_before < stamp and now - self.window <= stamp <= now + self.skew):
            raise self._stamp_error(stamp, now)
        last = self._last.get(sender)
        if last is not None and counter <= last[0]:
            raise AuthError(f"replayed message: counter {counter} <= {last[0]} already seen")
        self._last[sender] = (counter, now)
        self._prune(now)

    def _stamp_error(self, stamp: float, now: float) -> StampError:
        if stamp > now + self.skew:
            return StampError(
                f"timestamp {stamp - now:.3f} s ahead of the clock of {_HOST} (at most "
                f"{self.skew:g} s allowed): the sender's clock is ahead; sync the clocks of "
                f"the cluster (chrony/NTP)")
        if stamp <= self.not_before:
            start = time.strftime("%H:%M:%S", time.localtime(self.started))
            return StampError(
                f"stamped {self.not_before - stamp:.3f} s too early: this receiver started at "
                f"{start} on {_HOST} and refuses messages stamped before "
                f"{'its start + ' if self.service else 'its start - '}{self.skew:g} s "
                f"(a replay of a message sent before it started, or a sender whose clock is "
                f"behind: sign it again, or sync the clocks with chrony/NTP)", retry=True)
        return StampError(
            f"stale message: timestamp {now - stamp:.0f} s old by the clock of {_HOST}, more "
            f"than the {self.window:.0f}s window (replay, or clocks out of sync: run NTP)")

    def _prune(self, now: float) -> None:
        if time.monotonic() - self._last_prune < self.window:
            return
        self._last_prune = time.monotonic()
        cutoff = now - 2 * self.window
        for sender in [s for s, (_, seen) in self._last.items() if seen < cutoff]:
            del self._last[sender]
