"""The `oqcluster` command line.

Registration pattern: every subcommand is a module that exposes

    def add_parser(subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser("NAME", help="...")
        ...                                 # its own options
        parser.set_defaults(func=run)       # run(args: argparse.Namespace) -> int (exit code)

and is listed in SUBCOMMANDS by import path. Modules are imported when the parser is built,
and must keep heavy imports (ansible, fabric, testinfra) inside their functions so that
`oqcluster --help` stays fast. A module that does not exist yet (e.g. oqcluster.demo while
it is being written) is left out of the CLI instead of breaking it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from oqcluster import __version__

SUBCOMMANDS = (
    "oqcluster.commands.check",
    "oqcluster.commands.render",
    "oqcluster.commands.verify",
    "oqcluster.demo",
)


EPILOG = """\
typical use:
  oqcluster check  -i inventories/mine          validate the inventory, touch nothing
  ansible-playbook site.yml -i inventories/mine
  oqcluster verify -i inventories/mine          prove the cluster works
  oqcluster render -i inventories/mine --host oq-worker1

exit codes: 0 all good, 1 problems found (each with host, expected/found and fix),
2 the command could not run (bad option, missing inventory, missing secret)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oqcluster",
        description="Provision, check and verify OpenQuake-style zmq compute clusters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"oqcluster {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMANDS:
        module = _optional_module(module_name)
        if module is not None:
            module.add_parser(subparsers)
    return parser


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name:
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not _is_ansible_error(error):
            raise
        message = getattr(error, "message", None) or str(error)
        print(f"error: {message}", file=sys.stderr)
        return 2


def _is_ansible_error(error: Exception) -> bool:
    """Ansible's own errors (templating, lookups, parsing) are the user's to fix: no traceback."""
    from ansible.errors import AnsibleError

    return isinstance(error, AnsibleError)


if __name__ == "__main__":
    sys.exit(main())
