"""The services as systemd runs them: `oqz dbserver start` in the foreground, readiness over
$NOTIFY_SOCKET, `status` exit codes, SIGTERM; and `oqz run`/`list`/`show log`/`abort`."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

OQZ = [sys.executable, "-m", "oqzmq.cli"]


def oqz_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`oqz ARGS` as a separate process."""
    return subprocess.run(
        [*OQZ, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def oqz(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`oqz ARGS` run in this process (the same main(), without a second interpreter)."""
    from oqzmq.cli import main

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["oqz", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _info_logging() -> Iterator[None]:
    """As `oqz` configures it in a process of its own (in-process runs share pytest's)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(level)


@pytest.fixture
def env(cfg_path: Path, tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OQ_", "NOTIFY_"))}
    shared = tmp_path / "shared"
    with cfg_path.open("a") as handle:
        handle.write(f"\n[directory]\nshared_dir = {shared}\n")
    return {**environ, "OQ_CONFIG_FILE": str(cfg_path), "OQ_DISTRIBUTE": "no"}


class Service:
    """A foreground service started like systemd does, with a notify socket."""

    def __init__(self, argv: list[str], env: dict[str, str], directory: Path) -> None:
        self.notify_path = directory / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(20)
        self.process = subprocess.Popen(
            argv,
            env={**env, "NOTIFY_SOCKET": str(self.notify_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> str:
        message = self.notify.recv(256).decode()
        assert message == "READY=1", message
        return message

    def terminate(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=20)
        return self.process.returncode, stderr

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)
        self.notify.close()


@pytest.fixture
def dbserver_service(env: dict[str, str], tmp_path: Path) -> Iterator[Service]:
    service = Service([*OQZ, "dbserver", "start"], env, tmp_path)
    service.wait_ready()
    yield service
    service.close()


def test_status_fails_when_no_dbserver_runs(env: dict[str, str]) -> None:
    result = oqz("dbserver", "status", "--timeout", "0.5", env=env)
    assert result.returncode == 1
    assert "dbserver not running" in result.stderr and "oqz dbserver start" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_database_file_is_a_clear_error(
    cfg_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from oqzmq.cli import main

    text = cfg_path.read_text().replace(str(cfg_path.parent / "db"), "/proc/no-such-dir")
    cfg_path.write_text(text)
    assert main(["dbserver", "start"]) == 2
    error = capsys.readouterr().err
    assert "cannot open the calculation database /proc/no-such-dir/db.sqlite3" in error
    assert "[dbserver] file" in error and "Traceback" not in error


def test_the_dbserver_runs_in_the_foreground_until_sigterm(
    dbserver_service: Service, env: dict[str, str]
) -> None:
    status = oqz("dbserver", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert f"pid {dbserver_service.process.pid}" in status.stdout
    code, stderr = dbserver_service.terminate()
    assert code == 0
    assert "received SIGTERM, stopping" in stderr and "dbserver stopped" in stderr
    assert oqz("dbserver", "status", "--timeout", "0.5", env=env).returncode == 1


def test_dbserver_stop_asks_it_to_exit(dbserver_service: Service, env: dict[str, str]) -> None:
    result = oqz("dbserver", "stop", env=env)
    assert result.returncode == 0 and "stopped" in result.stdout, result.stderr
    assert dbserver_service.process.wait(10) == 0


def test_a_demo_run_is_recorded_listed_and_logged(
    dbserver_service: Service, env: dict[str, str]
) -> None:
    run = oqz("run", "demo", "--size", "tiny", env=env)
    assert run.returncode == 0, run.stderr
    listing = oqz("list", env=env)
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()[:2]
    assert header.split()[:3] == ["id", "status", "user"]
    assert row.split()[:2] == ["1", "complete"] and "demo tiny (seed 42)" in row
    log = oqz("show", "log", "1", env=env)
    assert log.returncode == 0, log.stderr
    assert "calculation 1 executing" in log.stdout and "calculation 1 complete" in log.stdout
    listed = json.loads(oqz("list", "--json", env=env).stdout)
    datastore = Path(listed["calcs"][0]["datastore"])
    assert datastore.name == "calc_1.hdf5" and datastore.is_file()
    assert datastore.is_relative_to(Path(env["OQ_CONFIG_FILE"]).parent / "shared")


def test_running_without_a_dbserver_says_how_to_fix_it(env: dict[str, str]) -> None:
    result = oqz_process("run", "demo", "--size", "tiny", env=env)
    assert result.returncode == 2
    assert "oqz: error:" in result.stderr and "oqz dbserver start" in result.stderr
    assert "Traceback" not in result.stderr


def test_abort_of_a_finished_or_unknown_calculation_is_explained(
    dbserver_service: Service, env: dict[str, str]
) -> None:
    assert oqz("run", "demo", "--size", "tiny", env=env).returncode == 0
    finished = oqz("abort", "1", env=env)
    assert finished.returncode == 2 and "calculation 1 is complete" in finished.stderr
    unknown = oqz("abort", "7", env=env)
    assert unknown.returncode == 2 and "there is no calculation 7" in unknown.stderr


def test_abort_of_a_calculation_whose_process_died_marks_it_failed(
    dbserver_service: Service, env: dict[str, str]
) -> None:
    from oqzmq.config import load_config
    from oqzmq.dbserver import DbClient

    dead = subprocess.Popen(["true"])
    dead.wait()
    with DbClient(load_config(env["OQ_CONFIG_FILE"])) as client:
        calc = client.call("create_calc", host=socket.gethostname(), pid=dead.pid)
        client.call("set_status", calc_id=calc["id"], status="executing")
    result = oqz("abort", str(calc["id"]), env=env)
    assert result.returncode == 0 and "marked it failed" in result.stdout
    assert f"{calc['id']}  failed" in " ".join(oqz("list", env=env).stdout.split("  "))


def test_the_webui_runs_in_the_foreground_until_sigterm(
    dbserver_service: Service, env: dict[str, str], tmp_path: Path, unused_port
) -> None:
    import urllib.request

    port = unused_port()
    webui_dir = tmp_path / "webui"
    webui_dir.mkdir()
    service = Service([*OQZ, "webui", "start", "--port", str(port)], env, webui_dir)
    try:
        service.wait_ready()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/calc/list", timeout=10) as r:
            assert r.status == 200 and r.headers["X-Total-Count"] == "0"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert "No calculations yet: run one with <code>oqz run demo" in r.read().decode()
        started = time.monotonic()
        code, _ = service.terminate()
        assert code == 0 and time.monotonic() - started < 10
    finally:
        service.close()


def test_show_log_follow_prints_until_the_calculation_ends(
    dbserver, config, env: dict[str, str]
) -> None:
    import threading

    from oqzmq.dbserver import DbClient

    client = DbClient(config)
    calc = client.call("create_calc")
    client.call("set_status", calc_id=calc["id"], status="executing")

    def finish_later() -> None:
        time.sleep(1.0)
        client.call("add_logs", calc_id=calc["id"], records=[[time.time(), "INFO", "p", "late"]])
        client.call("set_status", calc_id=calc["id"], status="complete")

    finisher = threading.Thread(target=finish_later)
    finisher.start()
    result = oqz("show", "log", "--follow", env=env)  # no id: the latest calculation
    finisher.join()
    client.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith(f"#{calc['id']} INFO] late")


def test_a_workerpool_tells_systemd_it_is_ready_and_stops_on_sigterm(
    env: dict[str, str], tmp_path: Path, unused_port
) -> None:
    argv = [sys.executable, "-m", "oqzmq.workerpool", "--host", "127.0.0.1",
            "--port", str(unused_port()), "--cores", "1"]
    service = Service(argv, env, tmp_path)
    try:
        service.wait_ready()
        code, stderr = service.terminate()
        assert code == 0, stderr
    finally:
        service.close()
