"""The wire encoding of large results: chunks, the buffers they are joined into, the cap."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
from oqzmq import protocol
from oqzmq.auth import Signer, Verifier

AUTHKEY = "protocol-tests-secret"
CHANNEL = "recv:test"


def chunked_message(array: np.ndarray, chunk: int) -> list[memoryview]:
    """What a worker sends for ``array`` (a result), as the receiver gets it back."""
    frames = protocol.encode(("batch",), [*protocol.dumps(array), b"tail"], chunk)
    return [protocol.as_view(frame) for frame in frames]


def test_a_big_frame_travels_in_chunks_and_comes_back_whole() -> None:
    array = np.arange(20_000, dtype=np.float64)  # 160,000 bytes: over PACK_LIMIT
    _, layout, *data = chunked_message(array, chunk=30_000)
    assert [d.nbytes for d in data if d.nbytes == 30_000]  # it was cut
    assert len(data) == 1 + -(-array.nbytes // 30_000) + 1  # stream, chunks, the small tail
    body = protocol.decode_body(layout, data, protocol.ReceiveBuffers())
    result = protocol.loads(body[:2])
    assert np.array_equal(result, array)
    assert not result.flags.writeable  # as documented: read-only, backed by the message
    assert bytes(body[2]) == b"tail"
    fresh = protocol.loads(protocol.decode_body(layout, data)[:2])  # no buffers: a new one
    assert np.array_equal(fresh, array)


def test_a_layout_that_runs_past_the_data_is_refused() -> None:
    _, layout, *data = chunked_message(np.zeros(20_000), chunk=30_000)
    with pytest.raises(ValueError, match="past the data frames"):
        protocol.decode_body(layout, data[:-2])


def test_a_buffer_is_reused_only_once_nothing_refers_to_its_result() -> None:
    buffers = protocol.ReceiveBuffers(keep=2)
    first = np.full(100_000, 1.0)
    _, layout, *data = chunked_message(first, chunk=65_536)
    kept = protocol.loads(protocol.decode_body(layout, data, buffers)[:2])
    assert np.array_equal(kept, first)
    for value in (2.0, 3.0, 4.0, 5.0):  # more results than buffers, one of them held
        _, layout, *data = chunked_message(np.full(100_000, value), chunk=65_536)
        assert protocol.loads(protocol.decode_body(layout, data, buffers)[:2]).min() == value
    assert np.array_equal(kept, first), "a buffer still in use was overwritten"
    address = kept.ctypes.data
    del kept
    _, layout, *data = chunked_message(np.full(100_000, 6.0), chunk=65_536)
    reused = protocol.loads(protocol.decode_body(layout, data, buffers)[:2])
    assert reused.min() == 6.0
    assert reused.ctypes.data == address  # the buffer of the dropped result, not a fresh one


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    context = zmq.Context()
    pull = protocol.limit(context.socket(zmq.PULL), 1 << 20)  # cap 1 MB (+ 1 MB headroom)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    yield push, pull
    context.destroy(linger=0)


def test_a_chunked_result_crosses_a_capped_socket(pair: tuple[zmq.Socket, zmq.Socket]) -> None:
    push, pull = pair
    array = np.arange(100_000, dtype=np.float64)  # 0.8 MB: under the cap
    frames = protocol.dumps(array)
    batch = protocol.ResultBatch("pool", "token", "host", 1, 0.0, [("last", 0, len(frames), None)])
    protocol.send(push, Signer(AUTHKEY, CHANNEL), batch, frames, chunk=65_536)
    assert pull.poll(5000)
    message = protocol.recv(pull, Verifier(AUTHKEY, CHANNEL), buffers=protocol.ReceiveBuffers())
    assert message is not None and len(message.data) > 10
    assert np.array_equal(protocol.loads(message.body), array)


def test_zmq_drops_a_frame_over_the_cap_before_buffering_it(
    pair: tuple[zmq.Socket, zmq.Socket]
) -> None:
    push, pull = pair
    push.send(b"x" * (3 << 20))
    assert not pull.poll(1000), "a 3 MB frame reached a socket capped at 1 MB"


def test_a_message_whose_frames_add_up_over_the_cap_is_dropped(
    pair: tuple[zmq.Socket, zmq.Socket], caplog: pytest.LogCaptureFixture
) -> None:
    push, pull = pair
    signer = Signer(AUTHKEY, CHANNEL)
    body = [pickle.dumps(None), *[bytes(1 << 19)] * 6]  # 3 MB in frames of 0.5 MB
    push.send_multipart(signer.sign(protocol.encode(("batch",), body)))
    assert pull.poll(5000)
    with caplog.at_level(logging.WARNING, logger="oqzmq.protocol"):
        assert protocol.recv(pull, Verifier(AUTHKEY, CHANNEL)) is None
    assert "over the cap" in caplog.text


def test_a_flood_of_rejected_messages_is_logged_sparsely(caplog: pytest.LogCaptureFixture) -> None:
    """A receiver fed 250 stale messages (e.g. left in sockets by an earlier calculation on
    the same port) logs 10 of them in a minute; another kind of rejection on the same socket
    is still logged; the next minute's first line says how many were not logged."""
    from oqzmq.protocol import REJECTION_LOG_LIMIT, _log_rejection

    verifier = Verifier("k" * 32, "recv:test")
    stale = "stale message: timestamp +401s from this clock"
    with caplog.at_level(logging.WARNING, logger="oqzmq.protocol"):
        for _ in range(250):
            _log_rejection(verifier, "10.0.0.2", stale)
        _log_rejection(verifier, "10.0.0.2", "bad MAC (unsigned)")
        start, logged, skipped = verifier.rejections["stale message"]
        verifier.rejections["stale message"] = (start - 61, logged, skipped)  # a minute on
        _log_rejection(verifier, "10.0.0.2", stale)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == REJECTION_LOG_LIMIT + 2, lines
    assert "bad MAC" in lines[REJECTION_LOG_LIMIT]
    assert lines[-1].endswith(f"[{250 - REJECTION_LOG_LIMIT} more of this kind were not logged]")
