"""``oqz list``, ``oqz abort ID`` and the ``log`` topic of ``oqz show``."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from datetime import datetime
from typing import Any

from oqzmq.config import load_config
from oqzmq.db import TERMINAL
from oqzmq.dbserver import DbClient, pid_alive
from oqzmq.errors import UserError

FOLLOW_SECONDS = 1.0


def register(subparsers: argparse._SubParsersAction) -> None:
    listing = subparsers.add_parser("list", help="list calculations, newest first")
    listing.add_argument("--limit", type=int, default=30, help="how many (default 30)")
    listing.add_argument("--user", help="only this user's (multi_user: yours only anyway)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_list)
    abort = subparsers.add_parser(
        "abort",
        help="abort a calculation: its tasks are revoked on every workerpool",
        description="Ask a running calculation to stop: its process revokes its tasks on "
        "every workerpool, frees its receiver port and marks it aborted. A calculation whose "
        "process is gone (crash, kill -9) is marked failed.",
    )
    abort.add_argument("calc_id", type=int, metavar="ID")
    abort.add_argument("--wait", type=float, default=30.0, help="seconds to wait (30)")
    abort.set_defaults(handler=run_abort)


def format_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def run_list(args: argparse.Namespace) -> int:
    with DbClient(load_config()) as client:
        answer = client.call("list_calcs", limit=args.limit, owner=args.user)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    calcs = answer["calcs"]
    if not calcs:
        print("no calculations yet: run one with `oqz run demo`")
        return 0
    print(_table(calcs))
    if answer["total"] > len(calcs):
        print(f"({len(calcs)} of {answer['total']}; --limit N shows more)")
    return 0


def _table(calcs: list[dict[str, Any]]) -> str:
    header = ("id", "status", "user", "started", "duration", "description")
    rows = [
        (
            str(c["id"]),
            c["status"],
            c["user_name"],
            format_time(c["start_time"] or c["created"]),
            format_duration(c["duration"]),
            c["description"],
        )
        for c in calcs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def run_abort(args: argparse.Namespace) -> int:
    with DbClient(load_config()) as client:
        calc = client.call("request_abort", calc_id=args.calc_id)
        if _process_is_gone(calc):
            client.call("set_status", calc_id=calc["id"], status="failed")
            print(
                f"calculation {calc['id']}: its process {calc['pid']} is not running any more "
                "on this host; marked it failed"
            )
            return 0
        final = _wait_until_finished(client, calc["id"], args.wait)
    if final is None:
        print(
            f"oqz: error: calculation {calc['id']} (pid {calc['pid']} on {calc['host']}) is "
            f"still {calc['status']} after {args.wait:g} s; its process did not react to the "
            "abort: kill it (kill -INT, then kill -9) and run `oqz abort` again",
            file=sys.stderr,
        )
        return 1
    print(f"calculation {calc['id']} {final}")
    return 0


def _process_is_gone(calc: dict[str, Any]) -> bool:
    """True only when we can tell: the process ran on this host and no longer exists."""
    if calc["host"] != socket.gethostname() or calc["pid"] <= 0:
        return False
    return not pid_alive(calc["pid"])


def _wait_until_finished(client: DbClient, calc_id: int, seconds: float) -> str | None:
    deadline = time.monotonic() + seconds
    while True:
        status = client.call("get_calc", calc_id=calc_id)["status"]
        if status in TERMINAL:
            return str(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


def show_log_topic(calc_id: int | None, args: argparse.Namespace) -> int:
    """``oqz show log [ID] [--follow]`` (no ID: the latest calculation)."""
    return show_log(calc_id, getattr(args, "follow", False))


def show_log(calc_id: int | None, follow: bool = False) -> int:
    """Print a calculation's log; with follow, until it ends."""
    with DbClient(load_config()) as client:
        if calc_id is None:
            latest = client.call("list_calcs", limit=1)["calcs"]
            if not latest:
                raise UserError("no calculations yet: run one with `oqz run demo`")
            calc_id = latest[0]["id"]
        last_id = 0
        while True:
            records = client.call("get_logs", calc_id=calc_id, after_id=last_id)
            for record in records:
                print(_log_line(record), flush=True)
                last_id = record["id"]
            if not follow or (
                not records and client.call("get_calc", calc_id=calc_id)["status"] in TERMINAL
            ):
                break
            if not records:
                time.sleep(FOLLOW_SECONDS)
    return 0


def _log_line(record: dict[str, Any]) -> str:
    stamp = datetime.fromtimestamp(record["timestamp"]).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    return f"[{stamp} #{record['calc_id']} {record['level']}] {record['message']}"
