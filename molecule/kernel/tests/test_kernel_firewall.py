"""firewalld on real kernels: a cluster port of the master refuses a connection from outside
the cluster network (through the VM's NAT interface, forwarded from the control node: see
`forwards` in molecule/kernel/molecule.yml); a port the roles did not open is refused even
to the cluster's own nodes.

The workers reaching the master's dbserver, webui and receiver ports, the master reaching
each workerpool and another worker refused there are checked by the packaged node tests
(oqcluster/nodetests/test_cluster_ports.py, NFS in test_cluster_nfs.py), which run here too."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest
from kernelprobes import Listener, python

from oqcluster.nodetests.cluster import can_connect as connect
from oqcluster.nodetests.expect import expect
from oqcluster.nodetests.test_cluster_ports import refused

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


# What a connection refused by the network looks like from the control node through QEMU's
# forward: QEMU accepts on the host side, then closes when the guest rejects (closed), or
# the guest's firewall drops and nothing comes (TimeoutError). Anything else (a greeting,
# an ssh banner, data) is not a refusal.
OUTSIDE_REFUSALS = ("closed", "ConnectionResetError", "ConnectionRefusedError", "TimeoutError")


def _first_bytes_from_control_node(port: int) -> str:
    """What a server sends first (a ZMTP greeting, an ssh banner), as hex; or why nothing
    came."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(10)
            return sock.recv(64).hex() or "closed"
    except OSError as error:
        return type(error).__name__


def _is_ssh_banner(hexed: str) -> bool:
    try:
        return bytes.fromhex(hexed).startswith(b"SSH-")
    except ValueError:
        return False


def _forwards(name: str) -> dict[int, int]:
    """{guest port: host port} of the forwards from 127.0.0.1 to VM `name`."""
    forwards = json.loads(os.environ.get("KERNEL_FORWARDS") or "{}")
    pairs = [pair.split(":") for pair in forwards.get(name, "").split(",") if pair]
    return {int(guest): int(host) for host, guest in pairs}


@pytest.mark.usefixtures("on_master")
def test_a_cluster_port_refuses_addresses_outside_the_cluster(cluster: Any) -> None:
    """A listener on every address of the master, on a receiver port (open to the cluster
    addresses only): a worker gets through to it (allowed), the control node through the
    VM's NAT side is refused, while the same forward path delivers the ssh banner (so the
    refusal is the firewall's, not a broken forward and not a listener on another address).
    The dbserver's own port answers a worker with its zmq greeting."""
    oq = cluster.settings(cluster.master)
    forwards = _forwards(cluster.master)
    first, last = int(oq["oq_receiver_port_first"]), int(oq["oq_receiver_port_last"])
    port = next((guest for guest in forwards if first <= guest <= last), None)
    if port is None or 22 not in forwards:
        pytest.fail(f"no forward to {cluster.master}:22 and to a port of {first}-{last} in "
                    f"KERNEL_FORWARDS={os.environ.get('KERNEL_FORWARDS')}: run through "
                    "molecule/kernel/verify.yml")
    banner = _first_bytes_from_control_node(forwards[22])
    expect(_is_ssh_banner(banner),
           f"the control node gets {cluster.master}'s ssh banner through the NAT forward",
           banner, "is the VM up? molecule/kernel/vmctl.sh forwards")
    worker = cluster.remote_workers()[0]
    master_node, address = cluster.node(cluster.master), cluster.address(cluster.master)
    dbserver = int(oq["oq_dbserver_port"])
    inside = python(cluster.node(worker), GREETING.format(address=address, port=dbserver))
    inside_found = inside.stdout.strip() or inside.stderr.strip()[-200:]
    expect(inside.rc == 0 and inside_found.startswith("ff"),
           f"{worker} gets the dbserver's zmq greeting from {cluster.master}:{dbserver}",
           inside_found, "systemctl status openquake-dbserver; " + FIX)
    with Listener(master_node, port):
        ok, found = connect(cluster.node(worker), address, port)
        expect(ok, f"{worker} -> {address}:{port} (a receiver port) connects", found, FIX)
        outside = _first_bytes_from_control_node(forwards[port])
        expect(outside in OUTSIDE_REFUSALS,
               f"from outside the cluster network (NAT side of {cluster.master}) port {port} "
               "refused", f"answered: {outside}", FIX)


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
            expect(not ok and refused(found),
                   f"{worker} -> {address}:{UNOPENED_PORT} (not opened) refused",
                   found, "the firewall must reject what the roles did not open: " + FIX)
