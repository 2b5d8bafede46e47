"""Subcommands of ``oqz``: one module per command, see :mod:`oqzmq.cli`."""

from __future__ import annotations

import argparse


def add_service(
    subparsers: argparse._SubParsersAction, name: str, *, help: str, description: str
) -> tuple[argparse._SubParsersAction, argparse.ArgumentParser]:
    """``oqz NAME ACTION`` for a service of the master (the dbserver, the webui): its
    actions, and its ``start``, which runs in the foreground (systemd: Type=notify)."""
    parser = subparsers.add_parser(name, help=help, description=description)
    actions = parser.add_subparsers(dest=f"{name}_action", metavar="ACTION", required=True)
    start = actions.add_parser(
        "start", help="run in the foreground (systemd: Type=notify), until SIGTERM"
    )
    return actions, start
