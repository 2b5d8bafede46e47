"""Fixtures for the engine tests: openquake.cfg files and local workerpools on loopback hosts.

Several workerpools run on 127.0.0.2, 127.0.0.3 (standing in for worker hosts), each started
by the same launcher `oqz workers start` uses. Ports are picked free per test session so
parallel runs on one machine do not collide.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from enginecluster import HOSTS, Cluster, write_config
from freeports import free_port_block
from oqzmq import launcher
from oqzmq.config import Config, load_config
from oqzmq.protocol import Kill


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


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
    launcher.query_pools(config, Kill(), timeout=2)
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
