"""The smoke calculation of a real-engine cluster (oq_engine_flavor: openquake).

Two runs of the real OpenQuake engine, as its user on the master, in zmq mode:
1. a reach probe: the engine starts the workerpools over ssh (`WorkerMaster.start`, as
   `oq workers start` does), runs tiny tasks of its own through its zmq Starmap and reports
   which hosts computed them (the engine's own (hostname, pid) per finished task); it passes
   for a worker only when that worker computed at least one task;
2. a hazard calculation that ships with the engine (qa_tests_data classical/case_01) with
   `oq engine --run`, which must complete.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from oqcluster.verify.context import Context
from oqcluster.verify.remote import Node
from oqcluster.verify.results import CheckResult, failed, last_lines, passed

TASKS_PER_WORKER = 4
TIMEOUT_SECONDS = 600  # a first run compiles the engine's numba functions on every node
JOB = "openquake/qa_tests_data/classical/case_01/job.ini"

# Runs with the venv's Python as the engine's user; prints {"hosts": [...], "status": [...]}.
REACH_PROBE = """
import json, sys
from openquake.baselib import config, parallel, workerpool
from openquake.calculators.event_based import count_ruptures
master = workerpool.WorkerMaster(config.zworkers)
master.start()
try:
    status = master.wait(300)
    smap = parallel.Starmap(count_ruptures, [([],) for _ in range(int(sys.argv[1]))],
                            distribute="zmq")
    smap.reduce()
    hosts = sorted({host for host, _pid in smap.busytime})
finally:
    master.stop()
print(json.dumps({"hosts": hosts, "status": [list(s) for s in status]}))
"""


def smoke_openquake(ctx: Context) -> Iterator[CheckResult]:
    yield from _reach_probe(ctx)
    yield from _hazard_job(ctx)


def _engine_env(ctx: Context) -> str:
    return f"OQ_CONFIG_FILE={ctx.setting('oq_config_dir')}/openquake.cfg timeout {TIMEOUT_SECONDS}"


def _reach_probe(ctx: Context) -> Iterator[CheckResult]:
    user, python = ctx.setting("oq_user"), f"{ctx.setting('oq_venv_dir')}/bin/python"
    tasks = TASKS_PER_WORKER * max(1, len(ctx.workers))
    check = f"smoke: the real engine's zmq Starmap ({tasks} tasks)"
    started = time.monotonic()
    out = ctx.master.run_as(user, f"{_engine_env(ctx)} {python} -c %s %s", REACH_PROBE, tasks)
    seconds = time.monotonic() - started
    report = _last_json(out.stdout)
    if out.rc != 0 or report is None:
        yield failed(ctx.master.name, check, "exit 0 and a report",
                     last_lines(out.stdout + out.stderr),
                     f"on {ctx.master.name} as {user}: oq workers start; oq workers status "
                     "(ssh to each worker must work without a prompt)")
        return
    hosts = set(report["hosts"])
    yield passed(ctx.master.name, check, f"done in {seconds:.1f}s on {', '.join(sorted(hosts))}",
                 seconds)
    for worker in ctx.workers:
        yield _worker_result(worker, hosts)


def _worker_result(worker: Node, hosts: set[str]) -> CheckResult:
    hostname = worker.run("hostname").stdout.strip()
    check = "computed tasks of the real engine's smoke run"
    if hostname in hosts:
        return passed(worker.name, check, f"as {hostname}")
    return failed(worker.name, check, f"tasks computed on {hostname or worker.name}",
                  f"only on {', '.join(sorted(hosts)) or 'no host'}",
                  f"is {worker.address} in [zworkers] host_cores, and does its workerpool start "
                  "over ssh? on the master as the engine's user: oq workers start; "
                  "oq workers status")


def _hazard_job(ctx: Context) -> Iterator[CheckResult]:
    user, venv = ctx.setting("oq_user"), ctx.setting("oq_venv_dir")
    site = ctx.master.run(f"{venv}/bin/python -c %s",
                          "import openquake, os; print(os.path.dirname(openquake.__path__[0]))")
    job = f"{site.stdout.strip()}/{JOB}"
    check = "smoke: oq engine --run classical/case_01 (qa_tests_data)"
    started = time.monotonic()
    out = ctx.master.run_as(user, f"{_engine_env(ctx)} {venv}/bin/oq engine --run %s", job)
    seconds = time.monotonic() - started
    if out.rc == 0:
        yield passed(ctx.master.name, check, f"completed in {seconds:.0f}s", seconds)
    else:
        yield failed(ctx.master.name, check, "the calculation completes",
                     last_lines(out.stdout + out.stderr),
                     f"on {ctx.master.name} as {user}: oq engine --run {job}; "
                     "journalctl -u openquake-dbserver")


def _last_json(stdout: str) -> dict[str, list[str]] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None
