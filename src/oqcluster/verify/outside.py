"""The engine's ports refuse an address outside the cluster (and answer one inside it).

The real OpenQuake engine's zmq messages are unauthenticated pickles, and the bundled
engine's are keyed: either way the firewall must admit the dbserver, the result receivers
and the webui from cluster addresses only, and each workerpool's control port from the
master only. The control node running verify is the outsider: the check runs when its
address on the way to the master is not a cluster address (otherwise it is not checked,
and says so). Each port is proven open first, on its node and from an allowed peer, in
the same run; only then does a refusal from the outsider count.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from oqcluster.verify.context import Context
from oqcluster.verify.remote import LISTENER, Node
from oqcluster.verify.results import CheckResult, failed, not_checked, passed

LISTEN_SECONDS = 40
CONNECT_TIMEOUT = 3.0
FIX = "re-run `ansible-playbook site.yml -i INV --tags firewall`"


@dataclass(frozen=True)
class Target:
    node: Node
    port: int
    what: str
    peer: Node  # an address the firewall admits


def refused_from_outside(ctx: Context) -> Iterator[CheckResult]:
    outsider = control_address(ctx.master.address)
    cluster = {node.address for node in ctx.nodes}
    if outsider is None or outsider in cluster:
        reason = ("this control node has no route to the master" if outsider is None else
                  f"this control node is a cluster address ({outsider})")
        yield not_checked(ctx.master.name, "engine ports refuse an address outside the cluster",
                          reason, "run verify from a machine outside the cluster, or say "
                          "--allow-unchecked", security=True)
        return
    for target in targets(ctx):
        yield _check(target, outsider)


# The allow-list rules (oqcluster.model) of the engine's ports, as this check names them;
# NFS is checked by the node tests (its server binds every address in containers).
ENGINE_RULES = {"dbserver": "dbserver", "receivers": "result receiver", "webui": "webui",
                "workerpool": "workerpool control"}


def targets(ctx: Context) -> list[Target]:
    """One port of each engine rule in the model's allow-lists: the master's, then each
    worker's that is not the master; the peer is an address that rule admits."""
    master, workers = ctx.master, [w for w in ctx.workers if w.name != ctx.master.name]
    found = []
    for node in (master, *workers):
        for rule in ctx.model.allow[node.name]:
            if rule.name in ENGINE_RULES:
                port = int(rule.port.split("-")[-1])
                found.append(Target(node, port, ENGINE_RULES[rule.name],
                                    _peer(ctx, node, rule.sources)))
    return found


def _peer(ctx: Context, node: Node, sources: tuple[str, ...]) -> Node:
    """A node whose address the rule admits, another one than `node` when there is one."""
    admitted = [peer for peer in ctx.nodes if peer.address in sources]
    others = [peer for peer in admitted if peer.name != node.name]
    return (others or admitted or [node])[0]


def control_address(destination: str) -> str | None:
    """This machine's source address towards `destination` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((destination, 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


def _check(target: Target, outsider: str) -> CheckResult:
    node, port = target.node, target.port
    check = f"{target.what} port {port} refuses {outsider} (outside the cluster)"
    pid = _ensure_listening(node, port)
    try:
        if node.probe(node.address, [port])[port] != "open":
            return failed(node.name, check, f"a listener on {node.address}:{port} first",
                          "could not open one (port busy?)", f"free {port}/tcp on {node.name}")
        allowed = target.peer.probe(node.address, [port])[port]
        if allowed != "open":
            return failed(node.name, check, f"open from {target.peer.address} (allowed)",
                          allowed, FIX)
        outside = _connect(node.address, port)
        if outside == "open":
            return failed(node.name, check, "refused or dropped",
                          f"open from {outsider}: the engine's port answers any address", FIX)
        return passed(node.name, check, f"open from {target.peer.address}, {outside} from "
                      f"{outsider}")
    finally:
        if pid:
            node.run("kill %s", pid)


def _ensure_listening(node: Node, port: int) -> str:
    """'' when something listens already, else the pid of a temporary listener."""
    if node.probe(node.address, [port], timeout=1.0)[port] == "open":
        return ""
    started = node.run(
        f"nohup {node.python} -c %s %s %s %s >/dev/null 2>&1 </dev/null & echo $!",
        LISTENER, node.address, port, LISTEN_SECONDS,
    )
    for _ in range(40):
        if node.probe(node.address, [port], timeout=1.0)[port] == "open":
            break
        time.sleep(0.3)
    return started.stdout.strip()


def _connect(address: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(CONNECT_TIMEOUT)
        try:
            client.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "dropped"
        except OSError as error:
            return f"unreachable ({error.strerror or error})"
        return "open"
