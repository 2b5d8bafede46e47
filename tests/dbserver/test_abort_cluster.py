"""`oqz abort` on a real zmq calculation: its queued tasks are dropped on the workerpool, the
worker process running its task is killed (and replaced), its receiver port is freed, and
another calculation on the same pool carries on to completion."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from freeports import free_port_block
from oqzmq import launcher
from oqzmq.commands.webui import workers_status_source
from oqzmq.config import Config, load_config
from oqzmq.dbserver import DbClient, DbServer
from oqzmq.protocol import InspectQuery, Kill, StatusQuery

POOL_HOST = "127.0.0.5"  # a loopback address of its own, standing in for a worker host
OQZ = [sys.executable, "-m", "oqzmq.cli"]


def _port_is_free(port: int) -> bool:
    """Whether a new receiver could bind it (zmq sets SO_REUSEADDR, as this does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Config, dict[str, str]]]:
    base = free_port_block(4, ("127.0.0.1", POOL_HOST))
    path = tmp_path / "openquake.cfg"
    path.write_text(
        "[distribution]\noq_distribute = zmq\nserialize_jobs = false\n\n"
        f"[dbserver]\nfile = {tmp_path / 'db.sqlite3'}\nlisten = 127.0.0.1\nhost = 127.0.0.1\n"
        f"port = {base}\nreceiver_host = 127.0.0.1\nreceiver_ports = {base + 2}-{base + 3}\n"
        "authkey = abort-test-secret-key-0123456789abcdef\n\n"
        f"[zworkers]\nhost_cores = {POOL_HOST} 1\nctrl_port = {base + 1}\n\n"
        f"[directory]\nshared_dir = {tmp_path / 'shared'}\n"
    )
    config = load_config(path)
    server = DbServer(config)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    reports = launcher.start_pools(config, "local", wait=60)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OQ_")}
    try:
        assert all(r.ok for r in reports), reports
        yield config, {**env, "OQ_CONFIG_FILE": str(path)}
    finally:
        launcher.query_pools(config, Kill(), timeout=2)
        server.stop()
        thread.join(10)


def _busy_worker(config: Config) -> int:
    """The pid of the pool's worker process that is running a task."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = launcher.query_pools(config, InspectQuery(), timeout=3)[POOL_HOST]
        assert reply is not None, "the workerpool does not answer"
        busy = [pid for pid, tasks in reply.running.items() if tasks]
        if busy:
            return int(busy[0])
        time.sleep(0.1)
    raise AssertionError("no worker process got a task")


def _is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_abort_revokes_one_calculation_and_spares_the_other(cluster) -> None:
    config, env = cluster
    client = DbClient(config)
    second = None
    long_run = subprocess.Popen(
        # 3 tasks of many seconds each (aborted long before they end, also on a loaded machine)
        [*OQZ, "run", "demo", "--sources", "900", "--sites", "2000", "--tasks", "3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(lambda: client.call("list_calcs")["total"] == 1, 30, "the first calculation")
        first = client.call("list_calcs")["calcs"][0]["id"]
        _wait_for(lambda: not _port_is_free(config.receiver_ports[0]), 30, "its receiver")
        second = subprocess.Popen(
            [*OQZ, "run", "demo", "--size", "tiny"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        _wait_for(lambda: client.call("list_calcs")["total"] == 2, 30, "the second calculation")
        busy_worker = _busy_worker(config)
        started = time.monotonic()
        abort = subprocess.run(
            [*OQZ, "abort", str(first)], env=env, capture_output=True, text=True, timeout=60,
            check=False,
        )
        assert abort.returncode == 0, abort.stderr
        assert abort.stdout.strip() == f"calculation {first} aborted"
        assert time.monotonic() - started < 15
        _wait_for(lambda: _is_gone(busy_worker), 5, "the busy worker process to be killed")
        _, long_err = long_run.communicate(timeout=30)
        assert long_run.returncode == 2
        assert f"oqz: error: calculation {first} aborted by `oqz abort`" in long_err
        assert _port_is_free(config.receiver_ports[0]), "the receiver port was not freed"
        _, second_err = second.communicate(timeout=120)
        assert second.returncode == 0, second_err
    finally:
        for process in (long_run, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
    calcs = {c["id"]: c["status"] for c in client.call("list_calcs")["calcs"]}
    assert calcs[first] == "aborted" and set(calcs.values()) == {"aborted", "complete"}
    status = launcher.query_pools(config, StatusQuery(), timeout=3)[POOL_HOST]
    assert status is not None, "the workerpool did not survive the abort"
    assert status.queued == 0, "tasks of the aborted calculation are still queued"
    assert workers_status_source(config)() == [(POOL_HOST, 0, 1)]  # what the webui shows
    log = [r["message"] for r in client.call("get_logs", calc_id=first)]
    assert f"calculation {first}: abort requested, stopping its tasks" in log
    client.close()
