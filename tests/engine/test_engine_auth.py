"""The MAC layer: what verifies, and every way a message must fail."""

from __future__ import annotations

import time

import pytest
from oqzmq.auth import HEADER, AuthError, Signer, Verifier

KEY = "test-cluster-secret-0123456789"


def pair(channel: str = "recv:127.0.0.1:1912") -> tuple[Signer, Verifier]:
    return Signer(KEY, channel), Verifier(KEY, channel)


def test_round_trip_with_buffers() -> None:
    signer, verifier = pair()
    payload = [b"meta", memoryview(bytearray(b"x" * 1000))]
    frames = verifier.verify(signer.sign(payload))
    assert [bytes(f) for f in frames] == [b"meta", b"x" * 1000]


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
    _, sender, counter, _ = HEADER.unpack(message[1])
    forged = HEADER.pack(1, sender, counter, time.time() - 10_000)
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
