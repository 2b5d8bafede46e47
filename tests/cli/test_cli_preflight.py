"""playbooks/preflight.yml: the same rules as `oqcluster check`, before any host is touched.

The test playbook imports the preflight and then pings every host. The inventories' hosts
are unreachable (see tests/inventories/README.md), so a ping attempt shows as UNREACHABLE:
the good inventory proves the harness sees connection attempts, the bad ones prove the
preflight stops the run before any.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_cases import BAD_INVENTORIES, INVENTORIES, ROOT

PLAYBOOK = Path(__file__).parent / "preflight_then_connect.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def run_preflight(inventory: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(PLAYBOOK)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("case", sorted(BAD_INVENTORIES))
def test_preflight_fails_naming_the_problem_without_connecting(case: str) -> None:
    host, variable, words = BAD_INVENTORIES[case]

    run = run_preflight(INVENTORIES / case)

    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert f"inventory: {host}: {variable}: " in output
    assert words in output
    assert "1 inventory problem(s)" in output
    assert "UNREACHABLE" not in output
    assert "Connect to every host" not in output


def test_preflight_passes_a_good_inventory_and_the_next_play_connects() -> None:
    run = run_preflight(INVENTORIES / "good")

    output = run.stdout + run.stderr
    assert "inventory OK: 1 master, 3 worker(s)" in output, output
    assert "Connect to every host" in output
    assert "UNREACHABLE" in output
