"""The test inventories and what `check` and the preflight must say about each."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = ROOT / "tests" / "inventories"


def two_nodes(directory: Path, all_vars: str = "") -> Path:
    """`directory`/hosts.yml: master m1 (192.0.2.1), worker w1 (192.0.2.2), no secret;
    `all_vars`: YAML lines under all: vars: (indented by four spaces)."""
    inventory = directory / "hosts.yml"
    inventory.write_text(
        "all:\n" + (f"  vars:\n{all_vars}" if all_vars else "")
        + "  children:\n    master:\n      hosts:\n        m1: {oq_address: 192.0.2.1}\n"
        "    workers:\n      hosts:\n        w1: {oq_address: 192.0.2.2}\n"
    )
    return inventory

# Each bad inventory and the (host, variable, words) its single problem must name.
BAD_INVENTORIES = {
    "two-masters": ("master1, master2", "group master", "exactly one host"),
    "worker-without-address": ("worker2", "oq_address", "has no address"),
    "relative-shared-dir": ("all hosts", "oq_shared_dir", "absolute path"),
    "receiver-range-overlaps-1908": ("all hosts", "oq_receiver_port_first", "contains"),
    "zero-cores": ("worker1", "oq_cores", "got 0"),
    "unknown-host-in-host-cores": ("worker2", "oq_address", "does not resolve"),
    "duplicate-worker-addresses": ("worker1, worker2", "oq_address", "share the address"),
    "unresolvable-master": ("master1", "oq_address", "does not resolve"),
    "service-account-as-cluster-user": ("all hosts", "oq_users_list", "service account"),
}

