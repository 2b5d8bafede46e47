"""The engine's ports across nodes, from the master's run: each worker reaches the master's
dbserver, webui and a result receiver; the master reaches each workerpool; another worker
is refused on a workerpool port.

A connection refused from another node does not prove that nothing listens: the firewall
may answer with a reset. So every port is first probed on the node itself (loopback is
never filtered), then from the other side; only then is a refusal blamed on the firewall.
The probes of the workers run at once (cluster.per_worker); verify's Nodes cap the commands
at once per host (--sessions-per-host). What the control node running verify sees from
outside the cluster is verify's own check (oqcluster.verify.outside)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from oqcluster.nodetests.cluster import per_worker
from oqcluster.nodetests.expect import as_root, expect
from oqcluster.verify.context import Context
from oqcluster.verify.remote import LISTENER, Node
from oqcluster.verify.results import CheckResult, failed, passed

LISTEN_SECONDS = 30
FIREWALL_FIX = "re-run `ansible-playbook site.yml -i INV --tags firewall`"
PROBE_UNIT = "oqcluster-verify-listener"
# what can_connect prints when the connection fails: an OSError, from the network
REFUSALS = ("ConnectionRefusedError", "ConnectionResetError", "TimeoutError", "timeout",
            "OSError")


def refused(what: str) -> bool:
    """A connection attempt that failed in the network (refused, reset, timed out,
    unreachable), not one that could not be tried (no python3, a crash)."""
    return what.startswith(REFUSALS)


def dbserver_reachable(ctx: Context) -> Iterator[CheckResult]:
    """The dbserver listens on the master, and each worker gets through to it."""
    yield from _master_service_reachable(ctx, ctx.setting("oq_dbserver_port"), "dbserver")


def webui_reachable(ctx: Context) -> Iterator[CheckResult]:
    """The webui listens on the master, and each worker (a cluster address) gets through."""
    yield from _master_service_reachable(ctx, ctx.setting("oq_webui_port"), "webui")


def _master_service_reachable(ctx: Context, port: int, service: str) -> Iterator[CheckResult]:
    master = ctx.master
    local = master.probe(master.address, [port])[port]
    if local != "open":
        yield failed(master.name, f"{service} listens on {master.address}:{port}", "open",
                     local, "re-run site.yml --tags services (starts it); on "
                     f"{master.name}: journalctl -u openquake-{service}")
        return
    yield passed(master.name, f"{service} listens on {master.address}:{port}", "open")
    yield from _from_workers(ctx, port, f"reaches master {master.address}:{port} ({service})")


def receiver_ports_reachable(ctx: Context) -> Iterator[CheckResult]:
    """Each worker gets through to a result receiver on the master (a temporary listener)."""
    first, last = ctx.setting("oq_receiver_port_first"), ctx.setting("oq_receiver_port_last")
    master = ctx.master
    check = f"reaches master {master.address}:{first}-{last} (result receivers)"
    port, pid = _listen_on_a_receiver_port(ctx, first, last)
    if port is None:
        yield failed(master.name, f"a receiver port of {first}-{last} can listen", "a free port",
                     "none could be bound", f"free a port of {first}-{last} on {master.name}")
        return
    try:
        yield from _from_workers(ctx, port, check)
    finally:
        if pid:
            master.run("kill %s", pid)


def _listen_on_a_receiver_port(ctx: Context, first: int, last: int) -> tuple[int | None, str]:
    """(port, pid): a port of the range that accepts connections on the master right now."""
    master = ctx.master
    for port in range(first, last + 1):
        if master.probe(master.address, [port])[port] == "open":
            return port, ""  # a live calculation's receiver: as good as ours
        started = master.run(
            f"nohup {master.python} -c %s %s %s %s >/dev/null 2>&1 </dev/null & echo $!",
            LISTENER, master.address, port, LISTEN_SECONDS,
        )
        pid = started.stdout.strip()
        if _wait_open(master, port):
            return port, pid
        if pid:
            master.run("kill %s", pid)
    return None, ""


def _wait_open(node: Node, port: int, attempts: int = 10) -> bool:
    for _ in range(attempts):
        if node.probe(node.address, [port], timeout=1.0)[port] == "open":
            return True
        time.sleep(0.2)
    return False


def _from_workers(ctx: Context, port: int, check: str) -> Iterator[CheckResult]:
    def probe(worker: Node) -> Iterator[CheckResult]:
        state = worker.probe(ctx.master.address, [port])[port]
        yield _reached(worker.name, check, state, "master", port, worker.address,
                       ctx.master.name)

    yield from per_worker(ctx, probe, skip_master=True)


def _reached(
    host: str, check: str, state: str, target: str, port: int, source: str, firewall: str
) -> CheckResult:
    """`source` got through to the `target`'s port (open there): passed, else the firewall
    of the node `firewall` must admit it."""
    if state == "open":
        return passed(host, check, "open")
    return failed(host, check, "open", f"{state} (it is open on the {target})",
                  f"allow {port}/tcp from {source} in {firewall}'s firewall: {FIREWALL_FIX}")


def workerpools_reachable(ctx: Context) -> Iterator[CheckResult]:
    """Each worker's workerpool listens, and the master gets through to it."""
    port = ctx.setting("oq_ctrl_port")

    def probe(worker: Node) -> Iterator[CheckResult]:
        local = worker.probe(worker.address, [port])[port]
        if local != "open":
            yield failed(worker.name, f"workerpool listens on {worker.address}:{port}", "open",
                         local, f"on {ctx.master.name} as {ctx.setting('oq_user')}: "
                         "oqz workers start (then oqz workers status)")
            return
        check = f"master reaches {worker.address}:{port} (workerpool)"
        if worker.name == ctx.master.name:
            yield passed(worker.name, check, "open (same node)")
            return
        state = ctx.master.probe(worker.address, [port])[port]
        yield _reached(worker.name, check, state, "worker", port, ctx.master.address,
                       worker.name)

    yield from per_worker(ctx, probe)


@pytest.mark.usefixtures("on_master")
def test_workers_reach_the_dbserver_port(across: Context, report: Any) -> None:
    report(dbserver_reachable(across))


@pytest.mark.usefixtures("on_master")
def test_workers_reach_the_webui_port(across: Context, report: Any) -> None:
    if not across.setting("oq_webui_enabled"):
        pytest.skip("oq_webui_enabled is false")
    report(webui_reachable(across))


@pytest.mark.writes
@pytest.mark.usefixtures("on_master")
def test_workers_reach_a_result_receiver_port(across: Context, report: Any) -> None:
    report(receiver_ports_reachable(across))


@pytest.mark.usefixtures("on_master", "bundled_engine")
def test_master_reaches_each_workerpool_port(across: Context, report: Any) -> None:
    report(workerpools_reachable(across))


@pytest.fixture
def probe_listener(cluster: Any) -> Any:
    """A throwaway TCP listener on the first worker's workerpool port (unless one runs).

    Yields (worker, port) only once something listens there: a refusal proves nothing
    about the firewall when nothing listens."""
    worker = cluster.remote_workers()[0]
    node = cluster.node(worker)
    port = int(cluster.settings(worker)["oq_ctrl_port"])
    address = cluster.address(worker)

    def listening() -> bool:
        return any(node.socket(f"tcp://{ip}:{port}").is_listening
                   for ip in ("0.0.0.0", "::", address))

    started = False
    if not listening():
        code = (
            "import socket\ns=socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('', {port}))\ns.listen()\n"
            "while True:\n c, _ = s.accept()\n c.close()\n"
        )
        with as_root(node):
            result = node.run("systemd-run --unit=%s --collect -p RuntimeMaxSec=60 python3 -c %s",
                              PROBE_UNIT, code)
        expect(result.rc == 0, f"a probe listener on {worker}:{port}", result.stderr.strip(),
               f"systemctl status {PROBE_UNIT} on {worker}")
        started = True
        for _ in range(40):
            if listening():
                break
            node.run("sleep 0.25")
    try:
        expect(listening(), f"something listening on {worker}:{port} to probe",
               "nothing listens (the probe listener did not come up)",
               f"systemctl status {PROBE_UNIT}; journalctl -u {PROBE_UNIT} on {worker}")
        yield worker, port
    finally:
        if started:
            with as_root(node):
                node.run("systemctl stop %s", PROBE_UNIT)


@pytest.mark.usefixtures("on_master")
def test_workerpool_port_refuses_other_workers(
    cluster: Any, connect: Any, probe_listener: tuple[str, int]
) -> None:
    """Only the master may open a workerpool port: the master gets through to the listener
    (the positive twin), then another worker is refused by the same listener."""
    worker, port = probe_listener
    others = [name for name in cluster.remote_workers() if name != worker]
    if not others:
        pytest.skip("a second worker is needed to try the port from an unlisted address")
    target = cluster.address(worker)
    ok, what = connect(cluster.node(cluster.master), target, port)
    expect(ok, f"the master -> {worker} {target}:{port} connects (allowed address)", what,
           f"the firewall of {worker} must let the master in: {FIREWALL_FIX}")
    ok, what = connect(cluster.node(others[0]), target, port)
    expect(not ok and refused(what),
           f"{others[0]} -> {worker} {target}:{port} refused (not the master)",
           what, f"the firewall of {worker} lets other hosts in: {FIREWALL_FIX}")
