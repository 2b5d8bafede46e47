"""``oqz workers start|stop|kill|status|inspect|debug``: the workerpools of host_cores."""

from __future__ import annotations

import argparse
import shlex

from oqzmq import launcher
from oqzmq.config import Config, load_config
from oqzmq.errors import TaskError
from oqzmq.parallel import Starmap
from oqzmq.protocol import InspectQuery, Kill, StatusQuery, Stop
from oqzmq.tasks import hostinfo

ACTIONS = ("start", "stop", "kill", "status", "inspect", "debug")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "workers", help="manage the workerpools of [zworkers] host_cores",
        description="start|stop|kill|status|inspect|debug the workerpools (run on the master)",
    )
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--launcher", choices=launcher.LAUNCHERS, default="auto",
                        help="how `start` launches pools (default: local for loopback, ssh)")
    parser.add_argument("--python", default=launcher.REMOTE_PYTHON,
                        help="python of the engine venv on the workers (ssh launcher)")
    parser.add_argument("--ssh-user", default=launcher.SSH_USER)
    parser.add_argument("--wait", type=float, default=15.0,
                        help="seconds to wait for started pools to answer")
    parser.set_defaults(handler=run_workers)


def run_workers(args: argparse.Namespace) -> int:
    config = load_config()
    config.require_workers()
    if args.action == "start":
        reports = launcher.start_pools(config, args.launcher, args.wait, args.python,
                                       args.ssh_user)
        return _print_reports(reports)
    if args.action in ("stop", "kill"):
        query = Stop() if args.action == "stop" else Kill()
        replies = launcher.query_pools(config, query, timeout=5.0)
        return _print_reports([
            launcher.HostReport(host, reply is not None,
                                reply.KIND if reply else "not running (no answer)")
            for host, reply in replies.items()
        ])
    if args.action == "status":
        return _status(config)
    if args.action == "inspect":
        return _inspect(config)
    return _debug(config, args)


def _print_reports(reports: list[launcher.HostReport]) -> int:
    for report in reports:
        print(f"{report.host:<20} {'ok' if report.ok else 'FAILED':<7} {report.detail}")
    return 0 if all(r.ok for r in reports) else 1


def _status(config: Config) -> int:
    replies = launcher.query_pools(config, StatusQuery(), timeout=3.0)
    print(f"{'host':<20} {'running':>7} {'total':>5} {'queued':>6}")
    for host, reply in replies.items():
        if reply is None:
            why = launcher.diagnose_port(host, config.ctrl_port)
            print(f"{host:<20} {'-':>7} {'-':>5} {'-':>6}  not running: {why}")
        else:
            print(f"{host:<20} {reply.running:>7} {reply.total:>5} {reply.queued:>6}")
    return 0 if all(replies.values()) else 1


def _inspect(config: Config) -> int:
    """Per host: the tasks each worker process holds, and those queued in the pool."""
    replies = launcher.query_pools(config, InspectQuery(), timeout=3.0)
    for host, reply in replies.items():
        if reply is None:
            print(f"{host}: not running")
            continue
        print(f"{host}: {len(reply.queued)} queued")
        for pid, tasks in sorted(reply.running.items()):
            print(f"  pid {pid}: {' '.join(tasks) or 'idle'}")
    return 0 if all(replies.values()) else 1


def _debug(config: Config, args: argparse.Namespace) -> int:
    for hc in config.require_workers():
        how, argv = launcher.launch_command(config, hc, args.launcher, args.python,
                                            args.ssh_user)
        print(f"{hc.host:<20} [{how}] {shlex.join(argv)}")
    smap = Starmap(hostinfo, distribute="zmq", config=config)
    hosts = {smap.submit_to(hc.host): hc.host for hc in config.require_workers()}
    try:
        for name, pid in smap:
            print(f"trivial task ran on {name} (pid {pid})")
    except TaskError as exc:
        print(f"trivial task FAILED: {exc}")
        return 1
    ran = {t.task_no for t in smap.monitor.tasks}
    missing = [host for no, host in hosts.items() if no not in ran]
    for record in smap.monitor.tasks:
        print(f"  task {record.task_no} -> workerpool {hosts[record.task_no]}: ok "
              f"({record.time_sec * 1000:.1f} ms)")
    return 1 if missing else 0
