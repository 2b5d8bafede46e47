"""Fixtures for the engine tests: openquake.cfg files and local workerpools on loopback hosts.

Several workerpools run on 127.0.0.2, 127.0.0.3 (standing in for worker hosts), each started
by the same launcher `oqz workers start` uses. Ports are picked free per test session so
parallel runs on one machine do not collide.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from freeports import free_port_block
from oqzmq import launcher
from oqzmq.config import Config, load_config
from oqzmq.parallel import connect_pool

HERE = Path(__file__).parent
AUTHKEY = "engine-tests-secret-6Zq1v8Kp3Lr0Xy7Wm2Nb"
HOSTS = ("127.0.0.2", "127.0.0.3")

# Worker processes import the test tasks (enginetasks.py) from here.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
)


def write_config(path: Path, ctrl_port: int, receiver_ports: str, host_cores: str,
                 shared_dir: Path) -> Path:
    path.write_text(f"""\
[distribution]
oq_distribute = zmq

[dbserver]
multi_user = false
file = {shared_dir}/db.sqlite3
listen = 127.0.0.1
host = 127.0.0.1
port = 1908
receiver_host = 127.0.0.1
receiver_ports = {receiver_ports}
authkey = {AUTHKEY}

[zworkers]
host_cores = {host_cores}
ctrl_port = {ctrl_port}

[directory]
shared_dir = {shared_dir}
custom_tmp =
""")
    return path


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@dataclass
class Cluster:
    config: Config
    path: Path

    def log(self, host: str) -> str:
        return launcher.local_log_path(_hc(self.config, host), self.config).read_text()

    def pool_pid(self, host: str) -> int:
        context = zmq.Context()
        handle = connect_pool(context, AUTHKEY, host, f"tcp://{host}:{self.config.ctrl_port}")
        try:
            reply = handle.request(("ping",))
        finally:
            handle.sock.close(linger=0)
            context.term()
        assert reply is not None, f"pool on {host} does not answer"
        return int(reply[3])


def _hc(config: Config, host: str):
    return next(hc for hc in config.host_cores if hc.host == host)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two workerpools (127.0.0.2 with 2 processes, 127.0.0.3 with 1) for the whole session."""
    base = tmp_path_factory.mktemp("cluster")
    port = free_port_block(6, ("127.0.0.1", *HOSTS))
    path = write_config(base / "openquake.cfg", port, f"{port + 1}-{port + 5}",
                        f"{HOSTS[0]} 2, {HOSTS[1]} 1", base / "shared")
    config = load_config(path)
    for hc in config.host_cores:
        launcher.local_log_path(hc, config).unlink(missing_ok=True)
    reports = launcher.start_pools(config, "local", wait=30)
    assert all(r.ok for r in reports), reports
    yield Cluster(config, path)
    launcher.query_pools(config, ("kill",), timeout=2)
    _wait_closed(config)
    for hc in config.host_cores:
        launcher.local_log_path(hc, config).unlink(missing_ok=True)


def _wait_closed(config: Config, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_refused(hc.host, config.ctrl_port) for hc in config.host_cores):
            return
        time.sleep(0.1)


@pytest.fixture
def config(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("OQ_CONFIG_FILE", str(cluster.path))
    return cluster.config
