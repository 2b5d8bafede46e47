"""``oqz workers start|stop|kill|status|inspect|debug|bench``: the workerpools of host_cores."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from oqzmq import launcher
from oqzmq.config import Config, load_config
from oqzmq.errors import TaskError, UserError
from oqzmq.parallel import Starmap
from oqzmq.protocol import InspectQuery, Kill, PoolStatus, StatusQuery, Stop
from oqzmq.tasks import echo, filled, hostinfo

ACTIONS = ("start", "stop", "kill", "status", "inspect", "debug", "bench")
BYTES_PER_FLOAT = 8


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "workers", help="manage the workerpools of [zworkers] host_cores",
        description="start|stop|kill|status|inspect|debug|bench the workerpools "
                    "(run on the master)",
    )
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--launcher", choices=launcher.LAUNCHERS, default="auto",
                        help="how `start` launches pools (default: local for loopback, ssh)")
    parser.add_argument("--python", default=launcher.REMOTE_PYTHON,
                        help="python of the engine venv on the workers (ssh launcher)")
    parser.add_argument("--ssh-user", default=launcher.SSH_USER)
    parser.add_argument("--wait", type=float, default=15.0,
                        help="seconds to wait for started pools to answer")
    parser.add_argument("--json", action="store_true", help="status, bench: print JSON")
    parser.add_argument("--tiny", type=int, default=20_000, metavar="N",
                        help="bench: N tiny tasks (tasks/s: the cost per task)")
    parser.add_argument("--large", type=int, default=20, metavar="N",
                        help="bench: N tasks each returning --large-mb MB (MB/s to the master)")
    parser.add_argument("--large-mb", type=int, default=50, metavar="MB")
    parser.add_argument("--repeat", type=int, default=3, help="bench: best of this many runs")
    parser.set_defaults(handler=run_workers)


def run_workers(args: argparse.Namespace) -> int:
    if args.json and args.action not in ("status", "bench"):
        raise UserError(f"--json goes with status or bench, not {args.action}")
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
        return _status(config, args.json)
    if args.action == "inspect":
        return _inspect(config)
    if args.action == "bench":
        return _bench(config, args)
    return _debug(config, args)


def _print_reports(reports: list[launcher.HostReport]) -> int:
    for report in reports:
        print(f"{report.host:<20} {'ok' if report.ok else 'FAILED':<7} {report.detail}")
    return 0 if all(r.ok for r in reports) else 1


def _status(config: Config, as_json: bool) -> int:
    """Per host: worker processes busy (running), in all (total), tasks queued; or why the
    pool does not answer. Exit 1 when one does not."""
    replies = launcher.query_pools(config, StatusQuery(), timeout=3.0)
    states = [_pool_state(host, reply, config) for host, reply in replies.items()]
    if as_json:
        print(json.dumps({"workerpools": states}, indent=2))
    else:
        print(f"{'host':<20} {'running':>7} {'total':>5} {'queued':>6}")
        for state in states:
            print(_status_line(state))
    return 0 if all(state["answers"] for state in states) else 1


def _pool_state(host: str, reply: PoolStatus | None, config: Config) -> dict[str, Any]:
    """What ``oqz workers status --json`` says about one host (the same keys for every host:
    the counts None when the pool does not answer, ``why`` None when it does)."""
    if reply is None:
        return {"host": host, "answers": False, "running": None, "total": None, "queued": None,
                "why": launcher.diagnose_port(host, config.ctrl_port)}
    return {"host": host, "answers": True, "running": reply.running, "total": reply.total,
            "queued": reply.queued, "why": None}


def _status_line(state: dict[str, Any]) -> str:
    host = state["host"]
    if not state["answers"]:
        return f"{host:<20} {'-':>7} {'-':>5} {'-':>6}  not running: {state['why']}"
    return f"{host:<20} {state['running']:>7} {state['total']:>5} {state['queued']:>6}"


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


def _bench(config: Config, args: argparse.Namespace) -> int:
    """Tiny tasks/s and large results' MB/s from the workerpools to this host, best of
    ``--repeat`` runs: the engine's figures on this cluster's network (``make bench`` gives
    them on loopback, beside other engines)."""
    if min(args.tiny, args.large, args.large_mb, args.repeat) < 1:
        raise UserError("--tiny, --large, --large-mb and --repeat must be at least 1")
    n_floats = args.large_mb * 1_000_000 // BYTES_PER_FLOAT
    tiny = _best(args.repeat, lambda: _bench_tiny(config, args.tiny))
    large = _best(args.repeat, lambda: _bench_large(config, args.large, n_floats))
    tiny["tasks_per_s"] = args.tiny / tiny["seconds"]
    large["mb_per_s"] = args.large * n_floats * BYTES_PER_FLOAT / 1e6 / large["seconds"]
    if args.json:
        print(json.dumps({"tiny": tiny, "large": large, "repeat": args.repeat}, indent=2))
        return 0
    print(f"tiny tasks:    {args.tiny} in {tiny['seconds']:.2f} s: "
          f"{tiny['tasks_per_s']:,.0f} tasks/s (best of {args.repeat})")
    print(f"large results: {args.large} x {args.large_mb} MB in {large['seconds']:.2f} s: "
          f"{large['mb_per_s']:,.0f} MB/s (best of {args.repeat})")
    for name, row in (("tiny", tiny), ("large", large)):
        hosts = ", ".join(f"{host} {count}" for host, count in row["tasks_per_host"].items())
        print(f"  {name} tasks per host: {hosts}")
    return 0


def _best(repeat: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return min((run() for _ in range(repeat)), key=lambda row: row["seconds"])


def _bench_tiny(config: Config, n: int) -> dict[str, Any]:
    allargs = [(i,) for i in range(n)]
    start = time.perf_counter()  # Starmap sends the tasks as it is built
    smap = Starmap(echo, allargs, distribute="zmq", config=config)
    total = sum(smap)
    seconds = time.perf_counter() - start
    if total != n * (n - 1) // 2:
        raise TaskError(f"oqz workers bench: the tiny tasks' results sum to {total}, "
                        f"not {n * (n - 1) // 2}")
    return {"seconds": seconds, "tasks_per_host": _tasks_per_host(smap)}


def _bench_large(config: Config, n: int, n_floats: int) -> dict[str, Any]:
    start = time.perf_counter()
    smap = Starmap(filled, [(n_floats, i) for i in range(n)], distribute="zmq", config=config)
    firsts = sorted(float(array[0]) for array in smap if len(array) == n_floats)
    seconds = time.perf_counter() - start
    if firsts != [float(i) for i in range(n)]:
        raise TaskError(f"oqz workers bench: {len(firsts)} of {n} large results came back whole")
    return {"seconds": seconds, "tasks_per_host": _tasks_per_host(smap)}


def _tasks_per_host(smap: Starmap) -> dict[str, int]:
    return dict(sorted(Counter(record.host for record in smap.monitor.tasks).items()))
