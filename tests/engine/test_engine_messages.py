"""The named wire messages of oqzmq.protocol: the tuples they travel as, and back."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest
import zmq
from oqzmq import protocol
from oqzmq.auth import Signer, Verifier
from oqzmq.errors import MessageError

AUTHKEY = "message-tests-secret"
CHANNEL = "ctrl:test"
REPORT = (0.5, 10, 1, {"compute": (0.4, 12.0, 3)}, None)

# Each message and the tuple it travels as: the same tuples the engine sent before the
# messages had names, so an engine of this release and one of the last agree on the wire.
WIRE = [
    (protocol.Submit("tok", "tcp://m:1912", b"func", [0, 1], [2, 1]),
     ("submit", "tok", "tcp://m:1912", b"func", [0, 1], [2, 1])),
    (protocol.Tasks("tok", "tcp://m:1912", b"func", [3], [1]),
     ("tasks", "tok", "tcp://m:1912", b"func", [3], [1])),
    (protocol.Cancel("tok"), ("cancel", "tok")),
    (protocol.Lease(["tok", "tok2"]), ("lease", ["tok", "tok2"])),
    (protocol.Ping(), ("ping",)),
    (protocol.StatusQuery(), ("status",)),
    (protocol.InspectQuery(), ("inspect",)),
    (protocol.Stop(), ("stop",)),
    (protocol.Kill(), ("kill",)),
    (protocol.Pong("10.0.0.2", 4, 321), ("pong", "10.0.0.2", 4, 321)),
    (protocol.PoolStatus("10.0.0.2", 1, 4, 7), ("status", "10.0.0.2", 1, 4, 7)),
    (protocol.PoolInspection("10.0.0.2", {321: ["tok#0"]}, ["tok#1"]),
     ("inspect", "10.0.0.2", {321: ["tok#0"]}, ["tok#1"])),
    (protocol.Stopping("10.0.0.2"), ("stopping", "10.0.0.2")),
    (protocol.Killed("10.0.0.2"), ("killed", "10.0.0.2")),
    (protocol.Refused("unknown command 'x'"), ("error", "unknown command 'x'")),
    (protocol.Ready(321), ("ready", 321)),
    (protocol.Done(5, 0.25), ("done", 5, 0.25)),
    (protocol.ResultBatch("tcp://w:1909", "tok", "10.0.0.2", 321, 80.5,
                          [("last", 0, 1, REPORT), ("result", 1, 2, None)]),
     ("batch", "tcp://w:1909", "tok", "10.0.0.2", 321, 80.5,
      [("last", 0, 1, REPORT), ("result", 1, 2, None)])),
    (protocol.Heartbeat("tcp://w:1909", "memory at 91 %"),
     ("heartbeat", "tcp://w:1909", "memory at 91 %")),
]


@pytest.mark.parametrize(("message", "wire"), WIRE, ids=lambda m: type(m).__name__)
def test_a_message_travels_as_its_plain_tuple(message: protocol.Message,
                                              wire: tuple[object, ...]) -> None:
    assert message.to_meta() == wire
    assert pickle.dumps(message.to_meta(), protocol=5) == pickle.dumps(wire, protocol=5)
    assert type(message).from_meta(wire) == message


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    yield push, pull
    context.destroy(linger=0)


@pytest.mark.parametrize(("message", "wire"), WIRE, ids=lambda m: type(m).__name__)
def test_a_message_comes_back_from_the_wire_with_its_name(
    pair: tuple[zmq.Socket, zmq.Socket], message: protocol.Message, wire: tuple[object, ...]
) -> None:
    push, pull = pair
    protocol.send(push, Signer(AUTHKEY, CHANNEL), message, [b"body"])
    assert pull.poll(5000)
    received = protocol.recv(pull, Verifier(AUTHKEY, CHANNEL))
    assert received is not None
    assert received.kind == message.KIND and received.meta == wire
    assert type(message).from_meta(received.meta) == message
    assert [bytes(frame) for frame in received.body] == [b"body"]


def test_a_heartbeat_of_a_pool_without_memory_warnings_reads_as_none() -> None:
    assert protocol.Heartbeat.from_meta(("heartbeat", "pool")).memory_warning == ""


@pytest.mark.parametrize(("cls", "meta"), [
    (protocol.Submit, ("submit", "tok", "tcp://m:1912", [(0, 1)])),  # an older release's
    (protocol.Cancel, ("cancel",)),
    (protocol.Cancel, ("cancel", "tok", "extra")),
])
def test_a_message_of_another_shape_is_refused_by_name(cls: type[protocol.Message],
                                                       meta: tuple[object, ...]) -> None:
    with pytest.raises(MessageError, match=f"{cls.KIND!r} message of another release"):
        cls.from_meta(meta)


@pytest.mark.parametrize("meta", [("pong", "h", 1, 2), "status", (), None])
def test_a_message_of_another_kind_is_refused(meta: object) -> None:
    with pytest.raises(MessageError, match="expected a 'status' message"):
        protocol.PoolStatus.from_meta(meta)


def test_a_query_reads_only_its_own_reply() -> None:
    assert protocol.Ping().read_reply(("pong", "h", 2, 9)) == protocol.Pong("h", 2, 9)
    assert protocol.StatusQuery().read_reply(("status", "h", 0, 2, 0)).total == 2
    with pytest.raises(MessageError, match="expected a 'stopping' message"):
        protocol.Stop().read_reply(("error", "unknown command 'stop'"))


def test_received_kind_is_empty_for_a_meta_that_is_no_message() -> None:
    for meta, kind in ((("ping",), "ping"), ((), ""), ("ping", ""), ((1, 2), "")):
        received = protocol.Received([], meta, memoryview(b""), [])
        assert received.kind == kind
