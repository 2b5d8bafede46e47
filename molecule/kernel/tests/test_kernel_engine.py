"""The engine's demo calculation on the real-kernel cluster: run from the master in zmq mode
on the pools the workers' units run (`oqz workers start` finds them answering), tasks computed
on every worker, the datastore written on the master and visible on the workers over NFS."""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.nodetests.expect import expect
from oqcluster.verify.smoke import read_demo_outcome

TASKS_PER_WORKER = 4
FIX = "as openquake on the master: oqz workers status; journalctl -u openquake-dbserver"


@pytest.fixture
def engine(cluster: Any) -> Any:
    oq = cluster.settings(cluster.master)
    master = cluster.node(cluster.master)
    prefix = (f"runuser -u {oq['oq_user']} -- env OQ_CONFIG_FILE={oq['oq_config_dir']}"
              f"/openquake.cfg {oq['oq_venv_dir']}/bin/oqz")

    def oqz(arguments: str) -> Any:
        return master.run(f"{prefix} {arguments}")

    return oqz


@pytest.mark.usefixtures("on_master")
def test_the_demo_runs_across_every_worker(cluster: Any, engine: Any) -> None:
    started = engine("workers start")
    expect(started.rc == 0, "oqz workers start (over ssh as openquake) succeeds",
           (started.stdout + started.stderr).strip()[-300:], FIX)
    tasks = TASKS_PER_WORKER * len(cluster.remote_workers())
    run = engine(f"run demo --size tiny --tasks {tasks} --distribute zmq --json")
    output = run.stdout + run.stderr
    expect(run.rc == 0, "oqz run demo exits 0", output.strip()[-300:], FIX)
    outcome = read_demo_outcome(run.stdout)
    expect(outcome is not None, "oqz run demo --json prints its outcome", output.strip()[-300:],
           FIX)
    counts = outcome["tasks_per_host"]
    for worker in cluster.remote_workers():
        address = cluster.address(worker)
        expect(counts.get(address, 0) > 0, f"{worker} ({address}) computed tasks",
               str(counts), FIX)
    datastore = outcome["datastore"]
    user = cluster.settings(cluster.master)["oq_user"]
    for worker in cluster.remote_workers():
        seen = cluster.node(worker).run("runuser -u %s -- test -s %s", user, datastore)
        expect(seen.rc == 0, f"{datastore} visible to openquake on {worker} (NFS)",
               "missing or empty", "check the NFS mounts: findmnt -t nfs4")
