"""``oqz dbserver start|stop|status``: the master's calculation database service."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from oqzmq.commands import add_service
from oqzmq.config import load_config
from oqzmq.dbserver import DbClient, DbServerError, db_file, ping, serve


def register(subparsers: argparse._SubParsersAction) -> None:
    actions, start = add_service(
        subparsers,
        "dbserver",
        help="run, stop or check the dbserver (calculation records and logs, port 1908)",
        description="The dbserver keeps calculation records, logs and task timings in SQLite "
        "([dbserver] file) and serves them to key holders on [dbserver] listen:port.",
    )
    start.add_argument("--db", type=Path, help="SQLite file instead of [dbserver] file")
    start.set_defaults(handler=run_start)
    stop = actions.add_parser("stop", help="ask the running dbserver to stop")
    stop.set_defaults(handler=run_stop)
    status = actions.add_parser(
        "status", help="exit 0 if the dbserver answers an authenticated ping, 1 otherwise"
    )
    status.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (3)")
    status.set_defaults(handler=run_status)


def run_start(args: argparse.Namespace) -> int:
    config = load_config()
    serve(config, args.db or db_file(config))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    config = load_config()
    with DbClient(config, timeout=3.0) as client:
        client.call("stop")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ping(config, timeout=0.5)
        except DbServerError:
            print(f"dbserver at {client.address} stopped")
            return 0
    print(f"oqz: error: the dbserver at {client.address} is still answering", file=sys.stderr)
    return 1


def run_status(args: argparse.Namespace) -> int:
    config = load_config()
    try:
        info = ping(config, timeout=args.timeout)
    except DbServerError as exc:
        print(f"dbserver not running: {exc}", file=sys.stderr)
        return 1
    print(
        f"dbserver running at tcp://{config.db_host}:{config.db_port}: oqz {info['version']}, "
        f"pid {info['pid']} on {info['host']}, database {info['db']}, "
        f"multi_user={'true' if info['multi_user'] else 'false'}"
    )
    return 0
