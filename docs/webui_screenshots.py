"""Regenerate docs/webui-list.png, webui-calc.png and webui-failed.png from real calculations,
and the login screenshots (multi_user) webui-login.png, webui-login-refused.png,
webui-list-alice.png and webui-list-admin.png.

    .venv/bin/python docs/webui_screenshots.py          (needs Debian's chromium; about 1 min)
    .venv/bin/python docs/webui_screenshots.py --login  (the login screenshots only)

Starts a dbserver, two local workerpools on loopback addresses (standing in for worker
hosts), runs demo calculations through `oqz run` (two complete, one aborted with `oqz abort`,
one failing because a workerpool is down), serves the webui and screenshots it headless.
The login ones: a multi_user dbserver with calculations of alice, bob and openquake (an
admin), passwords set with `oqz users password`, `oqz webui start`, and Chromium driven by
Playwright: the login form, a wrong password refused, alice's list (hers only), the admin's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from oqzmq import launcher
from oqzmq.config import Config, load_config
from oqzmq.dbserver import DbClient, DbServer
from oqzmq.protocol import Kill

DOCS = Path(__file__).parent
OQZ = [sys.executable, "-m", "oqzmq.cli"]
HOSTS = "127.0.0.6 2, 127.0.0.7 1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dbserver(config_path: Path) -> Iterator[tuple[Config, dict[str, str]]]:
    """A dbserver in a thread for `config_path`: its config and the env for `oqz` commands."""
    config = load_config(config_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OQ_")}
    env["OQ_CONFIG_FILE"] = str(config_path)
    server = DbServer(config)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield config, env
    finally:
        server.stop()
        thread.join(10)


@contextlib.contextmanager
def webui(env: dict[str, str]) -> Iterator[str]:
    """`oqz webui start` on a free port: its base URL."""
    port = free_port()
    process = subprocess.Popen([*OQZ, "webui", "start", "--port", str(port)], env=env,
                               stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def free_block(size: int) -> int:
    """Ports below the ephemeral range, as 1908-1920 are (see tests/dbserver)."""
    for base in range(21000 + os.getpid() % 400 * 25, 32000, 25):
        try:
            for port in range(base, base + size):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise SystemExit("no free block of ports below 32000")


def write_config(directory: Path) -> Path:
    base = free_block(6)
    path = directory / "openquake.cfg"
    path.write_text(
        "[distribution]\noq_distribute = zmq\nserialize_jobs = false\n\n"
        f"[dbserver]\nfile = {directory / 'db.sqlite3'}\nlisten = 127.0.0.1\n"
        f"host = 127.0.0.1\nport = {base}\nreceiver_host = 127.0.0.1\n"
        f"receiver_ports = {base + 2}-{base + 5}\n"
        "authkey = screenshot-secret-0123456789abcdefghij\n\n"
        f"[zworkers]\nhost_cores = {HOSTS}\nctrl_port = {base + 1}\n\n"
        f"[directory]\nshared_dir = {directory / 'shared'}\n"
    )
    return path


def oqz(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*OQZ, *args], env=env, capture_output=True, text=True, check=False)


def record_calculations(env: dict[str, str], config_path: Path) -> tuple[int, int]:
    """Run the calculations to show; return the ids of a complete and of the failed one."""
    config = load_config(config_path)
    oqz(env, "run", "demo", "--size", "small")
    oqz(env, "run", "demo", "--sources", "400", "--sites", "800", "--tasks", "24")
    long_run = subprocess.Popen([*OQZ, "run", "demo", "--size", "medium"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with DbClient(config) as client:
        while client.call("list_calcs")["total"] < 3:
            time.sleep(0.2)
        time.sleep(3)
        oqz(env, "abort", str(client.call("list_calcs")["calcs"][0]["id"]))
        long_run.wait(60)
        aborted = client.call("get_calc", calc_id=3)
        if aborted["status"] != "aborted":
            raise SystemExit(f"calculation 3 is {aborted['status']}, not aborted: "
                             f"{client.call('get_traceback', calc_id=3)}")
        launcher.query_pools(config, Kill(), timeout=2)
        oqz(env, "run", "demo", "--size", "tiny")  # fails: no workerpool answers
        launcher.start_pools(config, "local", wait=60)
        calcs = client.call("list_calcs")["calcs"]
        return int(calcs[2]["id"]), int(calcs[0]["id"])


def screenshot(url: str, target: Path, profile: Path, height: int) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--window-size=1100,{height}", "--hide-scrollbars",
         "--virtual-time-budget=2000", f"--screenshot={target}", url],
        capture_output=True, check=True, timeout=90,
    )
    print(f"wrote {target}")


LOGIN_USERS = {"alice": ["PSHA Italy, 1000 sites", "scenario Messina 1908"],
               "bob": ["bob's private study"], "openquake": ["nightly regression"]}


def login_screenshots() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="oqz-login-shots-") as tmp:
        directory = Path(tmp)
        config_path = directory / "openquake.cfg"
        config_path.write_text(
            "[distribution]\noq_distribute = no\n\n[dbserver]\nmulti_user = true\n"
            f"file = {directory / 'db' / 'db.sqlite3'}\nlisten = 127.0.0.1\n"
            f"host = 127.0.0.1\nport = {free_port()}\n"
            "authkey = screenshot-secret-0123456789abcdefghij\n")
        with dbserver(config_path) as (config, env):
            record_login_calculations(config, env)
            with webui(env) as base:
                browse_logins(base, chromium)


def record_login_calculations(config: Config, env: dict[str, str]) -> None:
    """alice's, bob's and openquake's calculations, and their webui passwords."""
    from oqzmq.identity import derive_key, read_secret, secret_path

    secret = read_secret(secret_path(Path(config.db_file)))
    assert secret is not None
    for user, descriptions in LOGIN_USERS.items():
        with DbClient(config, user=user, user_key=derive_key(secret, user)) as client:
            for description in descriptions:
                calc = client.call("create_calc", description=description,
                                   calculation_mode="classical", host="master",
                                   pid=os.getpid())
                client.call("set_status", calc_id=calc["id"], status="executing")
                client.call("set_status", calc_id=calc["id"], status="complete")
        subprocess.run([*OQZ, "users", "password", user, "--stdin"], env=env,
                       input=f"{user}-password\n", text=True, check=True,
                       capture_output=True)


def browse_logins(base: str, chromium: str) -> None:
    """The login screenshots, through Playwright in `chromium`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium,
                                             args=["--no-sandbox"])

        def shot(page, name: str) -> None:
            page.wait_for_load_state("networkidle")
            page.screenshot(path=DOCS / name)
            print(f"wrote {DOCS / name}")

        def log_in(page, user: str, password: str) -> None:
            page.goto(f"{base}/")
            page.fill("#username", user)
            page.fill("#password", password)
            page.click("#login")

        page = browser.new_page(viewport={"width": 1100, "height": 330})
        page.goto(f"{base}/")
        shot(page, "webui-login.png")
        log_in(page, "alice", "not-her-password")
        shot(page, "webui-login-refused.png")
        log_in(page, "alice", "alice-password")
        page.wait_for_selector("#calcs[data-refreshed]")
        shot(page, "webui-list-alice.png")
        page.click("form.logout button")
        log_in(page, "openquake", "openquake-password")
        page.wait_for_selector("#calcs[data-refreshed]")
        shot(page, "webui-list-admin.png")
        browser.close()


def main() -> int:
    login_screenshots()
    if "--login" in sys.argv[1:]:
        return 0
    with tempfile.TemporaryDirectory(prefix="oqz-shots-") as tmp:
        directory = Path(tmp)
        config_path = write_config(directory)
        with dbserver(config_path) as (config, env):
            reports = launcher.start_pools(config, "local", wait=60)
            if not all(r.ok for r in reports):
                raise SystemExit(f"workerpools did not start: {reports}")
            try:
                complete_id, failed_id = record_calculations(env, config_path)
                with webui(env) as base:
                    screenshot(f"{base}/", DOCS / "webui-list.png", directory / "profile", 420)
                    screenshot(f"{base}/calc/{complete_id}", DOCS / "webui-calc.png",
                               directory / "profile", 1000)
                    screenshot(f"{base}/calc/{failed_id}", DOCS / "webui-failed.png",
                               directory / "profile", 760)
            finally:
                launcher.query_pools(config, Kill(), timeout=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
