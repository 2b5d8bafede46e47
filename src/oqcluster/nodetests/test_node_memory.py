"""No swap, and cgroup memory caps on the engine's services and the openquake user."""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.nodetests.expect import as_root, expect


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


def test_swap_stays_off_after_a_reboot(host: Any, oq: dict[str, Any]) -> None:
    if not oq.get("oq_swap_off", True):
        pytest.skip("oq_swap_off is false: swap is left as it is")
    masked = host.run("systemctl is-enabled swap.target").stdout.strip()
    expect(masked == "masked", "swap.target masked (no swap unit starts at boot)", masked,
           "re-run site.yml --tags swap")
    sysctl = host.file("/etc/sysctl.d/90-openquake.conf")
    expect(sysctl.exists and "vm.swappiness" in sysctl.content_string,
           "vm.swappiness in /etc/sysctl.d/90-openquake.conf", "absent",
           "re-run site.yml --tags swap")


def _is_swap_entry(line: str) -> bool:
    fields = line.split()
    return len(fields) >= 3 and not fields[0].startswith("#") and fields[2] == "swap"


@pytest.mark.parametrize("unit", ["openquake.slice", "user-{uid}.slice"],
                         ids=["openquake.slice", "the openquake user's slice"])
def test_slice_has_a_memory_cap(host: Any, oq: dict[str, Any], unit: str) -> None:
    """The caps systemd holds are the inventory's shares of this node's RAM."""
    name = unit.format(uid=oq["oq_uid"])
    mem_total = _mem_total(host)
    for setting, percent in (("MemoryMax", oq["oq_memory_max_percent"]),
                             ("MemoryHigh", oq["oq_memory_high_percent"])):
        value = host.run("systemctl show -p %s --value %s", setting, name).stdout.strip()
        share = 100 * int(value) / mem_total if value.isdigit() else None
        expect(share is not None and abs(share - percent) < 1.0,
               f"{name} {setting} = {percent}% of RAM (the inventory's value)",
               f"{setting}={value or 'unknown'}"
               + (f" = {share:.1f}% of {mem_total} bytes" if share is not None else ""),
               "re-run site.yml --tags cgroup; systemctl daemon-reload")


def _mem_total(host: Any) -> int:
    meminfo = host.file("/proc/meminfo").content_string.splitlines()
    return 1024 * int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal:")))


def test_openquake_slice_memory_cap_is_in_the_kernel(host: Any, oq: dict[str, Any]) -> None:
    """The cap systemd was given is the one the kernel enforces (cgroupfs), as a share of RAM.

    A slice has a cgroup only while something runs in it: on a worker just after a boot
    nothing may, so the (empty) slice is started to have its cgroup to read."""
    if host.run("systemctl is-active openquake.slice").stdout.strip() != "active":
        with as_root(host):
            started = host.run("systemctl start openquake.slice")
        expect(started.rc == 0, "openquake.slice starts", started.stderr.strip() or "failed",
               "re-run site.yml --tags cgroup; systemctl status openquake.slice")
    group = host.run("systemctl show -p ControlGroup --value openquake.slice").stdout.strip()
    path = _memory_limit_file(host, group)
    limit = host.file(path)
    expect(limit.exists, path, "missing", "enable the cgroup memory controller (kernel command "
           "line cgroup_enable=memory) and reboot")
    in_kernel = int(limit.content_string.strip())
    mem_total = _mem_total(host)
    share = 100 * in_kernel / mem_total
    expect(abs(share - oq["oq_memory_max_percent"]) < 1.0,
           f"memory cap {oq['oq_memory_max_percent']}% of RAM in cgroupfs",
           f"{in_kernel} bytes = {share:.1f}% in {path}", "re-run site.yml --tags cgroup")


def _memory_limit_file(host: Any, control_group: str) -> str:
    """The cgroupfs file of a systemd control group's hard memory limit: the memory
    controller is on its own v1 hierarchy (legacy, hybrid) or in the unified one."""
    lines = host.file("/proc/self/cgroup").content_string.splitlines()
    if any(line.split(":")[1] == "memory" for line in lines):
        return f"/sys/fs/cgroup/memory{control_group}/memory.limit_in_bytes"
    return f"/sys/fs/cgroup{control_group}/memory.max"
