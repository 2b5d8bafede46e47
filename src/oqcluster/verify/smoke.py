"""The smoke calculation: the engine's demo, run on the master in zmq mode.

It passes for a worker only when the worker computed at least one task: the engine reports
the tasks per host_cores address (``oqz run demo --json``: ``"tasks_per_host"``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from oqcluster.verify.context import Context
from oqcluster.verify.results import (
    ENGINE_RELEASE_FIX,
    CheckResult,
    failed,
    json_object,
    last_lines,
    passed,
)
from oqcluster.verify.smoke_openquake import smoke_openquake

TASKS_PER_WORKER = 4
TIMEOUT_SECONDS = 120


def smoke_calculation(ctx: Context) -> Iterator[CheckResult]:
    """The flavor's smoke calculation: the bundled engine's demo, or the real engine's."""
    if ctx.setting("oq_engine_flavor") == "openquake":
        yield from smoke_openquake(ctx)
    else:
        yield from smoke_oqzmq(ctx)


def smoke_oqzmq(ctx: Context) -> Iterator[CheckResult]:
    user = ctx.setting("oq_user")
    config = f"{ctx.setting('oq_config_dir')}/openquake.cfg"
    oqz = f"{ctx.setting('oq_venv_dir')}/bin/oqz"
    tasks = TASKS_PER_WORKER * max(1, len(ctx.workers))
    started = time.monotonic()
    out = ctx.master.run_as(
        user, "OQ_CONFIG_FILE=%s timeout %s %s run demo --size tiny --tasks %s "
        "--distribute zmq --json", config, TIMEOUT_SECONDS, oqz, tasks,
    )
    seconds = time.monotonic() - started
    check = f"smoke calculation (oqz run demo, {tasks} tasks, zmq)"
    if out.rc != 0:
        yield failed(ctx.master.name, check, "exit 0", last_lines(out.stdout + out.stderr),
                     f"on {ctx.master.name} as {user}: oqz workers status; oqz workers start; "
                     "then OQ_CONFIG_FILE=... oqz run demo --size tiny")
        return
    outcome = read_demo_outcome(out.stdout)
    if outcome is None:
        yield failed(ctx.master.name, check, "the JSON of oqz run demo --json",
                     last_lines(out.stdout + out.stderr), ENGINE_RELEASE_FIX)
        return
    counts = outcome["tasks_per_host"]
    yield passed(ctx.master.name, check, f"done in {seconds:.1f}s: " + _summary(counts), seconds)
    for worker in ctx.workers:
        done = counts.get(worker.address, 0)
        worker_check = "computed tasks of the smoke calculation"
        if done > 0:
            yield passed(worker.name, worker_check, f"{done} task(s)")
        else:
            yield failed(worker.name, worker_check, "at least 1 task", "0 tasks",
                         f"is {worker.address} in [zworkers] host_cores and its workerpool "
                         f"running? on {ctx.master.name}: oqz workers status")


def read_demo_outcome(stdout: str) -> dict[str, Any] | None:
    """What `oqz run demo --json` printed (calc_id, datastore, checksum, tasks_per_host
    {address: tasks}...), None when it printed no such JSON."""
    outcome = json_object(stdout)
    if outcome is None or not isinstance(outcome.get("tasks_per_host"), dict):
        return None
    return outcome


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{host}: {n}" for host, n in sorted(counts.items())) or "no task counts"
