"""What verify says about the faults the break-it test (molecule/default/side_effect.yml)
makes, checked without containers: the fixes it prints and the check names the break-it
playbook expects."""

from __future__ import annotations

import re
from pathlib import Path

from cli_cases import ROOT

from oqcluster import nodetests, verify
from oqcluster.nodetests.test_cluster_workerpools import pool_fix
from oqcluster.verify.nodes import check_name

BREAKIT = ROOT / "molecule" / "shared" / "breakit"


def test_a_pool_port_closed_to_the_master_points_at_the_firewall_and_the_pool() -> None:
    fix = pool_fix("w1", "m1", "openquake", "not running: port 1909 closed (pool not "
                           "running: see its log; or a firewall rejects)")

    assert "--tags firewall" in fix
    assert fix.endswith("on m1 as openquake: oqz workers start")
    stale = pool_fix("w1", "m1", "openquake", "not running: port 1909 is open but the "
                             "pool does not answer authenticated pings")
    assert "old authkey" in stale and "firewall" not in stale


def _node_check_names() -> set[str]:
    names = set()
    for module in Path(nodetests.__file__).parent.glob("test_*.py"):
        for function in re.findall(r"^def (test_\w+)\(", module.read_text(), re.MULTILINE):
            names.add(check_name(function, "h"))
    return names


def test_the_node_checks_the_breakit_test_expects_exist() -> None:
    """A renamed node test must not leave the break-it test waiting for an old name."""
    expected = set()
    for tasks in BREAKIT.glob("break_*.yml"):
        expected |= set(re.findall(r"\(me ~ '([^']+)'\)", tasks.read_text()))
    # the names of cross-node outcomes (and verify's own checks) are written in their code
    cluster_source = "".join(p.read_text() for directory in (nodetests, verify)
                             for p in Path(directory.__file__).parent.glob("*.py"))
    node_checks = _node_check_names()

    assert expected, "no expected check names found in the break-it tasks"
    missing = {
        name for name in expected
        if name not in node_checks and name.split(" (")[0] not in cluster_source
    }
    assert not missing, f"break-it expects checks that verify no longer has: {missing}"
