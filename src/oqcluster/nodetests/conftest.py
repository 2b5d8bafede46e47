"""Fixtures of the node tests: the node's expected settings, from the inventory.

Run the modules against any inventory, as `oqcluster verify` and Molecule's verifier do:
    pytest src/oqcluster/nodetests --hosts=ansible://all --ansible-inventory=INV
(without --ansible-inventory, Molecule's $MOLECULE_INVENTORY_FILE is used).

Markers: `cluster` (given here to every test of a test_cluster_* module: cross-node, run
once from the master; verify runs them in a pytest run of their own, `-m cluster`) and
`writes` (leaves a trace on the nodes for a moment: under `verify --read-only`, READ_ONLY_ENV,
it is not checked). SESSIONS_ENV carries verify's --sessions-per-host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from oqcluster.nodetests.cluster import (
    READ_ONLY_ENV,
    SESSIONS_ENV,
    Cluster,
    can_connect,
    inventory_path,
)
from oqcluster.nodetests.expect import expect_each, message, not_checked
from oqcluster.project import find_project
from oqcluster.render import SecretMissing, render_existing_config
from oqcluster.rules import MASTER_GROUP, WORKERS_GROUP
from oqcluster.verify.context import Context
from oqcluster.verify.remote import SESSIONS_PER_HOST, limit_sessions
from oqcluster.verify.results import CheckResult

CLUSTER_MODULES = "test_cluster_"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: a cross-node check, run once from the master")
    config.addinivalue_line("markers", "writes: leaves a trace on the nodes (verify "
                            "--read-only leaves it out)")
    limit_sessions(int(os.environ.get(SESSIONS_ENV) or SESSIONS_PER_HOST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.path)).name.startswith(CLUSTER_MODULES):
            item.add_marker(pytest.mark.cluster)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("writes") and os.environ.get(READ_ONLY_ENV):
        not_checked("--read-only: this check writes on the nodes",
                    "run verify without --read-only", security=False)


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
def bundled_engine(cluster: Cluster) -> None:
    """The bundled engine's pools run between calculations and answer `oqz workers status`;
    the real engine starts its pools for each calculation (its smoke run proves they start)."""
    if cluster.settings(cluster.master)["oq_engine_flavor"] != "oqzmq":
        pytest.skip("only with the bundled engine (oq_engine_flavor: oqzmq)")


@pytest.fixture
def across(cluster: Cluster) -> Context:
    """The master and the probed workers as thread-safe Nodes, for the cross-node checks."""
    return cluster.context()


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[Iterable[CheckResult]], None]:
    """report(results): one outcome per (node, check) for verify, the test fails on any
    failure (expect.expect_each)."""
    return lambda results: expect_each(request.node, results)


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
