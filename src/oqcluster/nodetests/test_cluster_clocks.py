"""Every node's clock agrees with the master's, from the master's run: the bundled engine
refuses a message stamped more than MAX_CLOCK_SKEW seconds ahead of the receiver's clock,
and one stamped before a receiver's restart (replay protection, oqzmq.auth), so a worker
whose clock runs ahead loses its results and one behind waits after each restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from oqzmq.auth import MAX_CLOCK_SKEW

from oqcluster.nodetests.cluster import per_worker
from oqcluster.verify.context import Context
from oqcluster.verify.remote import Node
from oqcluster.verify.results import CheckResult, failed, not_checked, passed

# the engine's own tolerance: a larger offset loses results or stalls restarts
LIMIT = MAX_CLOCK_SKEW
SAMPLES = 3
CLOCK_FIX = ("run a time service on every node, synced to the same source (Debian: "
             "apt-get install chrony, or systemctl enable --now systemd-timesyncd), then "
             "check with `chronyc tracking` or `timedatectl timesync-status`")


def clock_offset(node: Node) -> tuple[float, float] | str:
    """(the node's clock minus this machine's, the uncertainty of that) from the sample with
    the shortest round trip, or why the clock could not be read."""
    best: tuple[float, float] | None = None
    for _ in range(SAMPLES):
        before = time.time()
        out = node.run("date +%s.%N")
        after = time.time()
        try:
            remote = float(out.stdout.strip())
        except ValueError:
            return out.text or f"date exit code {out.rc}"
        sample = (remote - (before + after) / 2, (after - before) / 2)
        if best is None or sample[1] < best[1]:
            best = sample
    assert best is not None
    return best


def clocks_agree(ctx: Context) -> Iterator[CheckResult]:
    """Each worker's clock is within LIMIT seconds of the master's."""
    master = clock_offset(ctx.master)
    check = f"clock within {LIMIT:g} s of the master's"

    def against_master(worker: Node) -> Iterator[CheckResult]:
        if isinstance(master, str):
            yield failed(worker.name, check, "the master's clock", master, CLOCK_FIX)
            return
        own = clock_offset(worker)
        if isinstance(own, str):
            yield failed(worker.name, check, "its clock (date +%s.%N)", own, CLOCK_FIX)
            return
        offset, uncertainty = own[0] - master[0], own[1] + master[1]
        found = f"{offset:+.3f} s (+/- {uncertainty:.3f} s)"
        if abs(offset) - uncertainty > LIMIT:
            yield failed(worker.name, check, f"at most {LIMIT:g} s apart", found, CLOCK_FIX)
        elif abs(offset) + uncertainty <= LIMIT:
            yield passed(worker.name, check, found)
        else:
            yield not_checked(worker.name, check, f"the round trips were too slow to tell: "
                              f"{found}", "run verify again on a quieter network")

    yield from per_worker(ctx, against_master, skip_master=True)


@pytest.mark.usefixtures("on_master", "bundled_engine")
def test_clocks_agree_with_the_master(across: Context, report: Any) -> None:
    report(clocks_agree(across))
