"""What the subcommands share: the -i option, loading, and how problems are shown."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape

from oqcluster.inventory import Inventory, InventoryError
from oqcluster.project import Project, ProjectNotFound, find_project
from oqcluster.rules import Problem, validate

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandError(RuntimeError):
    """A failure the user fixes by changing the command line or the environment."""


Handler = Callable[[argparse.Namespace], int]


def add_command(
    subparsers: argparse._SubParsersAction, name: str, *, help: str, description: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    """A subcommand that reads an inventory (-i and the vault options), run by `handler`."""
    parser = subparsers.add_parser(name, help=help, description=description)
    add_inventory_argument(parser)
    parser.set_defaults(handler=handler)
    return parser


def add_inventory_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--inventory", action="append", required=True, metavar="INV",
        help="inventory file or directory, any format Ansible reads (repeatable)",
    )
    parser.add_argument(
        "--vault-password-file", action="append", default=[], metavar="FILE",
        help="vault password file for vaulted inventory values (as ansible-playbook; "
        "ansible.cfg's vault_password_file is used too)",
    )
    parser.add_argument("--ask-vault-pass", action="store_true", help="ask for the vault password")


def load(args: argparse.Namespace) -> tuple[Project, Inventory]:
    """The project and the inventory named by -i, or a CommandError that says what to do."""
    try:
        project = find_project()
        return project, Inventory(
            list(args.inventory), project.defaults,
            vault_password_files=list(args.vault_password_file), ask_vault_pass=args.ask_vault_pass,
        )
    except (ProjectNotFound, InventoryError) as error:
        raise CommandError(str(error)) from error


def on_valid_inventory(
    args: argparse.Namespace, doing: str, body: Callable[[Project, Inventory], int]
) -> int:
    """Load the inventory of -i and run `body` on it, unless it cannot be loaded (a usage
    error) or breaks a rule: then its problems go to stderr and nothing is `doing`."""
    try:
        project, inventory = load(args)
        problems = validate(inventory.cluster_data())
        if problems:
            console = stderr()
            print_problems(console, problems)
            console.print(f"[bold red]not {doing}:[/] {len(problems)} problem(s) in the "
                          "inventory; fix it first (oqcluster check)")
            return EXIT_FAILED
        return body(project, inventory)
    except CommandError as error:
        return fail(str(error))


# soft_wrap: long paths and commands stay on one line, so they can be copied.
def stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_problems(console: Console, problems: Sequence[Problem]) -> None:
    for problem in problems:
        where = f"[bold]{escape(problem.host)}[/] · {escape(problem.variable)}"
        console.print(f"[bold red]✗[/] {where}")
        console.print(f"    {escape(problem.message)}")
        console.print(f"    [cyan]fix:[/] {escape(problem.fix)}")


def problems_json(problems: Sequence[Problem]) -> str:
    return json.dumps(
        [
            {"host": p.host, "variable": p.variable, "message": p.message, "fix": p.fix}
            for p in problems
        ],
        indent=2,
    )


def fail(message: str) -> int:
    stderr().print(f"[bold red]error:[/] {escape(message)}")
    return EXIT_USAGE


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
