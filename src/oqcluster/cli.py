"""The `oqcluster` command line.

How subcommands are registered (the same way as the engine's `oqz`, see oqzmq.cli):

1. Write a module that defines::

       def register(subparsers: argparse._SubParsersAction) -> None:
           parser = subparsers.add_parser("NAME", help="...")
           ...                                  # its own options
           parser.set_defaults(handler=run)

       def run(args: argparse.Namespace) -> int:   # the exit code
           ...

2. Append the module's dotted name to COMMAND_MODULES below (the order of `oqcluster --help`).

Modules are imported when the parser is built, and must keep heavy imports (ansible, fabric,
testinfra) inside their functions so that `oqcluster --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from oqcluster import __version__

COMMAND_MODULES: tuple[str, ...] = (
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
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
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
