"""The bundled engine's workerpools answer the master's authenticated ping, from the master's
run: an open port is not enough (a pool started with another authkey listens but ignores
the master, and calculations then wait for it in vain)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from oqcluster.nodetests.cluster import config_file
from oqcluster.nodetests.test_cluster_ports import FIREWALL_FIX
from oqcluster.verify.context import Context
from oqcluster.verify.results import ENGINE_RELEASE_FIX, CheckResult, failed, json_object, passed


def workerpools_answer(ctx: Context) -> Iterator[CheckResult]:
    """Each workerpool answers the master's authenticated ping (`oqz workers status`)."""
    user, master = ctx.setting("oq_user"), ctx.master
    out = master.run_as(user, "OQ_CONFIG_FILE=%s %s workers status --json",
                        config_file(master), f"{ctx.setting('oq_venv_dir')}/bin/oqz")
    states = read_workers_status(out.stdout)
    check = "workerpool answers the master (authenticated ping)"
    if states is None:
        found = out.text or f"oqz exit code {out.rc}"
        for worker in ctx.workers:
            yield failed(worker.name, check, "the JSON of oqz workers status --json", found,
                         f"if oqz names no other problem: {ENGINE_RELEASE_FIX}")
        return
    for worker in ctx.workers:
        state = states.get(worker.address)
        if state is None:
            yield failed(worker.name, check, "a status for " + worker.address,
                         f"statuses for {', '.join(states) or 'no host'}",
                         f"on {master.name} as {user}: oqz workers status (is {worker.address} "
                         "in [zworkers] host_cores?)")
        elif state.startswith("not running"):
            yield failed(worker.name, check, "running", state,
                         pool_fix(worker.name, master.name, user, state))
        else:
            yield passed(worker.name, check, state)


def pool_fix(worker: str, master: str, user: str, state: str) -> str:
    start = f"then on {master} as {user}: oqz workers start"
    if "authenticated" in state:  # listening, deaf to the master: started with an old authkey
        return (f"the pool on {worker} runs with an old authkey and ignores stop requests: "
                f"end its oqzmq.workerpool process (user {user}) on {worker}, {start}")
    if "closed" in state:  # refused from the master: no pool, or the worker's firewall
        return (f"if `master reaches ...(workerpool)` fails for {worker} too, its firewall "
                f"rejects the master: {FIREWALL_FIX}; otherwise the pool is not running: "
                + start.removeprefix("then "))
    return start.removeprefix("then ")


def read_workers_status(stdout: str) -> dict[str, str] | None:
    """{address: "N of M processes busy" | "not running: why"} from what `oqz workers status
    --json` printed; None when it printed no such JSON."""
    status = json_object(stdout)
    if status is None or not isinstance(status.get("workerpools"), list):
        return None
    return {pool["host"]: _pool_state(pool) for pool in status["workerpools"]}


def _pool_state(pool: dict[str, Any]) -> str:
    if not pool["answers"]:
        return f"not running: {pool['why']}"
    return f"{pool['running']} of {pool['total']} processes busy"


@pytest.mark.usefixtures("on_master", "bundled_engine")
def test_workerpools_answer_the_masters_authenticated_ping(across: Context, report: Any) -> None:
    report(workerpools_answer(across))


def handshakes_refuse_keyless_peers(ctx: Context) -> Iterator[CheckResult]:
    """Each workerpool's control port and the dbserver refuse, at the zmq handshake, a peer
    without the cluster key and accept one with it (`python -m oqzmq.zap`, from the master):
    a keyless peer cannot make them buffer its messages (issue 20)."""
    user, master = ctx.setting("oq_user"), ctx.master
    targets = {f"tcp://{worker.address}:{ctx.setting('oq_ctrl_port')}": worker.name
               for worker in ctx.workers}
    targets[f"tcp://{master.address}:{ctx.setting('oq_dbserver_port')}"] = master.name
    command = "OQ_CONFIG_FILE=%s %s -m oqzmq.zap" + " %s" * len(targets)
    out = master.run_as(user, command, config_file(master),
                        f"{ctx.setting('oq_venv_dir')}/bin/python", *targets)
    outcomes = json_object(out.stdout) or {}
    check = "the zmq handshake refuses a peer without the cluster key, accepts the key"
    expected = "keyless: refused, keyed: accepted"
    for endpoint, host in targets.items():
        outcome = outcomes.get(endpoint)
        if not isinstance(outcome, dict):
            yield failed(host, check, expected, f"{endpoint}: {out.text or out.rc}",
                         ENGINE_RELEASE_FIX, security=True)
            continue
        found = f"{endpoint}: keyless: {outcome['keyless']}, keyed: {outcome['keyed']}"
        if str(outcome["keyless"]).startswith("refused") and outcome["keyed"] == "accepted":
            yield passed(host, check, found, security=True)
        else:
            yield failed(host, check, expected, found,
                         f"{ENGINE_RELEASE_FIX}, then restart the engine's services",
                         security=True)


@pytest.mark.usefixtures("on_master", "bundled_engine")
def test_the_handshake_refuses_peers_without_the_cluster_key(across: Context,
                                                             report: Any) -> None:
    report(handshakes_refuse_keyless_peers(across))
