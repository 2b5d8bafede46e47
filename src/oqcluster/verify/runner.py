"""Runs the node tests (each node's checks, and the cross-node checks from the master), the
check from outside the cluster and the smoke calculation, with progress."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from oqcluster.nodetests.cluster import READ_ONLY_ENV, SESSIONS_ENV, WORKERS_ENV
from oqcluster.verify.context import Context
from oqcluster.verify.nodes import CLUSTER_TESTS, run_node_tests, split_hosts
from oqcluster.verify.outside import refused_from_outside
from oqcluster.verify.remote import Node, sessions_per_host
from oqcluster.verify.results import CheckResult, Status, not_checked
from oqcluster.verify.smoke import smoke_calculation

CheckFunction = Callable[[Context], Iterable[CheckResult]]
OUTSIDE = "ports: outside the cluster"


def guarded(label: str, check: CheckFunction, ctx: Context) -> list[CheckResult]:
    """The check's results, or one ERROR result saying why the check could not run."""
    try:
        return list(check(ctx))
    except Exception as error:  # a broken connection must not hide the other checks
        return [CheckResult(
            "cluster", label, Status.ERROR, "the check to run", f"{type(error).__name__}: {error}",
            "are all hosts reachable? ansible -i INV all -m ping",
        )]


def reachability(ctx: Context, pool: ThreadPoolExecutor) -> list[CheckResult]:
    """One ERROR per node that cannot be reached; those nodes leave the context."""
    nodes = ctx.nodes
    answers = dict(zip((n.name for n in nodes), pool.map(_answers, nodes), strict=True))
    unreachable = {name: why for name, why in answers.items() if why}
    ctx.workers = [w for w in ctx.workers if w.name not in unreachable]
    ctx.selected = frozenset(ctx.selected - unreachable.keys())
    return [
        CheckResult(name, "reachable", Status.ERROR, "a shell on the node", why,
                    f"ansible -i {ctx.inventory_path} {name} -m ping (connection settings, "
                    "is the host up?)")
        for name, why in unreachable.items()
    ]


def _answers(node: Node) -> str:
    """'' when a command runs on the node, else what went wrong."""
    try:
        out = node.run("true")
    except Exception as error:  # any backend failure means: not reachable
        result = error.args[0] if error.args else None  # testinfra raises with the result
        if hasattr(result, "stderr") and str(result.stderr).strip():
            return str(result.stderr).strip()
        return f"{type(error).__name__}: {error}"
    return "" if out.rc == 0 else (out.text or f"exit code {out.rc}")


def run_all(
    ctx: Context, project_root: Path, jobs: int, console: Console,
    vault_password_file: str | None = None, read_only: bool = False, smoke: bool = True,
) -> list[CheckResult]:
    """Every result, by host: the node tests (each node's in runs of several hosts, the
    cross-node ones in a run of their own on the master) and the outside check at once,
    then the smoke run."""
    with _progress(console) as progress, ThreadPoolExecutor(max_workers=jobs) as pool:
        task = progress.add_task("reaching the nodes", total=1)
        unreachable = reachability(ctx, pool)
        progress.update(task, completed=1)
        if ctx.master.name in {r.host for r in unreachable}:
            return sorted_by_host(unreachable, ctx)  # every other check goes through it
        selected = [node.name for node in ctx.nodes if node.name in ctx.selected]
        node_futures = [
            _tracked(progress, pool, f"node checks on {', '.join(hosts)}",
                     lambda hosts=hosts: run_node_tests(ctx.inventory_path, hosts,
                                                        project_root, vault_password_file))
            for hosts in split_hosts(selected, jobs)
        ]
        cluster_future = _tracked(
            progress, pool, "cluster checks (from the master)",
            lambda: run_node_tests(ctx.inventory_path, [ctx.master.name], project_root,
                                   vault_password_file, CLUSTER_TESTS,
                                   cluster_env(ctx, read_only)))
        futures = [*node_futures, cluster_future]
        if not read_only:  # the outside check opens temporary listeners on the nodes
            futures.append(_tracked(progress, pool, f"cluster: {OUTSIDE}",
                                    lambda: guarded(OUTSIDE, refused_from_outside, ctx)))
        results = unreachable + [r for future in futures for r in future.result()]
        if read_only:
            results.append(not_checked("cluster", OUTSIDE,
                                       "--read-only: this check writes on the nodes",
                                       "run verify without --read-only", security=True))
        # after the cross-node tests, not along: the receiver check may borrow a live
        # calculation's receiver port, which the smoke calculation closes when it ends
        if smoke and not read_only:
            future = _tracked(progress, pool, "smoke calculation",
                              lambda: guarded("smoke calculation", smoke_calculation, ctx))
            results += future.result()
        else:
            why = "--read-only" if read_only else "--no-smoke"
            results.append(not_checked("cluster", "smoke calculation", f"{why} was given",
                                       f"run verify without {why}"))
    return sorted_by_host(results, ctx)


def cluster_env(ctx: Context, read_only: bool) -> dict[str, str]:
    """What the cross-node tests learn from verify: the workers to probe (reached, within
    --limit), --read-only and --sessions-per-host."""
    env = {WORKERS_ENV: ",".join(worker.name for worker in ctx.workers),
           SESSIONS_ENV: str(sessions_per_host())}
    if read_only:
        env[READ_ONLY_ENV] = "1"
    return env


def sorted_by_host(results: list[CheckResult], ctx: Context) -> list[CheckResult]:
    order = {node.name: index for index, node in enumerate(ctx.nodes)}
    return sorted(results, key=lambda r: order.get(r.host, len(order)))


def _tracked(
    progress: Progress, pool: ThreadPoolExecutor, label: str,
    work: Callable[[], list[CheckResult]],
) -> Future[list[CheckResult]]:
    task = progress.add_task(label, total=1)
    started = time.monotonic()
    future = pool.submit(work)
    future.add_done_callback(lambda done: _finished(progress, task, label, done, started))
    return future


def _finished(
    progress: Progress, task: TaskID, label: str, done: Future[list[CheckResult]],
    started: float,
) -> None:
    progress.update(task, completed=1)
    if not progress.console.is_terminal and done.exception() is None:
        # no live display in CI logs: one line per finished step instead
        results = done.result()
        bad = sum(not r.ok for r in results)
        progress.console.print(f"{label}: {len(results) - bad} ok, {bad} failed or not checked "
                               f"({time.monotonic() - started:.1f}s)")


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=10),
        TimeElapsedColumn(), console=console, transient=True,
    )
