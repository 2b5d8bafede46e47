"""Fixtures of the node tests: the node's expected settings, from the inventory.

Run the modules against any inventory, as `oqcluster verify` and Molecule's verifier do:
    pytest src/oqcluster/nodetests --hosts=ansible://all --ansible-inventory=INV
(without --ansible-inventory, Molecule's $MOLECULE_INVENTORY_FILE is used).
"""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.nodetests.cluster import Cluster, can_connect, inventory_path
from oqcluster.nodetests.expect import message
from oqcluster.project import find_project
from oqcluster.render import SecretMissing, render_existing_config
from oqcluster.rules import MASTER_GROUP, WORKERS_GROUP


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Cluster:
    return Cluster(inventory_path(pytestconfig))


@pytest.fixture
def node_name(host: Any) -> str:
    return str(host.backend.get_hostname())


@pytest.fixture
def oq(cluster: Cluster, node_name: str) -> dict[str, Any]:
    """The node's evaluated oq_* settings (inventory over role defaults)."""
    if node_name not in cluster.data.hosts:
        pytest.skip(f"{node_name} is neither in group master nor in group workers")
    return cluster.settings(node_name)


@pytest.fixture
def is_master(cluster: Cluster, node_name: str) -> bool:
    return node_name == cluster.master


@pytest.fixture
def on_master(cluster: Cluster, node_name: str) -> None:
    """Cluster-wide checks run once, from the master's test run."""
    if node_name != cluster.master:
        pytest.skip("checked once, from the master")


@pytest.fixture
def master_only(cluster: Cluster, node_name: str) -> None:
    if node_name != cluster.master:
        pytest.skip(f"only on the host of group {MASTER_GROUP}")


@pytest.fixture
def worker_only(cluster: Cluster, node_name: str) -> None:
    if node_name not in cluster.remote_workers():
        pytest.skip(f"only on hosts of group {WORKERS_GROUP} that are not the master")


@pytest.fixture
def connect() -> Any:
    """can_connect(host, address, port) -> (connected, what happened), run from `host`."""
    return can_connect


@pytest.fixture
def expected_config(cluster: Cluster, node_name: str) -> str:
    """openquake.cfg as `oqcluster render` (and the role) renders it for this node."""
    try:
        return render_existing_config(cluster.inventory, node_name, find_project().template)
    except SecretMissing as error:
        created = ", ".join(str(path) for path in error.created)
        pytest.fail(message(f"the cluster secret {created}", "no such file on this control node",
                            "copy it from the control node that ran site.yml"))
