"""Fixtures of the cluster tests: hosts, addresses and settings read from the inventory.

Nothing here is specific to Molecule: run the modules against any inventory with
    pytest molecule/default/tests --hosts='ansible://all' --ansible-inventory=INV
Hostnames, addresses and settings come from the Ansible inventory (with the oq role
defaults underneath, through oqcluster.inventory), never from constants.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import pytest
import testinfra

from oqcluster.inventory import Inventory
from oqcluster.project import find_project
from oqcluster.rules import ClusterData


@cache
def _load(path: str) -> tuple[Inventory, ClusterData]:
    inventory = Inventory([path], find_project().defaults)
    return inventory, inventory.cluster_data()


def _inventory_path(config: pytest.Config) -> str:
    path = config.getoption("ansible_inventory", None) or os.environ.get(
        "MOLECULE_INVENTORY_FILE"
    )
    if not path:
        pytest.fail("run with --hosts=ansible://all --ansible-inventory=INV")
    return str(path)


class Cluster:
    """The cluster as the inventory describes it, plus a testinfra host for each node."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.inventory, self.data = _load(path)
        self.master = self.data.masters[0]
        self.workers = list(self.data.workers)
        self._hosts: dict[str, Any] = {}

    def settings(self, name: str) -> dict[str, Any]:
        return dict(self.data.hosts[name].values)

    def address(self, name: str) -> str:
        return self.data.hosts[name].address()

    def var(self, name: str, variable: str, default: Any = None) -> Any:
        """A variable of any role as the inventory sets it (role defaults are not applied)."""
        return self.inventory.raw_vars(name).get(variable, default)

    def node(self, name: str) -> Any:
        if name not in self._hosts:
            self._hosts[name] = testinfra.get_host(
                f"ansible://{name}", ansible_inventory=self.path
            )
        return self._hosts[name]

    def remote_workers(self) -> list[str]:
        """Workers that are not also the master (they use the exports, not local dirs)."""
        return [name for name in self.workers if name != self.master]


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Cluster:
    return Cluster(_inventory_path(pytestconfig))


@pytest.fixture
def node_name(host: Any) -> str:
    return str(host.backend.get_hostname())


@pytest.fixture
def oq(cluster: Cluster, node_name: str) -> dict[str, Any]:
    if node_name not in cluster.data.hosts:
        pytest.skip(f"{node_name} is neither in group master nor in group workers")
    return cluster.settings(node_name)


@pytest.fixture
def on_master(cluster: Cluster, node_name: str) -> None:
    """Cluster-wide checks run once, from the master's test run."""
    if node_name != cluster.master:
        pytest.skip("checked once, from the master")


@pytest.fixture
def connect() -> Any:
    """can_connect(host, address, port) -> (connected, what happened), from `host`."""
    return can_connect


def can_connect(host: Any, address: str, port: int, timeout: float = 3.0) -> tuple[bool, str]:
    """Open a TCP connection from `host`; (connected, what happened)."""
    code = (
        "import socket,sys\n"
        f"try:\n socket.create_connection(({address!r}, {port}), timeout={timeout}).close()\n"
        "except OSError as e:\n print(type(e).__name__, e); sys.exit(1)\n"
        "print('connected')"
    )
    result = host.run("python3 -c %s", code)
    return result.rc == 0, (result.stdout + result.stderr).strip()

