"""No swap, and cgroup memory caps on the engine's services and the openquake user."""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.nodetests.expect import expect


def test_no_swap_is_active(host: Any, oq: dict[str, Any]) -> None:
    if not oq.get("oq_swap_off", True):
        pytest.skip("oq_swap_off is false: swap is left as it is")
    active = host.file("/proc/swaps").content_string.strip().splitlines()[1:]
    expect(not active, "no active swap", "; ".join(active),
           "swapoff -a, and re-run site.yml --tags swap so it stays off after a reboot")


def test_no_swap_line_is_enabled_in_fstab(host: Any, oq: dict[str, Any]) -> None:
    if not oq.get("oq_swap_off", True):
        pytest.skip("oq_swap_off is false: swap is left as it is")
    fstab = host.file("/etc/fstab")
    lines = fstab.content_string.splitlines() if fstab.exists else []
    enabled = [line for line in lines if _is_swap_entry(line)]
    expect(not enabled, "no enabled swap entry in /etc/fstab", "; ".join(enabled),
           "re-run site.yml --tags swap (comments the swap lines out)")


def _is_swap_entry(line: str) -> bool:
    fields = line.split()
    return len(fields) >= 3 and not fields[0].startswith("#") and fields[2] == "swap"


@pytest.mark.parametrize("unit", ["openquake.slice", "user-{uid}.slice"],
                         ids=["openquake.slice", "the openquake user's slice"])
def test_slice_has_a_memory_cap(host: Any, oq: dict[str, Any], unit: str) -> None:
    name = unit.format(uid=oq["oq_uid"])
    value = host.run("systemctl show -p MemoryMax --value %s", name).stdout.strip()
    expect(value.isdigit(), f"{name} MemoryMax set ({oq['oq_memory_max_percent']}% of RAM)",
           f"MemoryMax={value or 'unknown'}",
           "re-run site.yml --tags cgroup; systemctl daemon-reload")
