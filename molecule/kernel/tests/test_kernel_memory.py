"""cgroup v2 memory caps at work: a process in openquake.slice, or in the openquake user's
slice, that allocates past the cap is stopped by the cap itself (the slice's memory.events
count the event), and the node lives on. Run on one worker, the last one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from oqcluster.nodetests.expect import expect

FIX = "re-run site.yml --tags cgroup; systemctl show -p MemoryMax openquake.slice"
KEEPER = "oqcluster-memory-probe-keeper"


@pytest.fixture
def last_worker(cluster: Any, node_name: str) -> None:
    if node_name != cluster.remote_workers()[-1]:
        pytest.skip("run on one worker (the last one)")


@contextmanager
def memory_high_lifted(host: Any, slice_name: str) -> Iterator[None]:
    """MemoryHigh (the throttle below the cap) off for the probe, then the unit's own value.

    Without swap, a process between MemoryHigh and MemoryMax is throttled while the kernel
    reclaims page cache, program text included: under the VMs' software CPU it can stay in
    that band for minutes without reaching the cap this test is about."""
    runtime = f"/run/systemd/system.control/{slice_name}.d/50-MemoryHigh.conf"
    lifted = host.run("systemctl set-property --runtime %s MemoryHigh=infinity", slice_name)
    assert lifted.rc == 0, f"cannot lift MemoryHigh of {slice_name}: {lifted.stderr}"
    try:
        yield
    finally:
        host.run("rm -f %s && systemctl daemon-reload", runtime)
        high = host.run("systemctl show -p MemoryHigh --value %s", slice_name).stdout.strip()
        assert high != "infinity", f"MemoryHigh of {slice_name} not restored ({runtime})"


def _events(host: Any, slice_name: str) -> dict[str, int]:
    group = host.run("systemctl show -p ControlGroup --value %s", slice_name).stdout.strip()
    assert group, f"{slice_name} has no control group (not active)"
    text = host.file(f"/sys/fs/cgroup{group}/memory.events").content_string
    return {key: int(value) for key, value in (line.split() for line in text.splitlines())}


@pytest.mark.usefixtures("last_worker")
@pytest.mark.parametrize("kind", ["openquake.slice", "user slice"])
def test_a_process_over_the_cap_is_stopped_and_the_node_lives(
    host: Any, oq: dict[str, Any], kind: str
) -> None:
    slice_name = "openquake.slice" if kind == "openquake.slice" else f"user-{oq['oq_uid']}.slice"
    cap = host.run("systemctl show -p MemoryMax --value %s", slice_name).stdout.strip()
    expect(cap.isdigit(), f"a MemoryMax on {slice_name}", cap, FIX)
    # a slice without processes is removed with its memory.events: keep one in it meanwhile
    keeper = host.run("systemd-run --quiet --unit=%s --slice=%s -p RuntimeMaxSec=900 sleep 900",
                      KEEPER, slice_name)
    assert keeper.rc == 0, f"cannot start a process in {slice_name}: {keeper.stderr}"
    try:
        with memory_high_lifted(host, slice_name):
            _stopped_by_the_cap(host, oq, slice_name, int(cap))
    finally:
        host.run("systemctl stop %s", KEEPER)
    state = host.run("systemctl is-system-running").stdout.strip()
    expect(state in ("running", "degraded") and host.run("true").rc == 0,
           "the node still answers, systemd running", state, "look at journalctl -k (OOM)")


def _stopped_by_the_cap(host: Any, oq: dict[str, Any], slice_name: str, cap: int) -> None:
    before = _events(host, slice_name)
    # touch every page: 16 MiB at a time, up to twice the cap (more than the VM's free RAM
    # would allow only if the cap did not act first)
    chunks = 2 * cap // (16 << 20) + 1
    code = (f"blocks = []\nfor i in range({chunks}):\n"
            " blocks.append(bytearray(b'\\x01') * (16 << 20))\n"
            "print('allocated', len(blocks) * 16, 'MiB: not stopped')")
    run = host.run(
        "timeout 300 systemd-run --quiet --wait --collect --slice=%s --uid=%s "
        "-p Description=oqcluster-memory-probe python3 -c %s",
        slice_name, oq["oq_user"], code,
    )
    after = _events(host, slice_name)
    output = (run.stdout + run.stderr).strip()
    stopped = run.rc != 0 and "not stopped" not in output
    expect(stopped, f"a process allocating {2 * cap >> 20} MiB in {slice_name} is stopped",
           output[-300:] or f"exit {run.rc}", FIX)
    expect(after.get("oom", 0) > before.get("oom", 0)
           and after.get("oom_kill", 0) > before.get("oom_kill", 0),
           f"the {slice_name} cap ({cap >> 20} MiB) fired: oom and oom_kill counted in "
           "its memory.events", f"before {before}, after {after}", FIX)
