"""The MAC layer: what verifies, and every way a message must fail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from oqzmq.auth import (
    BLAKE2B,
    HEADER,
    HMAC_SHA256,
    AuthError,
    Signer,
    Verifier,
    cpu_has_sha_extensions,
)

KEY = "test-cluster-secret-0123456789"


def pair(channel: str = "recv:127.0.0.1:1912") -> tuple[Signer, Verifier]:
    return Signer(KEY, channel), Verifier(KEY, channel)


@pytest.mark.parametrize("scheme", [BLAKE2B, HMAC_SHA256])
def test_round_trip_with_buffers(scheme: int) -> None:
    signer = Signer(KEY, "recv:127.0.0.1:1912", scheme=scheme)
    verifier = Verifier(KEY, "recv:127.0.0.1:1912")
    payload = [b"meta", memoryview(bytearray(b"x" * 1000))]
    frames = verifier.verify(signer.sign(payload))
    assert [bytes(f) for f in frames] == [b"meta", b"x" * 1000]


def test_switching_the_scheme_byte_is_rejected() -> None:
    _, verifier = pair()
    message = Signer(KEY, "recv:127.0.0.1:1912", scheme=HMAC_SHA256).sign([b"data"])
    _, sender, counter, stamp = HEADER.unpack(message[1])
    switched = HEADER.pack(BLAKE2B, sender, counter, stamp)
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify([message[0], switched, *message[2:]])


def test_unknown_scheme_is_rejected_with_the_fix() -> None:
    _, verifier = pair()
    message = Signer(KEY, "recv:127.0.0.1:1912").sign([b"data"])
    _, sender, counter, stamp = HEADER.unpack(message[1])
    future = HEADER.pack(9, sender, counter, stamp)
    with pytest.raises(AuthError, match=r"unknown MAC scheme 9.*same oq-zmq-engine release"):
        verifier.verify([message[0], future, *message[2:]])


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 sha_ni aes\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f aes\n", False),
    ("processor\t: 0\nFeatures\t: fp asimd aes pmull sha1 sha2 crc32\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd crc32\n", False),
])
def test_sha_extensions_are_read_from_cpuinfo(cpuinfo: str, expected: bool,
                                              tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_sha_extensions(path) is expected
    assert cpu_has_sha_extensions(tmp_path / "missing") is False


def test_unsigned_message_is_rejected() -> None:
    _, verifier = pair()
    with pytest.raises(AuthError, match=r"malformed|truncated"):
        verifier.verify([b"cos\nsystem\n(S'echo pwned'\ntR."])


def test_wrong_key_is_rejected() -> None:
    _, verifier = pair()
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify(Signer("another-key", "recv:127.0.0.1:1912").sign([b"data"]))


def test_other_channel_is_rejected() -> None:
    _, verifier = pair()
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify(Signer(KEY, "ctrl:127.0.0.1:1909").sign([b"data"]))


def test_tampered_frame_is_rejected() -> None:
    signer, verifier = pair()
    message = signer.sign([b"data", b"more"])
    message[3] = b"mord"
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify(message)


def test_moving_frame_boundaries_is_rejected() -> None:
    signer, verifier = pair()
    message = signer.sign([b"ab", b"cd"])
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify([*message[:2], b"abc", b"d"])


def test_truncated_message_is_rejected() -> None:
    signer, verifier = pair()
    message = signer.sign([b"data", b"more"])
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify(message[:-1])
    with pytest.raises(AuthError, match="truncated"):
        verifier.verify(message[:1])


def test_replay_is_rejected_but_later_messages_pass() -> None:
    signer, verifier = pair()
    first = signer.sign([b"one"])
    verifier.verify(first)
    with pytest.raises(AuthError, match="replayed"):
        verifier.verify(first)
    assert bytes(verifier.verify(signer.sign([b"two"]))[0]) == b"two"


def test_stale_message_is_rejected() -> None:
    signer, verifier = pair()
    message = signer.sign([b"old"])
    scheme, sender, counter, _ = HEADER.unpack(message[1])
    forged = HEADER.pack(scheme, sender, counter, time.time() - 10_000)
    with pytest.raises(AuthError, match="bad MAC"):  # the timestamp is under the MAC
        verifier.verify([message[0], forged, *message[2:]])
    slow = Verifier(KEY, "recv:127.0.0.1:1912", window=0.01)
    message = signer.sign([b"late"])
    time.sleep(0.05)
    with pytest.raises(AuthError, match="stale"):
        slow.verify(message)


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty authkey"):
        Signer("", "x")
