"""Item 7: nothing from an unauthenticated peer executes, is unpickled, or crashes anything.

Each attack carries a pickle that would create a marker file if it were ever unpickled, or a
task that would create one if it ever ran.
"""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path

import pytest
import zmq
from enginecluster import AUTHKEY, Cluster
from enginetasks import pid_then_sleep, touch
from oqzmq import protocol, zap
from oqzmq.auth import BLAKE2B, HMAC_SHA256, POLY1305, Signer
from oqzmq.config import Config
from oqzmq.parallel import Starmap
from oqzmq.protocol import Heartbeat, ResultBatch, Submit

POOL = "127.0.0.3"


@pytest.fixture(params=[BLAKE2B, HMAC_SHA256, POLY1305], ids=["blake2b", "hmac-sha256", "poly1305"])
def scheme(request: pytest.FixtureRequest) -> int:
    """The attacks run against every MAC scheme a verifier accepts."""
    return int(request.param)


class Exploit:
    """Unpickling this creates the file: proof that bytes were unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.path, "w")


def attacks(channel: str, meta: tuple[object, ...], body: list[bytes],
            scheme: int) -> dict[str, list[bytes]]:
    """The four kinds of bad message, ready to send."""
    good = Signer(AUTHKEY, channel, scheme)
    frames = protocol.encode(meta, body)
    replayed = good.sign(frames)
    return {
        "unsigned": frames,
        "wrong key": Signer("not-the-cluster-key", channel, scheme).sign(frames),
        "truncated": good.sign(frames)[:-1],
        "replay-original": replayed,
        "replayed": replayed,
    }


def test_workerpool_rejects_bad_messages(cluster: Cluster, config: Config, tmp_path: Path,
                                        scheme: int) -> None:
    logged_before = len(cluster.log(POOL))
    endpoint = f"tcp://{POOL}:{config.ctrl_port}"
    context = zmq.Context()
    results = zap.serve(context.socket(zmq.PULL), AUTHKEY, "the test's results")
    reply_endpoint = f"tcp://127.0.0.1:{results.bind_to_random_port('tcp://127.0.0.1')}"
    # a peer that passes the handshake (see test_engine_handshake.py for one that does not)
    attacker = zap.client(context.socket(zmq.DEALER), AUTHKEY, endpoint)
    attacker.connect(endpoint)
    markers = {}
    try:
        for name in ("unsigned", "wrong key", "truncated", "replayed"):
            marker = tmp_path / name.replace(" ", "-")
            markers[name] = marker
            body = [*protocol.dumps((str(marker),))]
            body.append(pickle.dumps(Exploit(tmp_path / f"unpickled-{name}")))
            func = pickle.dumps((touch, "touch"))
            meta = Submit("attack", reply_endpoint, func, [0], [len(body)]).to_meta()
            message = attacks(f"ctrl:{endpoint}", meta, body, scheme)
            if name == "replayed":
                attacker.send_multipart(message["replay-original"])
                # wait for the file, not for the first message: a pool heartbeat to the
                # results socket can arrive before the task's result
                deadline = time.monotonic() + 10
                while not marker.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert marker.exists(), "the genuine message was not executed"
                marker.unlink()
            attacker.send_multipart(message[name])
        time.sleep(1.5)
        assert not [m.name for m in markers.values() if m.exists()], "a bad message executed"
        assert not list(tmp_path.glob("unpickled-*")), "bytes of a bad message were unpickled"
        log = cluster.log(POOL)[logged_before:]
        for reason in ("malformed message", "bad MAC", "replayed message"):
            assert reason in log
        assert log.count("rejected message on ctrl:") >= 4
    finally:
        attacker.close(0)
        results.close(0)
        context.term()
    # the pool is alive and still computes
    assert list(Starmap(touch, [(str(tmp_path / "ok"),)], distribute="zmq")) == [
        str(tmp_path / "ok")]


def test_receiver_rejects_bad_messages(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture, scheme: int
) -> None:
    smap = Starmap(pid_then_sleep, distribute="zmq")
    smap.submit(str(tmp_path / "pid"), 1.0)
    channel = f"recv:{smap.endpoint}"
    context = zmq.Context()
    attacker = zap.client(context.socket(zmq.PUSH), AUTHKEY, smap.endpoint)
    attacker.connect(smap.endpoint)
    report = (0.0, 0, 1, None, None)
    try:
        for name in ("unsigned", "wrong key", "truncated", "replayed"):
            evil = ResultBatch("evil", smap.token, "evil", 1, 0.0, [("last", 0, 1, report)])
            meta = evil.to_meta()
            body = [pickle.dumps(Exploit(tmp_path / f"unpickled-{name}"))]
            message = attacks(channel, meta, body, scheme)
            if name == "replayed":  # a genuine (keyed) heartbeat, then the same bytes again
                message = attacks(channel, Heartbeat("x").to_meta(), [], scheme)
                attacker.send_multipart(message["replay-original"])
            attacker.send_multipart(message[name])
        with caplog.at_level(logging.WARNING, logger="oqzmq.protocol"):
            results = list(smap)
    finally:
        attacker.close(0)
        context.term()
    assert len(results) == 1 and isinstance(results[0], int)  # the real worker's pid
    assert not list(tmp_path.glob("unpickled-*"))
    # a message for an earlier Starmap on this port, delivered late on a loaded machine, is
    # refused as stamped before this receiver started: not one of the attacks
    rejected = [r.getMessage() for r in caplog.records if "rejected message" in r.getMessage()
                and "too early: this receiver started" not in r.getMessage()]
    assert len(rejected) == 4, rejected
    assert any("replayed" in text for text in rejected)


def test_an_authentic_message_of_another_release_is_logged_and_survived(
    cluster: Cluster, config: Config, tmp_path: Path
) -> None:
    endpoint = f"tcp://{POOL}:{config.ctrl_port}"
    context = zmq.Context()
    sender = zap.client(context.socket(zmq.DEALER), AUTHKEY, endpoint)
    sender.connect(endpoint)
    old_submit = ("submit", "old-release", "tcp://127.0.0.1:9", [(0, 1)])  # before 2026-12-02
    try:
        signer = Signer(AUTHKEY, f"ctrl:{endpoint}")
        sender.send_multipart(signer.sign(protocol.encode(old_submit, [b"x"])))
        deadline = time.monotonic() + 10
        while "run the same release" not in cluster.log(POOL) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "another release of oq-zmq-engine" in cluster.log(POOL)
    finally:
        sender.close(0)
        context.term()
    assert list(Starmap(touch, [(str(tmp_path / "ok"),)], distribute="zmq")) == [
        str(tmp_path / "ok")]
