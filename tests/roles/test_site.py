"""site.yml as a whole: it parses, and a bad inventory stops it before any host is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rolefacts import ROOT

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
pytestmark = pytest.mark.slow  # a few ansible-playbook runs


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    return subprocess.run([str(ANSIBLE_PLAYBOOK), *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=180, check=False)


@pytest.mark.parametrize("inventory", ["inventories/example", "inventories/local"])
def test_site_parses_with_the_shipped_inventories(inventory: str) -> None:
    result = run("site.yml", "-i", inventory, "--syntax-check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_site_lists_every_tag_of_the_issue() -> None:
    result = run("site.yml", "-i", "inventories/example", "--list-tags")
    assert result.returncode == 0, result.stderr
    tags = set(result.stdout.replace(",", " ").replace("[", " ").replace("]", " ").split())
    wanted = {"nfs", "firewall", "ssh", "engine", "config", "swap", "cgroup", "services"}
    assert wanted <= tags, wanted - tags


@pytest.mark.parametrize(
    ("case", "words"),
    [("two-masters", "master"), ("zero-cores", "oq_cores"),
     ("relative-shared-dir", "oq_shared_dir"),
     ("receiver-range-overlaps-1908", "oq_receiver_port"),
     ("worker-without-address", "worker"),
     ("service-account-as-cluster-user", "oq_users_list")],
)
def test_site_stops_in_preflight_on_a_bad_inventory(case: str, words: str) -> None:
    result = run("site.yml", "-i", f"tests/inventories/{case}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "inventory problem(s)" in output and words in output, output[-2000:]
    assert "Gathering Facts" not in output  # no play after the preflight started
    assert "UNREACHABLE" not in output


def test_a_role_without_the_preflight_stops_first_saying_what_to_do(tmp_path: Path) -> None:
    # a playbook of its own that runs a role without playbooks/preflight.yml: the oq role's
    # first task stops it, naming the missing cluster model and the fix, before any change
    playbook = tmp_path / "alone.yml"
    playbook.write_text(
        "- name: A role alone\n  hosts: workers\n  gather_facts: false\n"
        "  roles: [{role: oq_firewall}]\n"
    )
    env = {"ANSIBLE_ROLES_PATH": str(ROOT / "roles")}
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), str(playbook), "-i", "tests/inventories/good"],
        cwd=ROOT, env={**os.environ, "ANSIBLE_NOCOLOR": "1", **env}, text=True,
        capture_output=True, timeout=180, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Require the cluster model from the preflight" in output, output[-2000:]
    assert "oq_cluster (the cluster model) is not set" in output, output[-2000:]
    assert "playbooks/preflight.yml" in output and "site.yml" in output
    assert "UNREACHABLE" not in output  # it stopped before connecting anywhere
