"""Faults of the master (issue #21): its calculation process SIGKILLed mid-run (the pools drop
its tasks, the dbserver marks it failed, the next calculation runs at once), and the dbserver
SIGKILLed and restarted mid-run (the calculation goes on; no log line or task record lost).

Real processes: a dbserver (`oqz dbserver start`), a workerpool on its own loopback address,
and the calculation run by a separate Python process. Each test prints the time from the
fault to its outcome (``pytest -s``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from freeports import free_port_block
from oqzmq import launcher
from oqzmq.config import Config, load_config
from oqzmq.dbserver import DbClient, DbServerError
from oqzmq.protocol import Kill, StatusQuery

POOL_HOST = "127.0.0.6"
ENGINE_TESTS = Path(__file__).parents[1] / "engine"  # enginetasks.py: the tasks
OQZ = [sys.executable, "-m", "oqzmq.cli"]

# The calculation: registered with the dbserver, N tasks of sleep_first_time on the pool, a
# log line per result; prints its id, then each result.
MASTER = """
import logging, sys
from pathlib import Path
from oqzmq.config import load_config
from oqzmq.datastore import new_calculation
from oqzmq.logs import calculation
from oqzmq.monitor import Monitor
from oqzmq.parallel import Starmap
from enginetasks import sleep_first_time

tasks, seconds, markers = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
logging.basicConfig(level=logging.INFO)
config = load_config()
with calculation(config, "faults") as calc:
    print(calc.id, flush=True)
    _, path = new_calculation(config, calc.id)
    calc.set_datastore(path)
    monitor = Monitor("faults", path)
    args = [(f"{markers}/{i}", seconds, i) for i in range(tasks)]
    for result in Starmap(sleep_first_time, args, monitor):
        logging.info("result %d", result)
        print(result, flush=True)
"""


@dataclass
class Site:
    config: Config
    env: dict[str, str]  # for `oqz` and the calculation processes
    dbserver: subprocess.Popen[bytes]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """openquake.cfg, a dbserver process and a 2-process workerpool."""
    base = free_port_block(4, ("127.0.0.1", POOL_HOST))
    path = tmp_path / "openquake.cfg"
    path.write_text(
        "[distribution]\noq_distribute = zmq\n\n"
        f"[dbserver]\nfile = {tmp_path / 'db.sqlite3'}\nlisten = 127.0.0.1\nhost = 127.0.0.1\n"
        f"port = {base}\nreceiver_host = 127.0.0.1\nreceiver_ports = {base + 2}-{base + 3}\n"
        "authkey = master-faults-secret-key-0123456789abcdef\n\n"
        f"[zworkers]\nhost_cores = {POOL_HOST} 2\nctrl_port = {base + 1}\n\n"
        f"[directory]\nshared_dir = {tmp_path / 'shared'}\n"
    )
    pythonpath = os.pathsep.join(p for p in (str(ENGINE_TESTS), os.environ.get("PYTHONPATH"))
                                 if p)
    monkeypatch.setenv("PYTHONPATH", pythonpath)  # the pool's workers import enginetasks
    env = {k: v for k, v in os.environ.items() if not k.startswith("OQ_")}
    env = {**env, "OQ_CONFIG_FILE": str(path)}
    config = load_config(path)
    running = Site(config, env, start_dbserver(env))
    reports = launcher.start_pools(config, "local", wait=60)
    try:
        assert all(r.ok for r in reports), reports
        yield running
    finally:
        launcher.query_pools(config, Kill(), timeout=2)
        running.dbserver.terminate()
        running.dbserver.wait(20)


def start_dbserver(env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([*OQZ, "dbserver", "start"], env=env)
    wait_for(lambda: subprocess.run([*OQZ, "dbserver", "status"], env=env,
                                    capture_output=True).returncode == 0, 30, "the dbserver")
    return process


def start_master(env: dict[str, str], tmp_path: Path, tasks: int,
                 seconds: float) -> subprocess.Popen[str]:
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", MASTER, str(tasks), str(seconds), str(markers)],
        env=env, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
    )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took for ``predicate`` to hold."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def report(what: str, seconds: float) -> None:
    print(f"\n[fault timing] {what}: {seconds:.2f} s")


def pool_idle(config: Config) -> bool:
    reply = launcher.query_pools(config, StatusQuery(), timeout=3)[POOL_HOST]
    assert reply is not None, "the workerpool does not answer"
    return reply.running == 0 and reply.queued == 0


def is_gone(pid: int) -> bool:
    """Dead (a zombie not yet reaped by the pool counts as dead: it uses no CPU)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def calc_status(config: Config, calc_id: int) -> str:
    with DbClient(config, timeout=5) as client:
        return str(client.call("get_calc", calc_id=calc_id)["status"])


def test_a_killed_master_leaves_no_tasks_on_the_pools_and_is_marked_failed(
    site: Site, tmp_path: Path
) -> None:
    config, env = site.config, site.env
    master = start_master(env, tmp_path, tasks=6, seconds=600)  # 2 running, 4 queued
    assert master.stdout is not None
    calc_id = int(master.stdout.readline())
    markers = tmp_path / "markers"
    wait_for(lambda: len(list(markers.iterdir())) == 2, 60, "both workers busy")
    workers = [int(p.read_text() or 0) for p in markers.iterdir()]
    assert not pool_idle(config)
    master.kill()
    master.wait()
    killed = time.monotonic()
    failed = wait_for(lambda: calc_status(config, calc_id) == "failed", 30, "status failed")
    report("master SIGKILL -> dbserver marks the calculation failed", failed)
    dropped = wait_for(lambda: pool_idle(config), 30 - (time.monotonic() - killed),
                       "the pool to drop the tasks")
    report("master SIGKILL -> its tasks dropped from the pool, workers killed",
           time.monotonic() - killed)
    assert dropped < 30
    wait_for(lambda: all(is_gone(pid) for pid in workers), 10, "the busy workers to die")
    with DbClient(config) as client:
        traceback = client.call("get_traceback", calc_id=calc_id)
    assert f"process {master.pid}" in traceback and "is gone" in traceback
    with DbClient(config) as client:
        logged = [r["message"] for r in client.call("get_logs", calc_id=calc_id)]
    assert any("marked failed by the dbserver" in m for m in logged), logged[-5:]
    # the next calculation runs at once, on the whole pool
    started = time.monotonic()
    following = start_master(env, tmp_path / "markers", tasks=4, seconds=0)
    out, _ = following.communicate(timeout=120)
    report("next calculation after the killed one", time.monotonic() - started)
    assert following.returncode == 0
    assert calc_status(config, int(out.split()[0])) == "complete"


def test_a_dbserver_restart_mid_calculation_loses_no_log_line_or_task_record(
    site: Site, tmp_path: Path
) -> None:
    config, env = site.config, site.env
    tasks = 30
    master = start_master(env, tmp_path, tasks=tasks, seconds=0.2)
    assert master.stdout is not None
    calc_id = int(master.stdout.readline())
    for _ in range(5):
        master.stdout.readline()
    site.dbserver.kill()
    site.dbserver.wait()
    with pytest.raises(DbServerError):
        calc_status(config, calc_id)
    time.sleep(2)  # results keep coming while it is down
    site.dbserver = start_dbserver(env)
    master.stdout.read()
    assert master.wait(120) == 0
    with DbClient(config) as client:
        record = client.call("get_calc", calc_id=calc_id)
        messages = [r["message"] for r in client.call("get_logs", calc_id=calc_id)]
        task_records = client.call("get_tasks", calc_id=calc_id)
    assert record["status"] == "complete"
    for number in range(tasks):
        assert f"result {number}" in messages, f"log line 'result {number}' lost"
    assert sorted(t["task_no"] for t in task_records) == list(range(tasks))


def test_a_master_stopped_longer_than_its_lease_completes_when_it_resumes(
    site: Site, tmp_path: Path
) -> None:
    """SIGSTOP (as Ctrl-Z) past the lease: the pool drops its tasks, reporting them lost;
    the resumed master re-runs them and completes."""
    config, env = site.config, site.env
    master = start_master(env, tmp_path, tasks=1, seconds=600)
    assert master.stdout is not None
    calc_id = int(master.stdout.readline())
    markers = tmp_path / "markers"
    wait_for(lambda: any(markers.iterdir()), 60, "the task to start")
    master.send_signal(signal.SIGSTOP)
    try:
        report("master SIGSTOP -> its tasks dropped from the pool",
               wait_for(lambda: pool_idle(config), 30, "the pool to drop the tasks"))
    finally:
        master.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    out, _ = master.communicate(timeout=120)
    report("master SIGCONT -> calculation complete", time.monotonic() - resumed)
    assert master.returncode == 0
    assert out.split() == ["0"]
    assert calc_status(config, calc_id) == "complete"
    with DbClient(config) as client:
        messages = [r["message"] for r in client.call("get_logs", calc_id=calc_id)]
    assert any("has not renewed its lease" in m for m in messages), messages
