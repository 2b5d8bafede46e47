"""#20 item 4: a message captured before a receiver restarts is refused after the restart.

Real processes: a workerpool and a dbserver are started, sent a genuine signed message (whose
bytes the test keeps, as an attacker on the network would), killed, started again on the same
port, and sent the captured bytes again. The replay must do nothing and the receiver's log
must say why; a fresh message from a legitimate sender must still work after the restart.
The Verifier's rules themselves, on a controlled clock, are in test_engine_replay_unit.py.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from enginecluster import AUTHKEY, write_config
from enginetasks import touch
from freeports import free_port_block
from oqzmq import launcher, protocol, zap
from oqzmq.auth import Signer
from oqzmq.config import Config, load_config
from oqzmq.dbserver import DbClient, channels, ping
from oqzmq.protocol import Ping, Submit

HOST = "127.0.0.4"  # a loopback address of its own: the session's cluster is not disturbed
REFUSED_REPLAY = "too early"  # what the receiver logs for a message stamped before its start


class Service:
    """One service process (``argv``) that can be killed and started again, logging to
    ``log``."""

    def __init__(self, argv: list[str], log: Path, config_path: Path) -> None:
        self.argv, self.log_path, self.config_path = argv, log, config_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "OQ_CONFIG_FILE": str(self.config_path)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, *self.argv], stdout=log,
                                            stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def replay_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Config]:
    """An openquake.cfg with a pool on HOST and a dbserver, on ports of this test's own."""
    ctrl = free_port_block(1, (HOST,))
    db_port = free_port_block(1)
    receivers = free_port_block(2)
    path = write_config(tmp_path / "openquake.cfg", ctrl, f"{receivers}-{receivers + 1}",
                        f"{HOST} 1", tmp_path / "shared")
    path.write_text(path.read_text().replace("\nport = 1908\n", f"\nport = {db_port}\n"))
    monkeypatch.setenv("OQ_CONFIG_FILE", str(path))
    return path, load_config(path)


@pytest.fixture
def pool(replay_config: tuple[Path, Config], tmp_path: Path) -> Iterator[Service]:
    path, _ = replay_config
    service = Service(["-m", "oqzmq.workerpool", "--host", HOST, "--cores", "1"],
                      tmp_path / "pool.log", path)
    yield service
    if service.process is not None and service.process.poll() is None:
        service.kill()


@pytest.fixture
def dbserver(replay_config: tuple[Path, Config], tmp_path: Path) -> Iterator[Service]:
    path, _ = replay_config
    service = Service(["-m", "oqzmq.cli", "dbserver", "start"], tmp_path / "dbserver.log",
                      path)
    yield service
    if service.process is not None and service.process.poll() is None:
        service.kill()


def _start_pool(pool: Service, config: Config) -> None:
    pool.start()
    answers = launcher.query_pools(config, Ping(), timeout=60)
    assert answers[HOST] is not None, f"the pool does not answer:\n{pool.log()}"


def _submit_touch(signer: Signer, marker: Path, results: str) -> list[bytes]:
    """The signed frames of a Submit whose task creates ``marker`` (what an attacker keeps)."""
    body = protocol.dumps((str(marker),))
    func = pickle.dumps((touch, "touch"))
    meta = Submit("replay-test", results, func, [0], [len(body)]).to_meta()
    return [bytes(as_bytes) for as_bytes in signer.sign(protocol.encode(meta, body))]


def _send(endpoint: str, frames: list[bytes]) -> None:
    context = zmq.Context()
    sock = zap.client(context.socket(zmq.DEALER), AUTHKEY, endpoint)
    sock.setsockopt(zmq.LINGER, 2000)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
    finally:
        sock.close()
        context.term()


def test_a_submit_captured_before_a_pool_restart_is_refused_after_it(
        pool: Service, replay_config: tuple[Path, Config], tmp_path: Path) -> None:
    _, config = replay_config
    endpoint = f"tcp://{HOST}:{config.ctrl_port}"
    context = zmq.Context()
    # where the tasks' results go; not read
    results = zap.serve(context.socket(zmq.PULL), AUTHKEY, "results")
    reply_to = f"tcp://127.0.0.1:{results.bind_to_random_port('tcp://127.0.0.1')}"
    marker = tmp_path / "ran"
    try:
        _start_pool(pool, config)
        captured = _submit_touch(Signer(AUTHKEY, f"ctrl:{endpoint}"), marker, reply_to)
        _send(endpoint, captured)
        _wait_for(marker.exists, 30, "the genuine submit to run")
        marker.unlink()

        pool.kill()
        _start_pool(pool, config)  # as quick a restart as the pool allows
        logged = len(pool.log())  # pings sent while it started were refused too: skip them
        _send(endpoint, captured)
        _wait_for(lambda: REFUSED_REPLAY in pool.log()[logged:], 10, "the pool to log why")
        time.sleep(1.0)  # time enough for the task to have run, had it been accepted
        assert not marker.exists(), "the replayed submit ran after the restart"
        assert "rejected message on ctrl:" in pool.log()[logged:]

        fresh = _submit_touch(Signer(AUTHKEY, f"ctrl:{endpoint}"), marker, reply_to)
        _send(endpoint, fresh)
        _wait_for(marker.exists, 30, "a fresh submit to run after the restart")
    finally:
        results.close(0)
        context.term()


def _calcs(config: Config) -> int:
    with DbClient(config, timeout=10) as client:
        return int(client.call("list_calcs")["total"])


def _request(config: Config, frames: list[bytes]) -> dict[str, object]:
    context = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{config.db_port}"
    sock = zap.client(context.socket(zmq.DEALER), config.authkey, endpoint)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        reply = sock.recv_multipart()
    finally:
        sock.close()
        context.term()
    return dict(json.loads(reply[-1]))


def _wait_serving(config: Config) -> None:
    def answers() -> bool:
        try:
            return bool(ping(config, timeout=1.0))
        except Exception:
            return False
    _wait_for(answers, 30, "the dbserver to answer")


def test_a_request_captured_before_a_dbserver_restart_is_refused_after_it(
        dbserver: Service, replay_config: tuple[Path, Config]) -> None:
    _, config = replay_config
    request_channel, _ = channels(config)
    create = {"id": 1, "cmd": "create_calc", "user": "openquake",
              "args": {"description": "replayed?", "calculation_mode": "demo"}}
    dbserver.start()
    _wait_serving(config)
    signed = Signer(AUTHKEY, request_channel).sign([json.dumps(create).encode()])
    captured = [bytes(frame) for frame in signed]
    assert _request(config, captured)["ok"] is True
    assert _calcs(config) == 1

    dbserver.kill()
    dbserver.start()
    _wait_serving(config)
    logged = len(dbserver.log())  # requests sent while it started were refused too
    answer = _request(config, captured)
    assert answer["ok"] is False and answer["refused"] == captured[1].hex()
    assert REFUSED_REPLAY in str(answer["error"])
    _wait_for(lambda: REFUSED_REPLAY in dbserver.log()[logged:], 10, "the dbserver to log why")
    assert _calcs(config) == 1, "the replayed request created a calculation"

    with DbClient(config, timeout=10) as client:  # a legitimate client, after the restart
        client.call("create_calc", description="fresh", calculation_mode="demo")
    assert _calcs(config) == 2
