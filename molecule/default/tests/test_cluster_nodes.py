"""Every node: the openquake account, openquake.cfg, swap off, cgroup memory caps."""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.nodetests.expect import expect
from oqcluster.project import find_project
from oqcluster.render import render_config


def test_openquake_account_has_the_fixed_ids(host: Any, oq: dict[str, Any]) -> None:
    user, group = host.user(oq["oq_user"]), host.group(oq["oq_group"])
    expect(group.exists and group.gid == oq["oq_gid"], f"group {oq['oq_group']} gid {oq['oq_gid']}",
           f"gid {group.gid if group.exists else 'none'}", "re-run site.yml --tags config")
    expect(user.exists and user.uid == oq["oq_uid"], f"user {oq['oq_user']} uid {oq['oq_uid']}",
           f"uid {user.uid if user.exists else 'none'}", "re-run site.yml --tags config")
    expect(user.group == oq["oq_group"], f"primary group {oq['oq_group']}", user.group,
           "re-run site.yml --tags config")


def test_config_file_is_private_to_the_openquake_group(host: Any, oq: dict[str, Any]) -> None:
    cfg = host.file(f"{oq['oq_config_dir']}/openquake.cfg")
    found = f"{cfg.user}:{cfg.group} {cfg.mode:04o}" if cfg.exists else "missing"
    wanted = f"root:{oq['oq_group']} 0640"
    expect(found == wanted, wanted, found, "re-run site.yml --tags config")


def test_config_file_is_the_expected_rendering(
    host: Any, oq: dict[str, Any], cluster: Any, node_name: str
) -> None:
    secret = cluster.inventory.missing_secret(node_name)
    if secret is not None:
        pytest.fail(f"the cluster secret {secret} is not on this control node; copy it here")
    wanted = render_config(cluster.inventory, node_name, find_project().template)
    found = host.file(f"{oq['oq_config_dir']}/openquake.cfg").content_string
    expect(found == wanted, "openquake.cfg as `oqcluster render` renders it",
           "a different file", "re-run site.yml --tags config")
    authkey = next(line.split("=", 1)[1].strip() for line in found.splitlines()
                   if line.startswith("authkey"))
    expect(len(authkey) >= 32 and authkey != "changeme", "a generated authkey (>= 32 chars)",
           f"{len(authkey)} characters", "remove oq_authkey from the inventory or set a strong one")


def test_swap_is_off_and_stays_off(host: Any, oq: dict[str, Any]) -> None:
    if not oq["oq_swap_off"]:
        pytest.skip("oq_swap_off is false")
    active = host.file("/proc/swaps").content_string.strip().splitlines()[1:]
    expect(not active, "no active swap", "; ".join(active), "re-run site.yml --tags swap")
    masked = host.run("systemctl is-enabled swap.target").stdout.strip()
    expect(masked == "masked", "swap.target masked", masked, "re-run site.yml --tags swap")
    sysctl = host.file("/etc/sysctl.d/90-openquake.conf")
    expect(sysctl.exists and "vm.swappiness" in sysctl.content_string,
           "vm.swappiness in /etc/sysctl.d/90-openquake.conf", "absent",
           "re-run site.yml --tags swap")


def _memory_limit_file(host: Any, control_group: str) -> str:
    """The cgroupfs file holding the hard memory limit of a systemd control group.

    systemd's ControlGroup is the path under the cgroup mount it sees; the memory
    controller is on its own v1 hierarchy (legacy, hybrid) or in the unified one.
    """
    lines = host.file("/proc/self/cgroup").content_string.splitlines()
    if any(line.split(":")[1] == "memory" for line in lines):
        return f"/sys/fs/cgroup/memory{control_group}/memory.limit_in_bytes"
    return f"/sys/fs/cgroup{control_group}/memory.max"


def test_openquake_slice_memory_cap_is_in_the_kernel(host: Any, oq: dict[str, Any]) -> None:
    active = host.run("systemctl is-active openquake.slice").stdout.strip()
    expect(active == "active", "openquake.slice active", active, "re-run site.yml --tags cgroup")
    cg = host.run("systemctl show -p ControlGroup --value openquake.slice").stdout.strip()
    path = _memory_limit_file(host, cg)
    limit_file = host.file(path)
    expect(limit_file.exists, f"{path}", "missing", "check the cgroup memory controller")
    in_kernel = int(limit_file.content_string.strip())
    mem_total = int(next(line.split()[1] for line in
                         host.file("/proc/meminfo").content_string.splitlines()
                         if line.startswith("MemTotal:"))) * 1024
    share = 100 * in_kernel / mem_total
    expect(abs(share - oq["oq_memory_max_percent"]) < 1.0,
           f"memory cap {oq['oq_memory_max_percent']}% of RAM in cgroupfs",
           f"{in_kernel} bytes = {share:.1f}% in {path}", "re-run site.yml --tags cgroup")


def test_openquake_user_slice_has_the_same_caps(host: Any, oq: dict[str, Any]) -> None:
    name = f"user-{oq['oq_uid']}.slice"
    got = {
        key: host.run("systemctl show -p %s --value %s", key, name).stdout.strip()
        for key in ("MemoryMax", "MemoryHigh")
    }
    ref = {
        key: host.run("systemctl show -p %s --value openquake.slice", key).stdout.strip()
        for key in ("MemoryMax", "MemoryHigh")
    }
    expect(got == ref and got["MemoryMax"].isdigit(), f"{name} capped like openquake.slice {ref}",
           str(got), "re-run site.yml --tags cgroup")
