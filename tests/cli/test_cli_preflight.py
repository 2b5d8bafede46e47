"""playbooks/preflight.yml: the same rules as `oqcluster check`, before any host is touched.

The test playbook imports the preflight and then pings every host. The inventories' hosts
are unreachable (see tests/inventories/README.md), so a ping attempt shows as UNREACHABLE:
the good inventory proves the harness sees connection attempts, the bad ones prove the
preflight stops the run before any.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_cases import BAD_INVENTORIES, INVENTORIES, ROOT

PLAYBOOK = Path(__file__).parent / "preflight_then_connect.yml"
pytestmark = pytest.mark.slow  # ten ansible-playbook runs
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def start_preflight(inventory: Path, *options: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    return subprocess.Popen(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(PLAYBOOK), *options],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[int, str]]:
    """(exit code, output) of the test playbook on every test inventory, run concurrently."""
    started = {case: start_preflight(INVENTORIES / case) for case in [*BAD_INVENTORIES, "good"]}
    # --limit to a host without the problem: the preflight still checks the whole inventory
    started["limited"] = start_preflight(INVENTORIES / "zero-cores", "--limit", "master1")
    outputs = {case: process.communicate(timeout=180)[0] for case, process in started.items()}
    return {case: (process.returncode, outputs[case]) for case, process in started.items()}


@pytest.mark.parametrize("case", sorted(BAD_INVENTORIES))
def test_preflight_fails_naming_the_problem_without_connecting(
    case: str, runs: dict[str, tuple[int, str]]
) -> None:
    host, variable, words = BAD_INVENTORIES[case]

    returncode, output = runs[case]

    assert returncode != 0, output
    assert f"inventory: {host}: {variable}: " in output
    assert words in output
    assert "1 inventory problem(s)" in output
    assert "UNREACHABLE" not in output
    assert "Connect to every host" not in output


def test_preflight_passes_a_good_inventory_and_the_next_play_connects(
    runs: dict[str, tuple[int, str]],
) -> None:
    _, output = runs["good"]

    assert "inventory OK: 1 master, 3 worker(s)" in output, output
    assert "Connect to every host" in output
    assert "UNREACHABLE" in output


def test_preflight_is_not_skipped_by_a_limit(runs: dict[str, tuple[int, str]]) -> None:
    returncode, output = runs["limited"]

    assert returncode != 0, output
    assert "inventory: worker1: oq_cores: " in output
    assert "UNREACHABLE" not in output


@pytest.fixture
def generated_secret_inventory(tmp_path: Path) -> Path:
    """The good inventory with oq_authkey left to the role default (a generated secret)."""
    inventory = tmp_path / "inventory"
    shutil.copytree(INVENTORIES / "good", inventory)
    group_vars = inventory / "group_vars" / "all.yml"
    group_vars.write_text(group_vars.read_text().replace("oq_authkey:", "unused_key:"))
    return inventory


@pytest.mark.parametrize("credentials_dir", ["absent", "empty"])
@pytest.mark.parametrize("options", [(), ("--tags", "config")], ids=["all", "tags"])
def test_a_missing_secret_makes_the_preflight_ask_the_master_and_creates_nothing(
    generated_secret_inventory: Path, credentials_dir: str, options: tuple[str, ...]
) -> None:
    """Without credentials/oq_authkey.txt the preflight must first ask the master (read-only)
    whether the cluster already has a secret, also in a --tags run. The master is unreachable
    here, so the run stops at that question: before the next play, and without generating a
    secret (an empty credentials/ directory stays as it was)."""
    credentials = generated_secret_inventory / "credentials"
    if credentials_dir == "empty":
        credentials.mkdir()

    process = start_preflight(generated_secret_inventory, *options)
    output = process.communicate(timeout=180)[0]

    assert process.returncode != 0, output
    assert "inventory OK" in output
    assert "Check whether the master already has a cluster secret" in output
    assert "UNREACHABLE" in output
    assert "TASK [Ping]" not in output
    if credentials_dir == "empty":
        assert list(credentials.iterdir()) == []
    else:
        assert not credentials.exists()


def test_a_secret_on_this_control_node_needs_no_question_to_the_master(
    generated_secret_inventory: Path,
) -> None:
    credentials = generated_secret_inventory / "credentials"
    credentials.mkdir()
    (credentials / "oq_authkey.txt").write_text("kept-secret-0123456789abcdefghijklmnopqrst\n")

    process = start_preflight(generated_secret_inventory)
    output = process.communicate(timeout=180)[0]

    assert "inventory OK" in output, output
    check = output.split("Check whether the master already has a cluster secret")[1]
    assert "skipping: [master1]" in check.split("TASK")[0], output
    assert "TASK [Ping]" in output
