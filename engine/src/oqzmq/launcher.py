"""Start, stop and query the workerpools of ``[zworkers] host_cores`` (``oqz workers ...``).

How a pool is started on a host (``launcher``):

``local``    a detached ``python -m oqzmq.workerpool`` on this machine (loopback hosts, tests,
             single-machine clusters); its log goes to ``<tmp>/oqz-workerpool-HOST-PORT.log``
``ssh``      ``ssh -o BatchMode=yes openquake@HOST`` running the venv's python
             (``/opt/openquake/venv/bin/python``) detached with nohup
``systemd``  ``ssh ... sudo -n systemctl start openquake-workerpool.service`` for hosts where
             provisioning installed the unit
``auto``     local for loopback addresses; for the others one ssh call that uses the systemd
             unit where the host has it, nohup otherwise

After launching, :func:`start_pools` pings every pool until it answers or ``wait`` runs out,
and reports each failure with its reason: ssh refused, port closed, timeout.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import zmq

from oqzmq.config import Config, HostCores, is_local_host
from oqzmq.poolclient import PoolHandle, connect_pool, ping_pools
from oqzmq.protocol import Ping, Pong, Query, ReplyT

REMOTE_PYTHON = "/opt/openquake/venv/bin/python"
SSH_USER = "openquake"
SYSTEMD_UNIT = "openquake-workerpool.service"
LAUNCHERS = ("auto", "local", "ssh", "systemd")


@dataclass
class HostReport:
    """The outcome of one operation on one host's pool."""

    host: str
    ok: bool
    detail: str
    command: str = ""


def pool_argv(config: Config, hc: HostCores, python: str) -> list[str]:
    return [python, "-m", "oqzmq.workerpool", "--host", hc.host, "--port",
            str(config.ctrl_port), "--cores", str(hc.cores)]


def local_log_path(hc: HostCores, config: Config) -> Path:
    return Path(tempfile.gettempdir()) / f"oqz-workerpool-{hc.host}-{config.ctrl_port}.log"


def launch_command(
    config: Config, hc: HostCores, launcher: str = "auto", python: str = REMOTE_PYTHON,
    ssh_user: str = SSH_USER,
) -> tuple[str, list[str]]:
    """(how, argv) that starts the pool of ``hc`` - what ``oqz workers debug`` prints.

    ``auto`` on a remote host is one ssh call that starts the systemd unit when the host has
    it (site.yml installs none; an administrator may) and launches the pool with nohup
    otherwise.
    """
    how = ("local" if is_local_host(hc.host) else "auto") if launcher == "auto" else launcher
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"{ssh_user}@{hc.host}"]
    if how == "local":
        return how, pool_argv(config, hc, sys.executable)
    systemd = f"sudo -n systemctl start {SYSTEMD_UNIT}"
    if how == "systemd":
        return how, [*ssh, systemd]
    remote = shlex.join(pool_argv(config, hc, python))
    log = f"/tmp/oqz-workerpool-{hc.host}-{config.ctrl_port}.log"
    nohup = f"nohup {remote} >{log} 2>&1 </dev/null &"
    if how == "ssh":
        return how, [*ssh, nohup]
    return "ssh+systemd-if-installed", [
        *ssh, f"if systemctl cat {SYSTEMD_UNIT} >/dev/null 2>&1; then {systemd}; else {nohup} fi"]


def start_pools(
    config: Config, launcher: str = "auto", wait: float = 15.0, python: str = REMOTE_PYTHON,
    ssh_user: str = SSH_USER,
) -> list[HostReport]:
    """Start the pools that are not already answering; report every host."""
    reports: dict[str, HostReport] = {}
    already = query_pools(config, Ping(), timeout=1.0)
    for hc in config.require_workers():
        if already[hc.host] is not None:
            reports[hc.host] = HostReport(hc.host, True, "already running")
            continue
        how, argv = launch_command(config, hc, launcher, python, ssh_user)
        reports[hc.host] = _launch(how, argv, hc, config)
    pending = [h for h, r in reports.items() if r.ok and r.detail != "already running"]
    answers = query_pools(config, Ping(), timeout=wait, hosts=pending) if pending else {}
    for host in pending:
        answer = answers.get(host)
        if answer is not None:
            reports[host].detail = f"started ({answer.size} worker processes)"
        else:
            reports[host].ok = False
            reports[host].detail = f"launched but not answering after {wait:.0f}s: " + \
                diagnose_port(host, config.ctrl_port)
    return [reports[hc.host] for hc in config.require_workers()]


def _launch(how: str, argv: list[str], hc: HostCores, config: Config) -> HostReport:
    command = shlex.join(argv)
    if how == "local":
        log = local_log_path(hc, config)
        env = dict(os.environ)
        if config.path is not None:  # the pool reads the same file as this master
            env["OQ_CONFIG_FILE"] = str(config.path)
        with log.open("ab") as out:
            subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        return HostReport(hc.host, True, "launched", command)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return HostReport(hc.host, False, "ssh timed out after 30s", command)
    except FileNotFoundError:
        return HostReport(hc.host, False, "ssh is not installed on this machine", command)
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        kind = "ssh refused" if done.returncode == 255 else f"exit code {done.returncode}"
        return HostReport(hc.host, False, f"{kind}: {why}", command)
    return HostReport(hc.host, True, "launched", command)


def diagnose_port(host: str, port: int, timeout: float = 2.0) -> str:
    """Why a pool does not answer, seen from here: port closed, timeout, or silent pool."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return (f"port {port} is open but the pool does not answer authenticated pings "
                    "(different authkey in openquake.cfg? see the pool's log)")
    except ConnectionRefusedError:
        return f"port {port} closed (pool not running: see its log; or a firewall rejects)"
    except TimeoutError:
        return f"timeout connecting to port {port} (firewall dropping, or host down)"
    except OSError as exc:
        return f"cannot connect to port {port}: {exc.strerror or exc}"


def query_pools(
    config: Config, query: Query[ReplyT], timeout: float = 5.0, hosts: list[str] | None = None
) -> dict[str, ReplyT | None]:
    """Send ``query`` to every pool (or ``hosts``); its reply per host (None: no answer)."""
    authkey = config.require_authkey()
    selected = [hc for hc in config.require_workers() if hosts is None or hc.host in hosts]
    context = zmq.Context()
    handles = [connect_pool(context, authkey, hc.host, f"tcp://{hc.host}:{config.ctrl_port}",
                            config.max_message_bytes)
               for hc in selected]
    try:
        if isinstance(query, Ping):  # pools still starting are asked again
            return cast(dict[str, ReplyT | None], _ping_replies(handles, timeout))
        return {h.host: h.request(query, timeout) for h in handles}
    finally:
        for handle in handles:
            handle.close(linger=0)
        context.term()


def _ping_replies(handles: list[PoolHandle], timeout: float) -> dict[str, Pong | None]:
    deadline = time.monotonic() + timeout
    silent = ping_pools(handles, timeout)
    while silent and time.monotonic() < deadline:  # pools still starting: ask again
        time.sleep(0.2)
        silent = ping_pools(silent, min(1.0, max(0.05, deadline - time.monotonic())))
    quiet = {h.host for h in silent}
    return {h.host: None if h.host in quiet else Pong(h.host, h.size, h.pid) for h in handles}
