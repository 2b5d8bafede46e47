"""`oqcluster verify -i INV`: prove the cluster works, and say exactly what is broken."""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from oqcluster.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_command,
    fail,
    on_valid_inventory,
    stderr,
    stdout,
    write_stdout,
)
from oqcluster.inventory import Inventory
from oqcluster.project import Project
from oqcluster.render import SecretMissing, render_existing_config
from oqcluster.verify.remote import SESSIONS_PER_HOST, limit_sessions
from oqcluster.verify.results import verdict

# Said with every report on a real-engine cluster: what the firewall cannot fix.
OPENQUAKE_RISK = (
    "note: this cluster runs the real OpenQuake engine, whose zmq messages (ports "
    "{dbserver}, {ctrl}, {receivers}) are unauthenticated pickles. The firewall admits them "
    "only from cluster addresses ({ctrl}: from the master only), but any process on a "
    "cluster node can still send one and run code as {user}. Give shell access to cluster "
    "nodes only to people you would trust with the {user} account."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "verify", handler=run,
        help="check a provisioned cluster: nodes, ports, ssh, NFS, config, smoke calculation",
        description="Run the node test modules on every host (testinfra, in parallel), the "
        "cluster checks from the right vantage points and a smoke calculation. Each check "
        "passes, fails, was not checked (with the reason) or is not for that node. Exit 0 "
        "only when nothing failed and every security check (exports, firewall, ssh pinning, "
        "authentication) ran; every failure says what was expected, what was found and "
        "what fixes it.",
    )
    parser.add_argument("--limit", metavar="PATTERN",
                        help="Ansible host pattern: only these hosts' checks (the master is "
                        "still used to reach the workers)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML")
    parser.add_argument("--no-smoke", action="store_true",
                        help="skip the smoke calculation")
    parser.add_argument("--read-only", action="store_true",
                        help="change nothing on the nodes: skip the smoke calculation, the "
                        "shared-dir write test and the temporary receiver listener")
    parser.add_argument("--allow-unchecked", action="store_true",
                        help="exit 0 even when security checks could not run (they are still "
                        "reported as not checked)")
    parser.add_argument("--jobs", type=int, default=8, help="checks run at once (default 8)")
    parser.add_argument("--sessions-per-host", type=int, default=SESSIONS_PER_HOST,
                        metavar="N",
                        help="commands run at once on one host (default "
                        f"{SESSIONS_PER_HOST}: below sshd's MaxSessions, 10 by default)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show what every passing check found, and the checks not for "
                        "their node")


def run(args: argparse.Namespace) -> int:
    if len(args.inventory) != 1:
        return fail("verify takes exactly one -i INV (testinfra reads a single inventory)")
    return on_valid_inventory(args, "verifying", partial(_verify, args))


def _verify(args: argparse.Namespace, project: Project, inventory: Inventory) -> int:
    from oqcluster.verify import report
    from oqcluster.verify.context import build_context
    from oqcluster.verify.runner import run_all

    try:
        render_existing_config(inventory, inventory.model().master, project.template)
    except SecretMissing as error:
        return fail(str(error))
    limit_sessions(max(1, args.sessions_per_host))
    started = time.monotonic()
    ctx = build_context(args.inventory[0], inventory, args.limit)
    vault_file = args.vault_password_file[0] if args.vault_password_file else None
    results = run_all(ctx, project.root, max(1, args.jobs), stderr(), vault_file,
                      read_only=args.read_only, smoke=not args.no_smoke)
    seconds = time.monotonic() - started
    allow = args.allow_unchecked
    if args.junit:
        report.write_junit(args.junit, results, allow)
    if args.json:
        write_stdout(report.to_json(results, seconds, allow) + "\n")
    else:
        console = stdout()
        report.print_table(console, results, args.verbose)
        console.print(report.summary_line(results, seconds, allow))
    if ctx.setting("oq_engine_flavor") == "openquake":
        stderr().print(OPENQUAKE_RISK.format(
            dbserver=ctx.setting("oq_dbserver_port"), ctrl=ctx.setting("oq_ctrl_port"),
            receivers=f"{ctx.setting('oq_receiver_port_first')}-"
                      f"{ctx.setting('oq_receiver_port_last')}",
            user=ctx.setting("oq_user")))
    return EXIT_OK if verdict(results, allow) else EXIT_FAILED
