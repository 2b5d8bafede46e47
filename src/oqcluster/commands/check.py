"""`oqcluster check -i INV`: validate the inventory without touching any host."""

from __future__ import annotations

import argparse

from oqcluster.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    add_command,
    fail,
    load,
    print_problems,
    problems_json,
    stdout,
    write_stdout,
)
from oqcluster.rules import validate


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "check",
        handler=run,
        help="validate an inventory without touching any host",
        description="Apply the preflight rules (the same as playbooks/preflight.yml) to the "
        "inventory and print every problem with host, variable and fix. Exit 0 only when clean.",
    )
    parser.add_argument("--json", action="store_true", help="print the problems as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        _, inventory = load(args)
    except CommandError as error:
        return fail(str(error))
    cluster = inventory.cluster_data()
    problems = validate(cluster)
    if args.json:
        write_stdout(problems_json(problems) + "\n")
        return EXIT_FAILED if problems else EXIT_OK
    console = stdout()
    if problems:
        print_problems(console, problems)
        console.print(f"[bold red]{len(problems)} problem(s)[/] in {', '.join(args.inventory)}")
        return EXIT_FAILED
    console.print(
        f"[bold green]✓[/] {', '.join(args.inventory)}: 1 master, "
        f"{len(cluster.workers)} worker(s), no problems"
    )
    return EXIT_OK
