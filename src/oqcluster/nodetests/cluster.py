"""The cluster as the node tests see it: the inventory's hosts, addresses and settings.

Settings come from the inventory with the oq role defaults underneath
(oqcluster.inventory), never from constants.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import pytest

from oqcluster.inventory import Inventory
from oqcluster.model import ClusterData, ClusterModel
from oqcluster.project import find_project


@cache
def load(path: str) -> tuple[Inventory, ClusterData, ClusterModel]:
    inventory = Inventory([path], find_project().defaults)
    return inventory, inventory.cluster_data(), inventory.model()


def inventory_path(config: pytest.Config) -> str:
    """--ansible-inventory, else Molecule's MOLECULE_INVENTORY_FILE."""
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
        self.inventory, self.data, self.model = load(path)
        self.master = self.data.masters[0]
        self.workers = list(self.data.workers)
        self._hosts: dict[str, Any] = {}

    def settings(self, name: str) -> dict[str, Any]:
        return dict(self.data.hosts[name].values)

    def address(self, name: str) -> str:
        return self.model.addresses[name]

    def var(self, name: str, variable: str, default: Any = None) -> Any:
        """A variable of any role as the inventory sets it (role defaults are not applied)."""
        return self.inventory.raw_vars(name).get(variable, default)

    def node(self, name: str) -> Any:
        """A testinfra host for another node (cluster-wide checks)."""
        import testinfra

        if name not in self._hosts:
            self._hosts[name] = testinfra.get_host(f"ansible://{name}",
                                                   ansible_inventory=self.path)
        return self._hosts[name]

    def remote_workers(self) -> list[str]:
        """Workers that are not also the master (they use the exports, not local dirs)."""
        return [name for name in self.workers if name != self.master]


def can_connect(host: Any, address: str, port: int, timeout: float = 3.0) -> tuple[bool, str]:
    """Open a TCP connection from `host` to address:port; (connected, what happened)."""
    code = (
        "import socket,sys\n"
        f"try:\n socket.create_connection(({address!r}, {port}), timeout={timeout}).close()\n"
        "except OSError as e:\n print(type(e).__name__, e); sys.exit(1)\n"
        "print('connected')"
    )
    result = host.run("python3 -c %s", code)
    return result.rc == 0, (result.stdout + result.stderr).strip()
