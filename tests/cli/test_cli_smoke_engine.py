"""The smoke calculation against the bundled engine, on this machine (master = worker).

A real dbserver and a real workerpool run from this venv on free loopback ports, with the
openquake.cfg that `oqcluster render` writes; the verify checks then run through testinfra's
local connection exactly as they would on a cluster.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_cases import ROOT
from freeports import free_port_block

from oqcluster.cli import main
from oqcluster.inventory import Inventory
from oqcluster.nodetests import test_cluster_config as config_checks
from oqcluster.nodetests import test_cluster_ports as port_checks
from oqcluster.nodetests import test_cluster_workerpools as pool_checks
from oqcluster.project import find_project
from oqcluster.verify.context import Context, build_context
from oqcluster.verify.results import Status
from oqcluster.verify.smoke import smoke_calculation

OQZ = Path(sys.executable).parent / "oqz"
pytestmark = pytest.mark.slow


def write_inventory(directory: Path) -> Path:
    base = free_port_block(7)
    dbserver, ctrl, webui, first, *_, last = range(base, base + 7)
    inventory = directory / "hosts.yml"
    inventory.write_text(f"""
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: {sys.executable}
    oq_authkey: smoke-test-authkey-0123456789abcdefghijklmnop
    oq_user: {getpass.getuser()}
    oq_install_dir: {Path(sys.executable).parents[2]}
    oq_venv_dir: {Path(sys.executable).parents[1]}
    oq_config_dir: {directory}/etc
    oq_shared_dir: {directory}/shared
    oq_state_dir: {directory}/state
    oq_dbserver_file: {directory}/state/db.sqlite3
    oq_dbserver_port: {dbserver}
    oq_ctrl_port: {ctrl}
    oq_webui_port: {webui}
    oq_receiver_port_first: {first}
    oq_receiver_port_last: {last}
  children:
    master: {{hosts: {{node: {{oq_address: 127.0.0.1}}}}}}
    workers: {{hosts: {{node: {{oq_cores: 2}}}}}}
""")
    return inventory


def oqz(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(OQZ), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def wait_for_dbserver(env: dict[str, str], dbserver: subprocess.Popen[bytes], log: Path) -> None:
    # Generous: on a loaded 2-core machine each `oqz` start (numpy, h5py imports) takes seconds.
    deadline = time.monotonic() + 90
    while oqz(env, "dbserver", "status").returncode != 0:
        if dbserver.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the dbserver did not answer; its log:\n{log.read_text()}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def running_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    """A one-node cluster: dbserver and workerpool of this venv, stopped afterwards."""
    tmp_path = tmp_path_factory.mktemp("engine")
    inventory = write_inventory(tmp_path)
    for sub in ("etc", "shared", "state"):
        (tmp_path / sub).mkdir()
    assert main(["render", "-i", str(inventory), "--out", str(tmp_path / "rendered")]) == 0
    (tmp_path / "rendered/node/openquake.cfg").rename(tmp_path / "etc/openquake.cfg")
    env = {**os.environ, "OQ_CONFIG_FILE": str(tmp_path / "etc/openquake.cfg")}
    log = tmp_path / "dbserver.log"
    with log.open("wb") as log_file:
        dbserver = subprocess.Popen([str(OQZ), "dbserver", "start"], env=env, cwd=ROOT,
                                    stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for_dbserver(env, dbserver, log)
        started = oqz(env, "workers", "start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield build_context(str(inventory), Inventory([str(inventory)],
                                                      find_project().defaults), None)
    finally:
        oqz(env, "workers", "stop")
        dbserver.terminate()
        dbserver.wait(timeout=20)


def test_smoke_calculation_runs_on_the_engine_and_counts_tasks_per_worker(
    running_engine: Context,
) -> None:
    results = list(smoke_calculation(running_engine))

    assert [(r.check, r.status) for r in results] == [
        ("smoke calculation (oqz run demo, 4 tasks, zmq)", Status.PASS),
        ("computed tasks of the smoke calculation", Status.PASS),
    ]
    assert results[1].found == "4 task(s)"


def test_engine_ports_and_config_pass_on_a_running_engine(running_engine: Context) -> None:
    results = [
        *port_checks.dbserver_reachable(running_engine),
        *port_checks.workerpools_reachable(running_engine),
        *pool_checks.workerpools_answer(running_engine),
        *config_checks.config_agrees(running_engine),
    ]

    assert [r.status for r in results] == [Status.PASS] * 4, results
    assert results[2].found == "0 of 2 processes busy"


def test_the_handshake_check_passes_on_a_running_engine(running_engine: Context) -> None:
    results = list(pool_checks.handshakes_refuse_keyless_peers(running_engine))

    assert [r.status for r in results] == [Status.PASS] * 2, results  # the pool, the dbserver
    assert all("keyless: refused: no key, keyed: accepted" in r.found for r in results)
