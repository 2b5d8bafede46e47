"""Replay protection of :class:`oqzmq.auth.Verifier` across restarts, on a controlled clock.

The process-level twin (a real workerpool and dbserver killed and started again) is in
``test_engine_replay.py``.
"""

from __future__ import annotations

import pytest
from oqzmq.auth import MAX_CLOCK_SKEW, AuthError, Signer, StampError, Verifier

KEY = "test-cluster-secret-0123456789"
CHANNEL = "ctrl:tcp://10.0.0.2:1909"
SKEW = MAX_CLOCK_SKEW
TICK = 0.001


class Clock:
    """A settable clock shared by signers and verifiers (seconds since the epoch)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def signer_at(clock: Clock, offset: float = 0.0) -> Signer:
    """A sender on another host whose clock reads ``offset`` seconds more than ``clock``."""
    return Signer(KEY, CHANNEL, clock=lambda: clock() + offset)


def service(clock: Clock) -> Verifier:
    return Verifier(KEY, CHANNEL, service=True, skew=SKEW, clock=clock)


def test_the_documented_skew_is_what_verifiers_allow() -> None:
    assert Verifier(KEY, CHANNEL).skew == MAX_CLOCK_SKEW == SKEW


def test_a_message_accepted_by_the_previous_run_is_refused_after_an_instant_restart(
        clock: Clock) -> None:
    signer = signer_at(clock)
    first_run = service(clock)
    clock.now += 10
    captured = signer.sign([b"stop"])
    first_run.verify(captured)
    restarted = service(clock)  # the same instant: the quickest restart there can be
    with pytest.raises(StampError, match=r"too early.*replay of a message sent before") as info:
        restarted.verify(captured)
    assert info.value.retry
    clock.now += SKEW + TICK
    assert bytes(restarted.verify(signer.sign([b"fresh"]))[0]) == b"fresh"


def test_a_message_stamped_ahead_within_the_skew_is_still_refused_after_restart(
        clock: Clock) -> None:
    """The worst case: the previous run accepted a stamp a full skew ahead of its clock."""
    ahead = signer_at(clock, SKEW)
    first_run = service(clock)
    clock.now += 10
    captured = ahead.sign([b"submit"])
    first_run.verify(captured)
    restarted = service(clock)
    with pytest.raises(StampError, match="too early"):
        restarted.verify(captured)


def test_service_boundary_is_its_start_plus_the_skew(clock: Clock) -> None:
    verifier = service(clock)
    signer = signer_at(clock, SKEW)  # a sender's clock exactly the allowed skew ahead
    with pytest.raises(StampError, match="too early"):
        verifier.verify(signer.sign([b"at the boundary"]))
    clock.now += TICK
    assert bytes(verifier.verify(signer.sign([b"just after"]))[0]) == b"just after"


def test_ordinary_verifier_refuses_stamps_older_than_its_start_minus_the_skew(
        clock: Clock) -> None:
    old = signer_at(clock).sign([b"captured before this verifier existed"])
    clock.now += SKEW + TICK
    verifier = Verifier(KEY, CHANNEL, skew=SKEW, clock=clock)
    with pytest.raises(StampError, match=rf"too early.*its start - {SKEW:g} s"):
        verifier.verify(old)
    behind = signer_at(clock, -(SKEW - TICK))  # a sender just within the allowed skew behind
    assert bytes(verifier.verify(behind.sign([b"ok"]))[0]) == b"ok"


def test_a_sender_too_far_ahead_is_refused_with_the_skew(clock: Clock) -> None:
    verifier = Verifier(KEY, CHANNEL, skew=SKEW, clock=clock)
    clock.now += 60
    assert verifier.verify(signer_at(clock, SKEW).sign([b"at the limit"]))
    with pytest.raises(StampError,
                       match=rf"{2 * SKEW:.3f} s ahead of the clock of .*at most {SKEW:g} s") \
            as info:
        verifier.verify(signer_at(clock, 2 * SKEW).sign([b"from the future"]))
    assert not info.value.retry


def test_a_stale_stamp_names_its_age(clock: Clock) -> None:
    verifier = Verifier(KEY, CHANNEL, window=300, skew=SKEW, clock=clock)
    message = signer_at(clock).sign([b"late"])
    clock.now += 300 + TICK
    with pytest.raises(StampError, match="stale message: timestamp 300 s old"):
        verifier.verify(message)


def test_in_window_duplicate_is_refused_among_other_senders(clock: Clock) -> None:
    verifier = service(clock)
    clock.now += SKEW + 1
    one, two = signer_at(clock), signer_at(clock, -0.2)
    first = one.sign([b"1"])
    verifier.verify(first)
    verifier.verify(two.sign([b"other sender"]))
    verifier.verify(one.sign([b"2"]))
    with pytest.raises(AuthError, match="replayed message: counter 1 <= 2"):
        verifier.verify(first)
