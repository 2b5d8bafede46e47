"""The worker side's sockets to the receivers: one per endpoint, fresh for each Starmap."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq
from freeports import free_port
from oqzmq import protocol, zap
from oqzmq.auth import Verifier
from oqzmq.worker import MAX_RECEIVER_SOCKETS, ReceiverSockets

AUTHKEY = "test-secret"


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_one_socket_per_endpoint_while_the_starmap_is_the_same(context: zmq.Context) -> None:
    receivers = ReceiverSockets(context, AUTHKEY)
    first, signer = receivers.get("tcp://127.0.0.1:1", "starmap-a")
    assert receivers.get("tcp://127.0.0.1:1", "starmap-a") == (first, signer)
    assert receivers.get("tcp://127.0.0.1:2", "starmap-a")[0] is not first
    receivers.close()


def test_a_new_starmap_on_the_same_endpoint_gets_a_fresh_socket(context: zmq.Context) -> None:
    """A socket left from the previous Starmap would wait out zmq's reconnect interval."""
    receivers = ReceiverSockets(context, AUTHKEY)
    old, _ = receivers.get("tcp://127.0.0.1:1", "starmap-a")
    new, _ = receivers.get("tcp://127.0.0.1:1", "starmap-b")
    assert new is not old
    assert old.closed and not new.closed
    receivers.close()
    assert new.closed


def test_least_recently_used_sockets_are_closed_beyond_the_limit(context: zmq.Context) -> None:
    receivers = ReceiverSockets(context, AUTHKEY)
    first, _ = receivers.get("tcp://127.0.0.1:1", "t")
    for port in range(2, MAX_RECEIVER_SOCKETS + 2):
        receivers.get(f"tcp://127.0.0.1:{port}", "t")
    assert first.closed
    receivers.close()


def bind_when_free(pull: zmq.Socket, endpoint: str) -> None:
    """zmq releases a closed socket's port in its I/O thread, a moment after close()."""
    for _ in range(100):
        try:
            pull.bind(endpoint)
            return
        except zmq.ZMQError:
            time.sleep(0.05)
    pull.bind(endpoint)  # raises the error if the port never came free


def test_messages_reach_the_next_receiver_bound_on_the_same_port(context: zmq.Context) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    receivers = ReceiverSockets(context, AUTHKEY)
    for token in ("starmap-a", "starmap-b"):
        pull = zap.serve(context.socket(zmq.PULL), AUTHKEY, "the test's receiver")
        bind_when_free(pull, endpoint)
        sock, signer = receivers.get(endpoint, token)
        protocol.send(sock, signer, protocol.Heartbeat(token), [b"payload"])
        assert pull.poll(10_000), f"nothing arrived for {token}"
        message = protocol.recv(pull, Verifier(AUTHKEY, f"recv:{endpoint}"))
        assert message is not None
        assert protocol.Heartbeat.from_meta(message.meta).pool_id == token
        pull.close(linger=0)
    receivers.close()
