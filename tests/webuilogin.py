"""The webui with a login (multi_user) as a real `oqz webui start` process, beside a dbserver
in a thread: shared by the webui login tests (HTTP and Playwright)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dbserverthread import RunningServer
from freeports import free_port
from oqzmq.config import load_config
from oqzmq.dbserver import DbClient, db_file
from oqzmq.identity import derive_key, read_secret, secret_path

PASSWORDS = {"alice": "alice-webui-pw", "bob": "bob-webui-pw", "openquake": "admin-webui-pw"}
OQZ = [sys.executable, "-m", "oqzmq.cli"]


@dataclass
class LoginWebUI:
    url: str
    cfg: Path
    passwords: dict[str, str]
    ids: dict[str, list[int]]  # user -> the ids of its calculations
    env: dict[str, str]


def set_password(env: dict[str, str], user: str, password: str) -> str:
    done = subprocess.run([*OQZ, "users", "password", user, "--stdin"], input=password + "\n",
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"the webui did not listen on {port} in {seconds} s")


@contextlib.contextmanager
def running_login_webui(directory: Path, port: int) -> Iterator[LoginWebUI]:
    """A multi_user dbserver (thread) with calculations of alice, bob and openquake (admin),
    the three passwords set with `oqz users password`, and `oqz webui start` (a process)."""
    cfg = directory / "openquake.cfg"
    cfg.write_text(
        "[distribution]\noq_distribute = no\n\n[dbserver]\nmulti_user = true\n"
        f"file = {directory / 'db' / 'db.sqlite3'}\nlisten = 127.0.0.1\nhost = 127.0.0.1\n"
        f"port = {free_port()}\nauthkey = {secrets.token_urlsafe(24)}\n")
    config = load_config(cfg)
    running = RunningServer(config)
    env = {**os.environ, "OQ_CONFIG_FILE": str(cfg)}
    env.pop("OQ_DATABASE", None)
    process = None
    try:
        secret = read_secret(secret_path(db_file(config)))
        assert secret is not None
        ids: dict[str, list[int]] = {}
        for user, descriptions in {"alice": ["alice's hazard", "alice's risk"],
                                   "bob": ["bob's secret study"],
                                   "openquake": ["admin's calculation"]}.items():
            with DbClient(config, timeout=5.0, user=user,
                          user_key=derive_key(secret, user)) as client:
                for description in descriptions:
                    calc = client.call("create_calc", description=description,
                                       calculation_mode="demo", host="localhost", pid=1)
                    client.call("set_status", calc_id=calc["id"], status="executing")
                    client.call("set_status", calc_id=calc["id"], status="complete")
                    ids.setdefault(user, []).append(calc["id"])
        for user, password in PASSWORDS.items():
            assert set_password(env, user, password) == "changed"
        log = directory / "webui.log"
        with log.open("w") as output:
            process = subprocess.Popen([*OQZ, "webui", "start", "--port", str(port)], env=env,
                                       stdout=output, stderr=subprocess.STDOUT)
        wait_for_port(port, process, log)
        yield LoginWebUI(f"http://127.0.0.1:{port}", cfg, dict(PASSWORDS), ids, env)
    finally:
        if process is not None:
            process.terminate()
            process.wait(15)
        running.stop()
