"""openquake.cfg values that must be equal on every node are equal, from the master's run
(each node's file against the inventory's rendering: test_node_config.py)."""

from __future__ import annotations

import configparser
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from oqcluster.nodetests.cluster import PARALLEL_WORKERS, config_file
from oqcluster.verify.context import Context
from oqcluster.verify.remote import Node
from oqcluster.verify.results import CheckResult, failed, passed

# openquake.cfg values every node must share (section, key).
AGREEING_KEYS = (
    ("distribution", "oq_distribute"),
    ("dbserver", "host"), ("dbserver", "port"), ("dbserver", "receiver_host"),
    ("dbserver", "receiver_ports"), ("dbserver", "authkey"),
    ("zworkers", "host_cores"), ("zworkers", "ctrl_port"),
    ("directory", "shared_dir"),
)


def config_agrees(ctx: Context) -> Iterator[CheckResult]:
    """openquake.cfg values that must be equal on every node are equal.

    The reference for each key is the value most nodes have (the master's on a tie), so a
    single node with a different authkey is named, not every other node.
    """
    nodes = ctx.nodes
    with ThreadPoolExecutor(max_workers=PARALLEL_WORKERS) as pool:
        read = list(pool.map(lambda node: _read_config(node, config_file(node)), nodes))
    configs = dict(zip((node.name for node in nodes), read, strict=True))
    parsed = {name: c for name, c in configs.items() if not isinstance(c, str)}
    reference = _reference_values(parsed, ctx.master.name)
    for node in nodes:
        config, check = configs[node.name], f"{config_file(node)} agrees with the cluster"
        if isinstance(config, str):
            yield failed(node.name, check, "a readable openquake.cfg", config,
                         "re-run site.yml --tags config")
            continue
        differing = [f"[{section}] {key}" for (section, key), value in reference.items()
                     if config.get(section, key, fallback=None) != value]
        if differing:
            yield failed(node.name, check, "the values the other nodes have",
                         "differs in " + ", ".join(differing),
                         "re-render it from the inventory: ansible-playbook site.yml -i INV "
                         f"--tags config --limit {node.name}")
        else:
            yield passed(node.name, check, "same values")


def _reference_values(
    configs: dict[str, configparser.ConfigParser], master: str
) -> dict[tuple[str, str], str | None]:
    reference: dict[tuple[str, str], str | None] = {}
    for section, key in AGREEING_KEYS:
        values = {name: c.get(section, key, fallback=None) for name, c in configs.items()}
        counts = Counter(values.values()).most_common()
        tie = len(counts) > 1 and counts[0][1] == counts[1][1]
        if counts:
            reference[(section, key)] = values.get(master) if tie else counts[0][0]
    return reference


def _read_config(node: Node, path: str) -> configparser.ConfigParser | str:
    out = node.run_as_root("cat %s", path)
    if out.rc != 0:
        return f"cannot read {path}: {out.text}"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(out.stdout)
    except configparser.Error as error:
        return f"{path} does not parse: {error}"
    return parser


@pytest.mark.usefixtures("on_master")
def test_config_agrees_across_the_nodes(across: Context, report: Any) -> None:
    report(config_agrees(across))
