"""Fixtures: a private openquake.cfg and a dbserver running in a thread on a free port."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from dbserverthread import RunningServer
from freeports import free_port
from oqzmq.config import Config, load_config
from oqzmq.dbserver import DbClient
from oqzmq.webui.app import create_app
from webuilogin import LoginWebUI, running_login_webui


def write_config(
    directory: Path, authkey: str | None = None, multi_user: bool = False, port: int | None = None
) -> Path:
    path = directory / "openquake.cfg"
    path.write_text(
        "[distribution]\noq_distribute = no\n\n"
        "[dbserver]\n"
        f"multi_user = {'true' if multi_user else 'false'}\n"
        f"file = {directory / 'db' / 'db.sqlite3'}\n"
        "listen = 127.0.0.1\nhost = 127.0.0.1\n"
        f"port = {port or free_port()}\n"
        f"authkey = {authkey or secrets.token_urlsafe(24)}\n"
    )
    return path


@pytest.fixture
def unused_port():
    """A function returning a TCP port free on 127.0.0.1 right now."""
    return free_port


@pytest.fixture
def make_config(tmp_path: Path):
    """Write another openquake.cfg (own directory) and return its path."""
    counter = iter(range(1, 1000))

    def make(**kwargs: object) -> Path:
        directory = tmp_path / f"cfg{next(counter)}"
        directory.mkdir()
        return write_config(directory, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def cfg_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_config(tmp_path)
    monkeypatch.setenv("OQ_CONFIG_FILE", str(path))
    monkeypatch.delenv("OQ_DATABASE", raising=False)
    return path


@pytest.fixture
def config(cfg_path: Path) -> Config:
    return load_config(cfg_path)


@pytest.fixture
def dbserver(config: Config) -> Iterator[RunningServer]:
    running = RunningServer(config)
    yield running
    running.stop()


class WebServer:
    def __init__(self, client: DbClient, port: int, workers_status=None) -> None:
        app = create_app(client, workers_status)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
        )
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the webui did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def populate(client: DbClient) -> dict[str, int]:
    done = client.call("create_calc", description="hazard <demo>", calculation_mode="demo")
    client.call("set_status", calc_id=done["id"], status="executing")
    client.call("add_logs", calc_id=done["id"], records=[[1e9, "INFO", "m:1", "started"]])
    tasks = [
        {"task_no": i, "name": "compute", "host": f"10.0.0.{2 + i % 2}", "duration": 0.2 * (i + 1),
         "nbytes": 1000 * i, "memory_mb": 50.0}
        for i in range(6)
    ]
    client.call("add_tasks", calc_id=done["id"], tasks=tasks)
    client.call("set_status", calc_id=done["id"], status="complete")
    failed = client.call("create_calc", description="broken")
    client.call("set_status", calc_id=failed["id"], status="executing")
    client.call("set_traceback", calc_id=failed["id"], traceback="Traceback\nValueError: boom")
    client.call("set_status", calc_id=failed["id"], status="failed")
    running = client.call("create_calc", description="long run")
    client.call("set_status", calc_id=running["id"], status="executing")
    return {"complete": done["id"], "failed": failed["id"], "running": running["id"]}


@pytest.fixture
def webui(
    dbserver, config: Config, unused_port
) -> Iterator[tuple[WebServer, dict[str, int]]]:
    client = DbClient(config, timeout=1.0)
    ids = populate(client)
    web = WebServer(client, unused_port(), workers_status=lambda: [("10.0.0.2", 1, 4)])
    yield web, ids
    web.stop()
    client.close()


@pytest.fixture
def login_webui(tmp_path: Path, unused_port) -> Iterator[LoginWebUI]:
    """A multi_user dbserver with calculations of alice, bob and openquake (an admin), their
    passwords set with `oqz users password`, and `oqz webui start` as a process."""
    with running_login_webui(tmp_path, unused_port()) as web:
        yield web
