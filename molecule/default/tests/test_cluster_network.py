"""Across nodes: firewall allow-lists at work, NFS exports, ssh from the master."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from oqcluster.nodetests.expect import expect

PROBE_UNIT = "oqcluster-verify-listener"


def _firewall_rules(host: Any) -> tuple[str, str]:
    """(tool, rules text) of the active oqcluster firewall on `host`."""
    nft = host.run("nft list table inet oqcluster")
    if nft.rc == 0:
        return "nftables", nft.stdout
    if host.run("systemctl is-active firewalld").stdout.strip() == "active":
        return "firewalld", host.run("firewall-cmd --zone=oqcluster --list-all").stdout
    ufw = host.run("ufw status")
    if ufw.rc == 0 and "Status: active" in ufw.stdout:
        return "ufw", ufw.stdout
    return "none", ""


def test_firewall_holds_the_cluster_allow_list(
    host: Any, oq: dict[str, Any], cluster: Any, node_name: str
) -> None:
    tool, rules = _firewall_rules(host)
    expect(tool != "none", "an active oqcluster firewall (nftables, firewalld or ufw)",
           "none", "re-run site.yml --tags firewall")
    ports = []
    if node_name == cluster.master:
        ports += [str(oq["oq_dbserver_port"]), str(oq["oq_receiver_port_first"]), "2049"]
    if node_name in cluster.workers:
        ports.append(str(oq["oq_ctrl_port"]))
        expect(cluster.address(cluster.master) in rules,
               f"the master's address {cluster.address(cluster.master)} in the {tool} rules",
               "absent", "re-run site.yml --tags firewall")
    missing = [port for port in ports if port not in rules]
    expect(not missing, f"ports {ports} in the {tool} rules", f"missing {missing}",
           "re-run site.yml --tags firewall")


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
        result = node.run(
            "systemd-run --unit=%s --collect -p RuntimeMaxSec=60 python3 -c %s", PROBE_UNIT, code
        )
        assert result.rc == 0, result.stderr
        started = True
        for _ in range(20):
            if node.socket(f"tcp://0.0.0.0:{port}").is_listening:
                break
            node.run("sleep 0.25")
    yield worker, port
    if started:
        node.run("systemctl stop %s", PROBE_UNIT)


@pytest.mark.usefixtures("on_master")
def test_workerpool_port_is_open_to_the_master_only(
    cluster: Any, connect: Any, probe_listener: tuple[str, int]
) -> None:
    worker, port = probe_listener
    target = cluster.address(worker)
    ok, what = connect(cluster.node(cluster.master), target, port)
    expect(ok, f"master -> {worker} {target}:{port} connects", what,
           "re-run site.yml --tags firewall")
    others = [name for name in cluster.remote_workers() if name != worker]
    if not others:
        pytest.skip("a second worker is needed to try the port from an unlisted address")
    ok, what = connect(cluster.node(others[0]), target, port)
    expect(not ok, f"{others[0]} -> {worker} {target}:{port} refused (not the master)",
           what, f"the firewall of {worker} lets other hosts in: re-run site.yml --tags firewall")


@pytest.mark.usefixtures("on_master")
def test_openquake_on_the_master_reaches_every_worker_by_ssh(cluster: Any) -> None:
    master = cluster.node(cluster.master)
    user = cluster.settings(cluster.master)["oq_user"]
    for worker in cluster.remote_workers():
        address = cluster.address(worker)
        result = master.run(
            "sudo -u %s ssh -o BatchMode=yes -o ConnectTimeout=5 %s true", user, address
        )
        expect(result.rc == 0, f"sudo -u {user} ssh -o BatchMode=yes {address} true succeeds",
               result.stderr.strip()[-300:], "re-run site.yml --tags ssh")


@pytest.mark.usefixtures("on_master")
def test_workers_host_keys_are_pinned(cluster: Any) -> None:
    master = cluster.node(cluster.master)
    home = master.user(cluster.settings(cluster.master)["oq_user"]).home
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
    master.run("sh -c %s", f"echo {token} > {path}")
    master.run("chown %s:%s %s", oq["oq_user"], oq["oq_group"], path)
    master.run("chmod 0640 %s", path)
    yield path, token
    master.run("rm -f %s", path)


def _libnfs(node: Any, name: str) -> None:
    if not node.exists("nfs-cat"):
        pytest.skip(f"libnfs-utils is not installed on {name}: nothing to read the export with")


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
def test_exports_are_read_only_root_squashed_v4_only(
    cluster: Any, nfs_probe: tuple[str, str]
) -> None:
    oq = cluster.settings(cluster.master)
    master = cluster.node(cluster.master)
    worker = cluster.remote_workers()[0]
    node = cluster.node(worker)
    _libnfs(node, worker)
    target = f"{oq['oq_shared_dir']}/.oqcluster-nfs-write-{secrets.token_hex(4)}"
    write = node.run(
        "nfs-cp /etc/hostname %s", _nfs_url(cluster, target, oq["oq_uid"], oq["oq_gid"])
    )
    created = master.file(target).exists
    master.run("rm -f %s", target)
    expect(write.rc != 0 and not created, "a write from a worker refused (read-only export)",
           f"nfs-cp rc={write.rc}, file created={created}", "re-run site.yml --tags nfs")
    as_root = node.run("nfs-ls %s", _nfs_url(cluster, oq["oq_shared_dir"], 0, 0))
    expect(as_root.rc != 0, "root squashed (root cannot list the 2770 shared dir)",
           as_root.stdout.strip()[-200:] or "listed", "re-run site.yml --tags nfs")
    v3 = node.run("nfs-ls %s", _nfs_url(cluster, oq["oq_shared_dir"], oq["oq_uid"],
                                        oq["oq_gid"], version=3))
    expect(v3.rc != 0, "NFSv3 refused", "NFSv3 answered", "re-run site.yml --tags nfs")


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
