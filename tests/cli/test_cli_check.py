"""`oqcluster check` on the test inventories: every bad case named, good ones clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_cases import BAD_INVENTORIES, INVENTORIES, two_nodes

from oqcluster.cli import main


@pytest.mark.parametrize("case", sorted(BAD_INVENTORIES))
def test_check_names_the_single_problem_of_each_bad_inventory(
    case: str, project_root: object, capsys: pytest.CaptureFixture[str]
) -> None:
    host, variable, words = BAD_INVENTORIES[case]

    code = main(["check", "-i", str(INVENTORIES / case), "--json"])

    problems = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(p["host"], p["variable"]) for p in problems] == [(host, variable)]
    assert words in problems[0]["message"]
    assert problems[0]["fix"]


@pytest.mark.parametrize("case", ["good", "good-ini"])
def test_check_passes_a_valid_inventory_in_any_format(
    case: str, project_root: object, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check", "-i", str(INVENTORIES / case)])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 master, 3 worker(s), no problems" in out


def test_check_prints_host_variable_and_fix_for_humans(
    project_root: object, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check", "-i", str(INVENTORIES / "zero-cores")])

    out = capsys.readouterr().out
    assert code == 1
    assert "worker1 · oq_cores" in out
    assert "fix: set oq_cores" in out
    assert "1 problem(s)" in out


def test_check_reports_a_missing_inventory_as_a_usage_error(
    project_root: object, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check", "-i", "inventories/does-not-exist"])

    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_check_does_not_generate_the_secret(
    project_root: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = two_nodes(tmp_path)

    code = main(["check", "-i", str(inventory)])

    assert code == 0, capsys.readouterr().out
    assert not (inventory.parent / "credentials").exists()


@pytest.mark.slow
def test_check_reads_vaulted_values_with_the_vault_password() -> None:
    # a subprocess: Ansible's vault secrets are set once per process, as in its own CLIs
    inventory = INVENTORIES / "vaulted"
    command = [str(Path(sys.executable).parent / "oqcluster"), "check", "-i", str(inventory)]

    locked = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    unlocked = subprocess.run(
        [*command, "--vault-password-file", str(inventory / "vault-password.txt")],
        capture_output=True, text=True, check=False, timeout=60,
    )

    assert locked.returncode == 1
    assert "m1, w1 · oq_authkey" in locked.stdout
    assert "--vault-password-file" in locked.stdout
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr


def test_check_applies_every_roles_argument_specs_to_inventory_values(
    project_root: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = two_nodes(tmp_path, "    oq_firewall_backend: iptables\n    oq_uid: '1909'\n")

    code = main(["check", "-i", str(inventory), "--json"])

    problems = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(p["host"], p["variable"]) for p in problems] == [("all hosts", "oq_firewall_backend")]
    assert "spec: roles/oq_firewall/meta/argument_specs.yml" in problems[0]["message"]
