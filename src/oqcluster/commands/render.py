"""`oqcluster render -i INV [--host H] [--out DIR]`: openquake.cfg per node."""

from __future__ import annotations

import argparse
from pathlib import Path

from oqcluster.commands.common import (
    EXIT_OK,
    CommandError,
    add_command,
    on_valid_inventory,
    stderr,
    write_stdout,
)
from oqcluster.inventory import Inventory
from oqcluster.project import Project
from oqcluster.render import render_config, write_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "render", handler=run,
        help="render openquake.cfg for each node, as the role writes it",
        description="Render templates/openquake.cfg.j2 for the cluster's nodes with the same "
        "templating as the role. Without --out, print to stdout (one node: the bare file).",
    )
    parser.add_argument("--host", action="append", metavar="H",
                        help="only this inventory host (repeatable); default: every node")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write DIR/<host>/openquake.cfg (mode 0600) instead of printing")


def run(args: argparse.Namespace) -> int:
    def render(project: Project, inventory: Inventory) -> int:
        hosts = _selected_hosts(inventory.cluster_data().cluster_hosts(), args.host)
        for host in hosts:
            text = render_config(inventory, host, project.template)
            _emit(host, text, args.out, several=len(hosts) > 1)
        return EXIT_OK

    return on_valid_inventory(args, "rendering", render)


def _selected_hosts(nodes: list[str], wanted: list[str] | None) -> list[str]:
    if not wanted:
        return nodes
    unknown = [host for host in wanted if host not in nodes]
    if unknown:
        raise CommandError(
            f"--host {', '.join(unknown)}: not a master or worker of this inventory "
            f"(nodes: {', '.join(nodes)})"
        )
    return wanted


def _emit(host: str, text: str, out: Path | None, several: bool) -> None:
    if out is not None:
        path = write_config(out, host, text)
        stderr().print(f"[green]wrote[/] {path}")
    elif several:
        write_stdout(f"==> {host} <==\n{text}\n")
    else:
        write_stdout(text)
