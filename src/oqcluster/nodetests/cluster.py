"""The cluster as the node tests see it: the inventory's hosts, addresses and settings.

Settings come from the inventory with the oq role defaults underneath
(oqcluster.inventory), never from constants.

`oqcluster verify` tells the cross-node tests which workers to probe (the ones it reached,
within its --limit) in WORKERS_ENV, and its --read-only and --sessions-per-host; run by
hand or by Molecule, every worker is probed and nothing is left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TYPE_CHECKING, Any

import pytest

from oqcluster.inventory import Inventory
from oqcluster.model import ClusterData, ClusterModel
from oqcluster.project import find_project

if TYPE_CHECKING:
    from oqcluster.verify.context import Context
    from oqcluster.verify.remote import Node
    from oqcluster.verify.results import CheckResult

WORKERS_ENV = "OQCLUSTER_WORKERS"  # comma-separated: the workers the cross-node tests probe
READ_ONLY_ENV = "OQCLUSTER_READ_ONLY"  # set: tests marked `writes` are not checked
SESSIONS_ENV = "OQCLUSTER_SESSIONS_PER_HOST"  # verify's --sessions-per-host
CONFIG_FILE = "openquake.cfg"
PARALLEL_WORKERS = 16  # workers probed at once per check (Node caps the sessions per host)


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
        self.workers = list(self.data.workers)  # every worker of the inventory
        self._hosts: dict[str, Any] = {}
        self._context: Context | None = None

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

    def probed_workers(self) -> list[str]:
        """The workers the cross-node tests probe: all of them, or those verify names."""
        wanted = os.environ.get(WORKERS_ENV)
        if wanted is None:
            return list(self.workers)
        names = set(wanted.split(","))
        return [name for name in self.workers if name in names]

    def remote_workers(self) -> list[str]:
        """Probed workers that are not also the master (they use the exports, not local
        dirs)."""
        return [name for name in self.probed_workers() if name != self.master]

    def context(self) -> Context:
        """The master and the probed workers as verify's Nodes: thread-safe commands (run,
        run_as, probe) that wait while their host runs its share of sessions."""
        from oqcluster.verify.context import build_context

        if self._context is None:
            ctx = build_context(self.path, self.inventory, None)
            probed = set(self.probed_workers())
            ctx.workers = [worker for worker in ctx.workers if worker.name in probed]
            self._context = ctx
        return self._context


def config_file(node: Node) -> str:
    """The node's openquake.cfg, from its evaluated settings."""
    return f"{node.settings.get('oq_config_dir', '/etc/openquake')}/{CONFIG_FILE}"


def per_worker(
    ctx: Context, check: Callable[[Node], Iterable[CheckResult]], skip_master: bool = False
) -> Iterator[CheckResult]:
    """`check` on every worker at once (they are independent), results in worker order."""
    workers = [w for w in ctx.workers if not (skip_master and w.name == ctx.master.name)]
    if not workers:
        return
    with ThreadPoolExecutor(max_workers=min(PARALLEL_WORKERS, len(workers))) as pool:
        for results in pool.map(lambda worker: list(check(worker)), workers):
            yield from results


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
