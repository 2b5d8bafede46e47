"""Fixtures of the node tests: the host's expected settings, from the inventory."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from oqcluster.inventory import Inventory
from oqcluster.nodetests.expect import message
from oqcluster.project import find_project
from oqcluster.render import SecretMissing, render_existing_config
from oqcluster.rules import MASTER_GROUP, WORKERS_GROUP, ClusterData


@cache
def _inventory(path: str) -> tuple[Inventory, ClusterData]:
    inventory = Inventory([path], find_project().defaults)
    return inventory, inventory.cluster_data()


@pytest.fixture
def node_name(host: Any) -> str:
    return str(host.backend.get_hostname())


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> tuple[Inventory, ClusterData]:
    path = request.config.getoption("ansible_inventory")
    if not path:
        pytest.fail("run the node tests with --ansible-inventory=INV --hosts=ansible://...")
    return _inventory(str(path))


@pytest.fixture
def oq(cluster: tuple[Inventory, ClusterData], node_name: str) -> dict[str, Any]:
    """The node's evaluated oq_* settings (inventory over role defaults)."""
    data = cluster[1]
    if node_name not in data.hosts:
        pytest.skip(f"{node_name} is neither in group master nor in group workers")
    return dict(data.hosts[node_name].values)


@pytest.fixture
def is_master(cluster: tuple[Inventory, ClusterData], node_name: str) -> bool:
    return node_name in cluster[1].masters


@pytest.fixture
def is_worker(cluster: tuple[Inventory, ClusterData], node_name: str) -> bool:
    return node_name in cluster[1].workers


@pytest.fixture
def master_only(is_master: bool) -> None:
    if not is_master:
        pytest.skip(f"only on the host of group {MASTER_GROUP}")


@pytest.fixture
def worker_only(is_master: bool, is_worker: bool) -> None:
    if is_master or not is_worker:
        pytest.skip(f"only on hosts of group {WORKERS_GROUP} that are not the master")


@pytest.fixture
def expected_config(cluster: tuple[Inventory, ClusterData], node_name: str) -> str:
    """openquake.cfg as `oqcluster render` (and the role) renders it for this node."""
    try:
        return render_existing_config(cluster[0], node_name, find_project().template)
    except SecretMissing as error:
        created = ", ".join(str(path) for path in error.created)
        pytest.fail(message(f"the cluster secret {created}", "no such file on this control node",
                            "copy it from the control node that ran site.yml"))
