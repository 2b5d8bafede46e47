"""What the checks need to know about the cluster: its nodes and its settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oqcluster.inventory import Inventory
from oqcluster.model import MASTER_GROUP, WORKERS_GROUP, ClusterModel
from oqcluster.verify.remote import Node


@dataclass
class Context:
    inventory_path: str
    inventory: Inventory
    master: Node
    workers: list[Node]
    settings: dict[str, Any]  # the master's evaluated oq_* values (cluster-wide ones agree)
    selected: frozenset[str]  # hosts matching --limit: their node checks run
    model: ClusterModel  # the derived facts (addresses, allow-lists), as the roles read them

    @property
    def nodes(self) -> list[Node]:
        """Every node once, the master first."""
        seen = {self.master.name: self.master}
        for worker in self.workers:
            seen.setdefault(worker.name, worker)
        return list(seen.values())

    def setting(self, name: str) -> Any:
        return self.settings[name]


def build_context(inventory_path: str, inventory: Inventory, limit: str | None) -> Context:
    """Nodes of the master and workers groups (workers filtered by --limit)."""
    if Path(inventory_path).exists():  # the node tests run from the project directory
        inventory_path = str(Path(inventory_path).resolve())
    cluster, model = inventory.cluster_data(), inventory.model()
    master_name = model.master
    allowed = _limited(inventory, limit)
    nodes: dict[str, Node] = {}
    for name in cluster.cluster_hosts():
        settings = cluster.hosts[name]
        nodes[name] = Node(
            name=name,
            address=model.addresses[name],
            inventory=inventory_path,
            python=_python(inventory.raw_vars(name)),
            settings=dict(settings.values),
            roles=frozenset(
                group
                for group, members in ((MASTER_GROUP, cluster.masters),
                                       (WORKERS_GROUP, cluster.workers))
                if name in members
            ),
        )
    workers = [nodes[name] for name in cluster.workers if name in allowed]
    values = dict(cluster.hosts[master_name].values)
    return Context(inventory_path, inventory, nodes[master_name], workers, values,
                   frozenset(allowed), model)


def _python(host_vars: dict[str, Any]) -> str:
    interpreter = host_vars.get("ansible_python_interpreter")
    if isinstance(interpreter, str) and interpreter and "{" not in interpreter:
        return interpreter
    return "python3"


def _limited(inventory: Inventory, limit: str | None) -> set[str]:
    if not limit:
        return set(inventory.host_names())
    return {host.name for host in inventory.manager.list_hosts(limit)}
