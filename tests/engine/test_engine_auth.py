"""The MAC layer: what verifies, and every way a message must fail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from oqzmq.auth import (
    BLAKE2B,
    HEADER,
    HMAC_SHA256,
    POLY1305,
    AuthError,
    Signer,
    Verifier,
    cpu_has_sha_extensions,
    fastest_scheme,
)

KEY = "test-cluster-secret-0123456789"
SCHEMES = (BLAKE2B, HMAC_SHA256, POLY1305)


@pytest.fixture(params=SCHEMES, ids=["blake2b", "hmac-sha256", "poly1305"])
def scheme(request: pytest.FixtureRequest) -> int:
    """Every test that uses ``pair`` runs once per MAC scheme: a verifier accepts them all."""
    return int(request.param)


@pytest.fixture
def pair(scheme: int) -> tuple[Signer, Verifier]:
    channel = "recv:127.0.0.1:1912"
    return Signer(KEY, channel, scheme=scheme), Verifier(KEY, channel)


def test_round_trip_with_buffers(pair: tuple[Signer, Verifier]) -> None:
    signer, verifier = pair
    payload = [b"meta", memoryview(bytearray(b"x" * 1000))]
    frames = verifier.verify(signer.sign(payload))
    assert [bytes(f) for f in frames] == [b"meta", b"x" * 1000]


def test_this_machine_signs_with_poly1305() -> None:
    assert fastest_scheme() == POLY1305
    assert Signer(KEY, "x").scheme == POLY1305


def test_switching_the_scheme_byte_is_rejected(pair: tuple[Signer, Verifier]) -> None:
    signer, verifier = pair
    message = signer.sign([b"data"])
    scheme, sender, counter, stamp = HEADER.unpack(message[1])
    for other in set(SCHEMES) - {scheme}:
        switched = HEADER.pack(other, sender, counter, stamp)
        with pytest.raises(AuthError, match="bad MAC"):
            verifier.verify([message[0], switched, *message[2:]])


def test_poly1305_keys_are_one_time_and_bound_to_the_nonce() -> None:
    signer = Signer(KEY, "recv:127.0.0.1:1912", scheme=POLY1305)
    verifier = Verifier(KEY, "recv:127.0.0.1:1912")
    first, second = signer.sign([b"same"]), signer.sign([b"same"])
    assert first[0][:16] != second[0][:16]  # a fresh nonce per message
    assert first[0][16:] != second[0][16:]  # so a fresh key, so another tag
    other_nonce = bytes([first[0][0] ^ 1]) + first[0][1:]
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify([other_nonce, *first[1:]])
    verifier.verify(first)


def test_unknown_scheme_is_rejected_with_the_fix(pair: tuple[Signer, Verifier]) -> None:
    _, verifier = pair
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


def test_unsigned_message_is_rejected(pair: tuple[Signer, Verifier]) -> None:
    _, verifier = pair
    with pytest.raises(AuthError, match=r"malformed|truncated"):
        verifier.verify([b"cos\nsystem\n(S'echo pwned'\ntR."])


def test_wrong_key_is_rejected(pair: tuple[Signer, Verifier], scheme: int) -> None:
    _, verifier = pair
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify(Signer("another-key", "recv:127.0.0.1:1912", scheme).sign([b"data"]))


def test_other_channel_is_rejected(pair: tuple[Signer, Verifier], scheme: int) -> None:
    _, verifier = pair
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify(Signer(KEY, "ctrl:127.0.0.1:1909", scheme).sign([b"data"]))


def test_tampered_frame_is_rejected(pair: tuple[Signer, Verifier]) -> None:
    signer, verifier = pair
    message = signer.sign([b"data", b"more"])
    message[3] = b"mord"
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify(message)


def test_moving_frame_boundaries_is_rejected(pair: tuple[Signer, Verifier]) -> None:
    signer, verifier = pair
    message = signer.sign([b"ab", b"cd"])
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify([*message[:2], b"abc", b"d"])


def test_truncated_message_is_rejected(pair: tuple[Signer, Verifier]) -> None:
    signer, verifier = pair
    message = signer.sign([b"data", b"more"])
    with pytest.raises(AuthError, match="bad MAC"):
        verifier.verify(message[:-1])
    with pytest.raises(AuthError, match="truncated"):
        verifier.verify(message[:1])


def test_replay_is_rejected_but_later_messages_pass(pair: tuple[Signer, Verifier]) -> None:
    signer, verifier = pair
    first = signer.sign([b"one"])
    verifier.verify(first)
    with pytest.raises(AuthError, match="replayed"):
        verifier.verify(first)
    assert bytes(verifier.verify(signer.sign([b"two"]))[0]) == b"two"


def test_stale_message_is_rejected(pair: tuple[Signer, Verifier]) -> None:
    signer, verifier = pair
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
