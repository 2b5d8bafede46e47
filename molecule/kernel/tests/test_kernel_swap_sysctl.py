"""Swap and sysctls on a real kernel: the swap file that was active before site.yml is off
and stays off after a reboot; vm.swappiness is live in /proc/sys, not only in a file."""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.nodetests.expect import expect

SWAP_FILE = "/swapfile"  # made active by molecule/kernel/prepare.yml


@pytest.fixture
def swap_off(oq: dict[str, Any]) -> None:
    if not oq["oq_swap_off"]:
        pytest.skip("oq_swap_off is false")


@pytest.mark.usefixtures("swap_off")
def test_the_prepared_swap_file_is_off_and_disabled_in_fstab(host: Any) -> None:
    expect(host.file(SWAP_FILE).exists, f"{SWAP_FILE} (made by prepare.yml) still on disk",
           "missing", "run molecule prepare: the check needs the swap file")
    active = host.file("/proc/swaps").content_string.strip().splitlines()[1:]
    expect(not any(line.split()[0] == SWAP_FILE for line in active),
           f"{SWAP_FILE} not in /proc/swaps", "; ".join(active), "re-run site.yml --tags swap")
    entries = [line for line in host.file("/etc/fstab").content_string.splitlines()
               if SWAP_FILE in line]
    expect(bool(entries) and all(line.lstrip().startswith("#") for line in entries),
           f"the {SWAP_FILE} line of /etc/fstab commented out", entries or "no line",
           "re-run site.yml --tags swap")
    unit = host.run("systemctl is-enabled swapfile.swap").stdout.strip()
    expect(unit == "masked", "swapfile.swap masked", unit or "unknown",
           "re-run site.yml --tags swap")


@pytest.mark.usefixtures("swap_off")
def test_swappiness_is_live_in_the_kernel(host: Any) -> None:
    sysctl = host.file("/etc/sysctl.d/90-openquake.conf").content_string
    wanted = next((line.split("=", 1)[1].strip() for line in sysctl.splitlines()
                   if line.split("=", 1)[0].strip() == "vm.swappiness"), None)
    live = host.file("/proc/sys/vm/swappiness").content_string.strip()
    expect(wanted is not None and live == wanted,
           f"vm.swappiness {wanted} in /proc/sys (as in /etc/sysctl.d/90-openquake.conf)", live,
           "sysctl --system; re-run site.yml --tags swap")


def test_cgroup_v2_is_the_only_hierarchy(host: Any) -> None:
    fstype = host.run("stat -fc %T /sys/fs/cgroup").stdout.strip()
    expect(fstype == "cgroup2fs", "cgroup v2 (unified) mounted on /sys/fs/cgroup", fstype,
           "boot with systemd.unified_cgroup_hierarchy=1")
    controllers = host.file("/sys/fs/cgroup/cgroup.controllers").content_string.split()
    expect("memory" in controllers, "the memory controller enabled", " ".join(controllers),
           "boot without cgroup_disable=memory")
