"""Every node is up, runs systemd as PID 1, and reaches the others by name."""

from __future__ import annotations

import os

import pytest
import testinfra.utils.ansible_runner

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
)
ALL_HOSTS = RUNNER.get_hosts("all")
testinfra_hosts = ALL_HOSTS


def test_systemd_is_pid1(host) -> None:
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_system_is_running(host) -> None:
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert state == "running", f"system state {state!r}, failed units: {failed or 'none'}"


@pytest.mark.parametrize("peer", ALL_HOSTS)
def test_peers_resolve_by_name(host, peer: str) -> None:
    result = host.run("getent hosts %s", peer)
    assert result.rc == 0, f"{peer} does not resolve from {host.backend.get_hostname()}"
