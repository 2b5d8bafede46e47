"""The exact commands `oqz workers start` runs per host (what `oqz workers debug` prints)."""

from __future__ import annotations

import sys

from oqzmq.config import Config, HostCores
from oqzmq.launcher import launch_command

CONFIG = Config(ctrl_port=1909, host_cores=(HostCores("10.0.0.2", -1),))


def test_remote_hosts_start_over_ssh_as_openquake_with_the_venv_python() -> None:
    how, argv = launch_command(CONFIG, HostCores("10.0.0.2", 4), launcher="ssh")
    assert how == "ssh"
    assert argv[:6] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                        "openquake@10.0.0.2"]
    assert argv[6].startswith(
        "nohup /opt/openquake/venv/bin/python -m oqzmq.workerpool --host 10.0.0.2 "
        "--port 1909 --cores 4 >/tmp/oqz-workerpool-10.0.0.2-1909.log 2>&1 </dev/null &")


def test_systemd_launcher_starts_the_unit() -> None:
    how, argv = launch_command(CONFIG, HostCores("10.0.0.2", -1), launcher="systemd")
    assert how == "systemd"
    assert argv[-1] == "sudo -n systemctl start openquake-workerpool.service"


def test_auto_uses_the_unit_where_installed_else_nohup() -> None:
    how, argv = launch_command(CONFIG, HostCores("10.0.0.2", 2))
    assert how == "ssh+systemd-if-installed"
    assert argv[:6] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                        "openquake@10.0.0.2"]
    assert argv[6] == (
        "if systemctl cat openquake-workerpool.service >/dev/null 2>&1; "
        "then sudo -n systemctl start openquake-workerpool.service; "
        "else nohup /opt/openquake/venv/bin/python -m oqzmq.workerpool --host 10.0.0.2 "
        "--port 1909 --cores 2 >/tmp/oqz-workerpool-10.0.0.2-1909.log 2>&1 </dev/null & fi")


def test_loopback_hosts_start_locally_with_this_python() -> None:
    how, argv = launch_command(CONFIG, HostCores("127.0.0.5", 2))
    assert how == "local"
    assert argv == [sys.executable, "-m", "oqzmq.workerpool", "--host", "127.0.0.5",
                    "--port", "1909", "--cores", "2"]
