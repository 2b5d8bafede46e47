"""The ``oqz`` command line.

How subcommands are registered (other engineers add theirs the same way; `oqcluster` registers
its subcommands the same way, see oqcluster.cli):

1. Write a module under ``oqzmq/commands/`` that defines::

       def register(subparsers: argparse._SubParsersAction) -> None:
           parser = subparsers.add_parser("list", help="...")
           parser.add_argument(...)
           parser.set_defaults(handler=run_list)

       def run_list(args: argparse.Namespace) -> int:   # the exit code
           ...

2. Append the module's dotted name to :data:`COMMAND_MODULES` below (one line, keep the
   order stable: it is the order of ``oqz --help``).

Topics of ``oqz show`` (``oqz show performance ID``, ``oqz show log ID``) are registered the
same way in :data:`oqzmq.commands.show.SHOW_TOPICS`.

Errors meant for the user are raised as :class:`oqzmq.errors.UserError` (or
:class:`oqzmq.config.ConfigError`): ``main`` prints them as ``oqz: error: ...`` with exit code
2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from oqzmq import __version__
from oqzmq.config import ConfigError
from oqzmq.errors import UserError

COMMAND_MODULES: list[str] = [
    "oqzmq.commands.run",
    "oqzmq.commands.workers",
    "oqzmq.commands.show",
    "oqzmq.commands.calcs",
    "oqzmq.commands.dbserver",
    "oqzmq.commands.webui",
    "oqzmq.commands.users",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oqz", description="oq-zmq-engine command line")
    parser.add_argument("--version", action="version", version=f"oqz {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args))
    except (UserError, ConfigError) as exc:
        print(f"oqz: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oqz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
