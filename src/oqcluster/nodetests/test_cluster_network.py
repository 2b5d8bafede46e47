"""Across nodes, from the master's run: the firewall refuses workers on each other's
workerpool port, the master's pinned host keys, the NFS exports read with a userspace
client (libnfs-utils; the kernel scenario also mounts them).

What `oqcluster verify` checks from each vantage point on its own (workers reach the
dbserver and the receiver ports, the master reaches each workerpool, ssh in BatchMode,
the shared dir seen by every worker) is in oqcluster.verify.cluster, not here."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from oqcluster.nodetests.expect import as_root, expect

PROBE_UNIT = "oqcluster-verify-listener"


@pytest.fixture
def probe_listener(cluster: Any) -> Any:
    """A throwaway TCP listener on the first worker's workerpool port (unless one runs)."""
    worker = cluster.remote_workers()[0]
    node = cluster.node(worker)
    port = int(cluster.settings(worker)["oq_ctrl_port"])
    started = False
    if not node.socket(f"tcp://0.0.0.0:{port}").is_listening and not node.socket(
        f"tcp://{cluster.address(worker)}:{port}"
    ).is_listening:
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
        for _ in range(20):
            if node.socket(f"tcp://0.0.0.0:{port}").is_listening:
                break
            node.run("sleep 0.25")
    yield worker, port
    if started:
        with as_root(node):
            node.run("systemctl stop %s", PROBE_UNIT)


@pytest.mark.usefixtures("on_master")
def test_workerpool_port_refuses_other_workers(
    cluster: Any, connect: Any, probe_listener: tuple[str, int]
) -> None:
    """Only the master may open a workerpool port (that it can is a cluster check)."""
    worker, port = probe_listener
    others = [name for name in cluster.remote_workers() if name != worker]
    if not others:
        pytest.skip("a second worker is needed to try the port from an unlisted address")
    target = cluster.address(worker)
    ok, what = connect(cluster.node(others[0]), target, port)
    expect(not ok, f"{others[0]} -> {worker} {target}:{port} refused (not the master)",
           what, f"the firewall of {worker} lets other hosts in: re-run site.yml --tags firewall")


@pytest.mark.usefixtures("on_master")
def test_workers_host_keys_are_pinned(cluster: Any) -> None:
    master = cluster.node(cluster.master)
    home = master.user(cluster.settings(cluster.master)["oq_user"]).home
    with as_root(master):
        known = master.file(f"{home}/.ssh/known_hosts").content_string.splitlines()
    for worker in cluster.remote_workers():
        key = cluster.node(worker).file("/etc/ssh/ssh_host_ed25519_key.pub").content_string
        wanted = " ".join(key.split()[:2])
        address = cluster.address(worker)
        pinned = [line for line in known if line.split(" ", 1)[0].split(",")[0] == address]
        expect(any(wanted in line for line in pinned),
               f"{worker}'s ed25519 host key pinned for {address}",
               pinned or "no entry", "re-run site.yml --tags ssh")


def _nfs_url(cluster: Any, path: str, uid: int, gid: int, version: int = 4) -> str:
    return f"nfs://{cluster.address(cluster.master)}{path}?version={version}&uid={uid}&gid={gid}"


@pytest.fixture
def nfs_probe(cluster: Any) -> Any:
    """A file in the master's shared dir, readable by the openquake group only."""
    oq = cluster.settings(cluster.master)
    master = cluster.node(cluster.master)
    token = secrets.token_hex(8)
    path = f"{oq['oq_shared_dir']}/.oqcluster-nfs-probe-{token}"
    with as_root(master):
        master.run("sh -c %s", f"echo {token} > {path}")
        master.run("chown %s:%s %s", oq["oq_user"], oq["oq_group"], path)
        master.run("chmod 0640 %s", path)
    yield path, token
    with as_root(master):
        master.run("rm -f %s", path)


def _libnfs(node: Any, name: str) -> None:
    if not node.exists("nfs-cat"):
        pytest.skip(f"libnfs-utils is not installed on {name}: nothing to read the export with")


def _first_nfs_client(cluster: Any) -> tuple[dict[str, Any], str, Any]:
    """(the master's settings, the first worker, its testinfra host) for a probe of the exports."""
    worker = cluster.remote_workers()[0]
    node = cluster.node(worker)
    _libnfs(node, worker)
    return cluster.settings(cluster.master), worker, node


@pytest.mark.usefixtures("on_master")
def test_listed_workers_read_the_exports(cluster: Any, nfs_probe: tuple[str, str]) -> None:
    oq = cluster.settings(cluster.master)
    path, token = nfs_probe
    for worker in cluster.remote_workers():
        node = cluster.node(worker)
        _libnfs(node, worker)
        read = node.run("nfs-cat %s", _nfs_url(cluster, path, oq["oq_uid"], oq["oq_gid"]))
        expect(read.rc == 0 and read.stdout.strip() == token,
               f"{worker} reads {path} over NFSv4", (read.stdout + read.stderr).strip()[-200:],
               "re-run site.yml --tags nfs; journalctl -u nfs-ganesha or nfs-server")
        tree = node.run("nfs-ls %s", _nfs_url(cluster, oq["oq_install_dir"], 0, 0))
        expect(tree.rc == 0 and "venv" in tree.stdout,
               f"{worker} lists {oq['oq_install_dir']} (the venv) over NFSv4",
               (tree.stdout + tree.stderr).strip()[-200:], "re-run site.yml --tags nfs")


@pytest.mark.usefixtures("on_master")
def test_exports_are_read_only(cluster: Any) -> None:
    oq, worker, node = _first_nfs_client(cluster)
    master = cluster.node(cluster.master)
    target = f"{oq['oq_shared_dir']}/.oqcluster-nfs-write-{secrets.token_hex(4)}"
    write = node.run(
        "nfs-cp /etc/hostname %s", _nfs_url(cluster, target, oq["oq_uid"], oq["oq_gid"])
    )
    with as_root(master):
        created = master.file(target).exists
        master.run("rm -f %s", target)
    expect(write.rc != 0 and not created, f"a write from {worker} refused (read-only export)",
           f"nfs-cp rc={write.rc}, file created={created}", "re-run site.yml --tags nfs")


@pytest.mark.usefixtures("on_master")
def test_exports_squash_root(cluster: Any) -> None:
    oq, worker, node = _first_nfs_client(cluster)
    listing = node.run("nfs-ls %s", _nfs_url(cluster, oq["oq_shared_dir"], 0, 0))
    expect(listing.rc != 0, f"root on {worker} cannot list the 2770 {oq['oq_shared_dir']} "
           "(root squashed)", listing.stdout.strip()[-200:] or "listed",
           f"chmod 2770 {oq['oq_shared_dir']} on the master, export with root_squash: "
           "re-run site.yml --tags nfs")


@pytest.mark.usefixtures("on_master")
def test_exports_refuse_nfsv3(cluster: Any) -> None:
    oq, _worker, node = _first_nfs_client(cluster)
    v3 = node.run("nfs-ls %s", _nfs_url(cluster, oq["oq_shared_dir"], oq["oq_uid"],
                                        oq["oq_gid"], version=3))
    expect(v3.rc != 0, "NFSv3 refused (NFSv4 only)", "NFSv3 answered",
           "re-run site.yml --tags nfs")


@pytest.mark.usefixtures("on_master")
def test_an_unlisted_client_is_refused(cluster: Any, nfs_probe: tuple[str, str]) -> None:
    """The master itself is never in the export list: it stands for any unlisted host."""
    oq = cluster.settings(cluster.master)
    master = cluster.node(cluster.master)
    _libnfs(master, cluster.master)
    path, _ = nfs_probe
    read = master.run("nfs-cat %s", _nfs_url(cluster, path, oq["oq_uid"], oq["oq_gid"]))
    expect(read.rc != 0, f"{cluster.address(cluster.master)} (not listed) refused",
           "the export answered", "re-run site.yml --tags nfs")
