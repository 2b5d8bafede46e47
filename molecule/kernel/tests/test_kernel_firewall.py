"""firewalld on real kernels: the master's cluster ports answer the workers and refuse a
connection from outside the cluster network (through the VM's NAT interface, forwarded from
the control node: see `forwards` in molecule/kernel/molecule.yml); a port the roles did not
open is refused even to the cluster's own nodes.

The workerpool port (refused to another worker) is checked by the packaged node tests
(oqcluster/nodetests/test_cluster_network.py), which run here too."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest
from kernelprobes import Listener, python

from oqcluster.nodetests.cluster import can_connect as connect
from oqcluster.nodetests.expect import expect

FIX = "re-run site.yml --tags firewall; firewall-cmd --zone=oqcluster --list-all"
# a port no role opens (the engine's ports are 1907-1920 and 8800)
UNOPENED_PORT = 1999
GREETING = (
    "import socket\n"
    "s = socket.create_connection(({address!r}, {port}), timeout=5)\n"
    "s.settimeout(10)\n"
    "try:\n print(s.recv(64).hex() or 'closed')\n"
    "except OSError as e:\n print(type(e).__name__)\n"
)


def _greeting_from_control_node(port: int) -> str:
    """What a zmq server sends first (its ZMTP greeting), as hex; or why nothing came."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(10)
            return sock.recv(64).hex() or "closed"
    except OSError as error:
        return type(error).__name__


@pytest.mark.usefixtures("on_master")
def test_workers_reach_the_masters_cluster_ports(cluster: Any) -> None:
    oq = cluster.settings(cluster.master)
    master = cluster.address(cluster.master)
    ports = {"dbserver": oq["oq_dbserver_port"], "nfs": 2049}
    if oq["oq_webui_enabled"]:
        ports["webui"] = oq["oq_webui_port"]
    for worker in cluster.remote_workers():
        for what, port in ports.items():
            ok, found = connect(cluster.node(worker), master, port)
            expect(ok, f"{worker} -> {master}:{port} ({what}) connects", found, FIX)


@pytest.mark.usefixtures("on_master")
def test_the_dbserver_port_refuses_addresses_outside_the_cluster(cluster: Any) -> None:
    oq = cluster.settings(cluster.master)
    port = int(oq["oq_dbserver_port"])
    forwards = json.loads(os.environ.get("KERNEL_FORWARDS") or "{}")
    pairs = [pair.split(":") for pair in forwards.get(cluster.master, "").split(",") if pair]
    host_port = next((int(h) for h, g in pairs if int(g) == port), None)
    if host_port is None:
        pytest.fail(f"no forward to {cluster.master}:{port} in KERNEL_FORWARDS={forwards}: "
                    "run through molecule/kernel/verify.yml")
    worker = cluster.remote_workers()[0]
    inside = python(cluster.node(worker),
                    GREETING.format(address=cluster.address(cluster.master), port=port))
    inside_found = inside.stdout.strip() or inside.stderr.strip()[-200:]
    expect(inside.rc == 0 and inside_found.startswith("ff"),
           f"{worker} gets the dbserver's zmq greeting from {cluster.master}:{port}",
           inside_found, "systemctl status openquake-dbserver; " + FIX)
    outside = _greeting_from_control_node(host_port)
    expect(not outside.startswith("ff"),
           f"from outside the cluster network (NAT side of {cluster.master}) port {port} "
           "refused", f"zmq greeting {outside}", FIX)


@pytest.mark.usefixtures("on_master")
def test_a_port_the_roles_did_not_open_is_refused_between_nodes(cluster: Any) -> None:
    master_node = cluster.node(cluster.master)
    address = cluster.address(cluster.master)
    with Listener(master_node, UNOPENED_PORT):
        ok, found = connect(master_node, address, UNOPENED_PORT)
        expect(ok, f"the probe listener answers on {address}:{UNOPENED_PORT} on the master",
               found, f"systemctl status oqcluster-kernel-probe-{UNOPENED_PORT}")
        for worker in cluster.remote_workers():
            ok, found = connect(cluster.node(worker), address, UNOPENED_PORT)
            expect(not ok, f"{worker} -> {address}:{UNOPENED_PORT} (not opened) refused",
                   found, "the firewall must reject what the roles did not open: " + FIX)
