"""`oqcluster render`: golden files, and the same bytes as the template module writes.

After an intended change of templates/openquake.cfg.j2, regenerate the golden files with
`oqcluster render -i tests/inventories/good --out tests/cli/golden` and review the diff.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cli_cases import INVENTORIES, ROOT, two_nodes

from oqcluster.cli import main

GOLDEN = Path(__file__).parent / "golden"
NODES = ("master1", "worker1", "worker2")
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def render_to(out: Path, *extra: str, inventory: str = "good") -> int:
    return main(["render", "-i", str(INVENTORIES / inventory), "--out", str(out), *extra])


@pytest.mark.parametrize("inventory", ["good", "good-ini"])
def test_render_matches_the_golden_files(
    inventory: str, project_root: object, tmp_path: Path
) -> None:
    assert render_to(tmp_path, inventory=inventory) == 0

    for node in NODES:
        rendered = (tmp_path / node / "openquake.cfg").read_bytes()
        assert rendered == (GOLDEN / node / "openquake.cfg").read_bytes(), node


def test_render_writes_the_secret_readable_by_the_owner_only(
    project_root: object, tmp_path: Path
) -> None:
    assert render_to(tmp_path, "--host", "worker1") == 0

    written = tmp_path / "worker1" / "openquake.cfg"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert not (tmp_path / "worker2").exists()


def test_render_of_one_host_prints_the_bare_file(
    project_root: object, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["render", "-i", str(INVENTORIES / "good"), "--host", "master1"])

    assert code == 0
    assert capsys.readouterr().out == (GOLDEN / "master1" / "openquake.cfg").read_text()


def test_render_refuses_a_bad_inventory_and_writes_nothing(
    project_root: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = render_to(tmp_path / "out", inventory="zero-cores")

    assert code == 1
    assert "worker1 · oq_cores" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_render_rejects_an_unknown_host(
    project_root: object, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["render", "-i", str(INVENTORIES / "good"), "--host", "nosuch"])

    assert code == 2
    assert "--host nosuch: not a master or worker" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["oqzmq", "openquake"])
def test_render_is_byte_identical_to_the_template_module(
    project_root: Path, tmp_path: Path, flavor: str
) -> None:
    """Also proves both read the one generated secret: the inventory sets no oq_authkey."""
    inventory = tmp_path / "inventory"
    shutil.copytree(INVENTORIES / "good", inventory)
    group_vars = inventory / "group_vars" / "all.yml"
    group_vars.write_text(group_vars.read_text().replace("oq_authkey:", "unused_key:")
                          + f"\noq_engine_flavor: {flavor}\n")
    by_ansible, by_cli = tmp_path / "ansible", tmp_path / "cli"
    run = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory),
         str(Path(__file__).parent / "template_like_the_role.yml"), "-e", f"out_dir={by_ansible}",
         # the preflight looks for the master's secret (a new one is generated here): locally
         "-e", "ansible_connection=local",
         "-e", f"ansible_python_interpreter={ANSIBLE_PLAYBOOK.parent / 'python'}"],
        cwd=ROOT, env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (inventory / "credentials" / "oq_authkey.txt").exists()

    assert main(["render", "-i", str(inventory), "--out", str(by_cli)]) == 0

    for node in NODES:
        expected = (by_ansible / node / "openquake.cfg").read_bytes()
        assert (by_cli / node / "openquake.cfg").read_bytes() == expected, node
        keys = {line.split("=")[0].strip() for line in expected.decode().splitlines()}
        # the real engine reads neither the bundled engine's keys nor the secret; it
        # executes a key named `code`
        assert "code" not in keys
        assert ("authkey" in keys) == (flavor == "oqzmq"), node


def test_render_generates_the_secret_once_beside_the_inventory(
    project_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = two_nodes(tmp_path)
    render = ["render", "-i", str(inventory), "--host", "w1"]

    assert main(render) == 0
    first = capsys.readouterr().out
    assert main(render) == 0
    second = capsys.readouterr().out

    secret = (tmp_path / "credentials" / "oq_authkey.txt").read_text().split()[0]
    assert first == second
    assert f"authkey = {secret}\n" in first
    assert len(secret) == 48


def test_an_ini_false_is_false_in_openquake_cfg(
    project_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # INI inventories give the string "false"; as a bare truth value it would be true
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "[master]\nm1 oq_address=192.0.2.1\n[workers]\nw1 oq_address=192.0.2.2\n"
        "[all:vars]\noq_multi_user=false\noq_authkey=ini-test-authkey-0123456789abcdefghijklm\n"
    )

    assert main(["render", "-i", str(inventory), "--host", "w1"]) == 0

    assert "multi_user = false\n" in capsys.readouterr().out
