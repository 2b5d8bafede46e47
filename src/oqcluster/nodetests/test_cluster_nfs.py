"""The master's shared dir and exports across nodes, from the master's run: what the master
writes there each worker reads, unchanged and read-only, and what a cluster user writes in
its oqdata; the NFS exports read with a userspace client (libnfs-utils; the kernel scenario
also mounts them): listed workers read, writes refused, root squashed, NFSv3 refused, an
unlisted client refused."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from oqcluster.nodetests.cluster import per_worker
from oqcluster.nodetests.expect import as_root, expect, not_checked
from oqcluster.rules import shared_engine_dir
from oqcluster.verify.context import Context
from oqcluster.verify.remote import Node
from oqcluster.verify.results import CheckResult, failed, passed


def shared_dir_visible(ctx: Context) -> Iterator[CheckResult]:
    """A file the master writes in shared_dir is seen unchanged, and read-only, by workers."""
    user = ctx.setting("oq_user")
    shared_dir = shared_engine_dir(ctx.setting("oq_shared_dir"), user)
    token = secrets.token_hex(16)
    path = f"{shared_dir}/.oqcluster-verify-{token[:8]}"
    yield from _workers_read_what_the_master_wrote(
        ctx, user, path, token,
        f"{shared_dir} must be owned by {user} with mode 2770: re-run site.yml --tags nfs",
        lambda worker: _shared_file_on_worker(worker, user, path, token))


def _workers_read_what_the_master_wrote(
    ctx: Context, writer: str, path: str, token: str, write_fix: str,
    on_worker: Callable[[Node], Iterable[CheckResult]],
) -> Iterator[CheckResult]:
    """``writer`` writes ``token`` to ``path`` on the master (mode 0640, as the engine writes
    datastores; the setgid directory gives the group), ``on_worker`` checks each worker; the
    file is removed afterwards."""
    wrote = ctx.master.run_as(writer, "umask 027 && printf %s %s > %s", "%s", token, path)
    if wrote.rc != 0:
        yield failed(ctx.master.name, f"{writer} writes in {path.rsplit('/', 1)[0]}", "written",
                     wrote.text or f"rc {wrote.rc}", write_fix)
        return
    try:
        yield from per_worker(ctx, on_worker, skip_master=True)
    finally:
        ctx.master.run_as(writer, "rm -f %s", path)


def _shared_file_on_worker(worker: Node, user: str, path: str, token: str) -> Iterator[CheckResult]:
    read = worker.run_as(user, "cat %s", path)
    check = f"sees the master's {path.rsplit('/', 1)[0]}"
    if read.rc == 0 and read.stdout == token:
        yield passed(worker.name, check, "same content")
    else:
        yield failed(worker.name, check, "the file the master just wrote, unchanged",
                     read.text or f"rc {read.rc}",
                     "mount the master's export here: re-run site.yml --tags nfs; "
                     "findmnt on the worker")
    probe = f"{path}.{worker.name}"
    wrote = worker.run_as(user, "touch %s", probe)
    check = "cannot write the shared dir (read-only export)"
    if wrote.rc != 0:
        yield passed(worker.name, check, "write refused")
    else:
        worker.run_as(user, "rm -f %s", probe)
        yield failed(worker.name, check, "write refused", "write succeeded",
                     "export and mount the shared dir read-only (ro): re-run site.yml --tags nfs")


@pytest.mark.writes
@pytest.mark.usefixtures("on_master")
def test_every_worker_reads_what_the_master_wrote_in_the_shared_dir(
    across: Context, report: Any
) -> None:
    """The shared dir seen by the engine's account on each worker, as the engine needs it
    (the bind of the container scenario, the kernel mount of the VMs); the exports themselves
    are probed over NFS below."""
    report(shared_dir_visible(across))


def users_oqdata_visible(ctx: Context, name: str) -> Iterator[CheckResult]:
    """A datastore a cluster user writes in its oqdata (group openquake, mode 0640, as the
    engine writes them) is read by the engine's account on each worker: the user's directory
    traversable through the mount, the group kept (with shared_dir /home: the user's home)."""
    oqdata = f"{ctx.setting('oq_shared_dir').rstrip('/')}/{name}/oqdata"
    token = secrets.token_hex(16)
    path = f"{oqdata}/.oqcluster-verify-{token[:8]}"
    engine_user = ctx.setting("oq_user")
    yield from _workers_read_what_the_master_wrote(
        ctx, name, path, token,
        f"{oqdata} must be {name}:{ctx.setting('oq_group')} 2750: re-run site.yml --tags users",
        lambda worker: _users_file_on_worker(worker, engine_user, path, token))


def _users_file_on_worker(worker: Node, engine_user: str, path: str,
                          token: str) -> Iterator[CheckResult]:
    read = worker.run_as(engine_user, "cat %s", path)
    check = f"{engine_user} reads a cluster user's datastore {path.rsplit('/', 1)[0]}"
    if read.rc == 0 and read.stdout == token:
        yield passed(worker.name, check, "same content")
    else:
        yield failed(worker.name, check, "the file the user just wrote, unchanged",
                     read.text or f"rc {read.rc}",
                     "the user's directory must let others traverse it (o+x) and oqdata "
                     "keep group openquake: re-run site.yml --tags users,nfs")


@pytest.mark.writes
@pytest.mark.usefixtures("on_master")
def test_every_worker_reads_a_cluster_users_datastores(across: Context, report: Any) -> None:
    names = [str(item["name"]) for item in across.settings.get("oq_users_list") or []]
    if not names:
        pytest.skip("oq_users_list is empty: no cluster user's oqdata to read")
    report(users_oqdata_visible(across, names[0]))


def _nfs_url(cluster: Any, path: str, uid: int, gid: int, version: int = 4) -> str:
    return f"nfs://{cluster.address(cluster.master)}{path}?version={version}&uid={uid}&gid={gid}"


NFS_FIX = "re-run site.yml --tags nfs; journalctl -u nfs-ganesha or nfs-server on the master"
TOOLS_FIX = ("re-run site.yml --tags config (oq_common_verify_tools installs libnfs-utils), "
             "or install libnfs-utils there")


@pytest.fixture
def nfs_probe(cluster: Any) -> Any:
    """A file in the master's shared dir, readable by the openquake group only."""
    oq = cluster.settings(cluster.master)
    master = cluster.node(cluster.master)
    token = secrets.token_hex(8)
    path = f"{shared_engine_dir(oq['oq_shared_dir'], oq['oq_user'])}/.oqcluster-nfs-probe-{token}"
    with as_root(master):
        master.run("sh -c %s", f"echo {token} > {path}")
        master.run("chown %s:%s %s", oq["oq_user"], oq["oq_group"], path)
        master.run("chmod 0640 %s", path)
    yield path, token
    with as_root(master):
        master.run("rm -f %s", path)


def _nfs_client(node: Any, name: str) -> None:
    """A security check of the exports needs a userspace NFS client on `name`: without
    one the check is NOT CHECKED (never passed)."""
    if not node.exists("nfs-cat"):
        not_checked(f"no userspace NFS client (nfs-cat of libnfs-utils) on {name}", TOOLS_FIX,
                    security=True)


def _first_nfs_client(cluster: Any) -> tuple[dict[str, Any], str, Any]:
    """(the master's settings, the first worker, its testinfra host) for a probe of the exports."""
    worker = cluster.remote_workers()[0]
    node = cluster.node(worker)
    _nfs_client(node, worker)
    return cluster.settings(cluster.master), worker, node


def _said(result: Any) -> str:
    return (result.stdout + result.stderr).strip()[-200:] or f"exit code {result.rc}"


def _reads(cluster: Any, worker: str, node: Any, path: str, token: str) -> None:
    """The positive twin of every refusal below: this client, as openquake, reads the
    probe file over NFSv4."""
    oq = cluster.settings(cluster.master)
    read = node.run("nfs-cat %s", _nfs_url(cluster, path, oq["oq_uid"], oq["oq_gid"]))
    expect(read.rc == 0 and read.stdout.strip() == token,
           f"{worker} reads {path} over NFSv4 as {oq['oq_user']}", _said(read), NFS_FIX)


def _nfs_error(result: Any, *words: str) -> bool:
    """The NFS server said no, with one of `words` (NFS4ERR_ROFS, ...), not the network."""
    text = (result.stdout + result.stderr).upper()
    return result.rc != 0 and any(word.upper() in text for word in words)


@pytest.mark.usefixtures("on_master")
def test_listed_workers_read_the_exports(cluster: Any, nfs_probe: tuple[str, str]) -> None:
    oq = cluster.settings(cluster.master)
    path, token = nfs_probe
    for worker in cluster.remote_workers():
        node = cluster.node(worker)
        _nfs_client(node, worker)
        _reads(cluster, worker, node, path, token)
        tree = node.run("nfs-ls %s", _nfs_url(cluster, oq["oq_install_dir"], 0, 0))
        expect(tree.rc == 0 and "venv" in tree.stdout,
               f"{worker} lists {oq['oq_install_dir']} (the venv) over NFSv4", _said(tree),
               NFS_FIX)


@pytest.mark.usefixtures("on_master")
def test_exports_are_read_only(cluster: Any, nfs_probe: tuple[str, str]) -> None:
    oq, worker, node = _first_nfs_client(cluster)
    master = cluster.node(cluster.master)
    _reads(cluster, worker, node, *nfs_probe)
    target = (f"{shared_engine_dir(oq['oq_shared_dir'], oq['oq_user'])}"
              f"/.oqcluster-nfs-write-{secrets.token_hex(4)}")
    write = node.run(
        "nfs-cp /etc/hostname %s", _nfs_url(cluster, target, oq["oq_uid"], oq["oq_gid"])
    )
    with as_root(master):
        created = master.file(target).exists
        master.run("rm -f %s", target)
    expect(_nfs_error(write, "ROFS", "Read-only") and not created,
           f"a write from {worker} refused by the server as read-only (NFS4ERR_ROFS)",
           f"file created={created}: {_said(write)}", "export read-only: " + NFS_FIX)


@pytest.mark.usefixtures("on_master")
def test_exports_squash_root(cluster: Any) -> None:
    oq, worker, node = _first_nfs_client(cluster)
    shared = shared_engine_dir(oq["oq_shared_dir"], oq["oq_user"])
    own = node.run("nfs-ls %s", _nfs_url(cluster, shared, oq["oq_uid"], oq["oq_gid"]))
    expect(own.rc == 0, f"{oq['oq_user']} on {worker} lists {shared} over NFSv4", _said(own),
           NFS_FIX)
    listing = node.run("nfs-ls %s", _nfs_url(cluster, shared, 0, 0))
    expect(_nfs_error(listing, "ACCESS", "Permission denied"),
           f"root on {worker} refused the 2770 {shared} (root squashed: NFS4ERR_ACCESS)",
           _said(listing) if listing.rc else "listed",
           f"chmod 2770 {shared} on the master, export with root_squash: "
           "re-run site.yml --tags nfs")


# An ONC RPC NULL call (RFC 5531) for the NFS program in a given version, sent straight to
# port 2049: no portmapper (rpcbind) is involved, so a firewall that blocks rpcbind cannot
# make it look refused. Prints what the server answered for each version.
RPC_NULL = """
import json, os, socket, struct, sys
address, port = sys.argv[1], int(sys.argv[2])
answers = {}
for version in (3, 4):
    xid = int.from_bytes(os.urandom(4), "big")
    call = struct.pack(">10I", xid, 0, 2, 100003, version, 0, 0, 0, 0, 0)
    try:
        with socket.create_connection((address, port), timeout=5) as s:
            s.settimeout(5)
            s.sendall(struct.pack(">I", 0x80000000 | len(call)) + call)
            data = b""
            while len(data) < 4 or len(data) < 4 + (struct.unpack(">I", data[:4])[0] & 0x7fffffff):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as error:
        answers[version] = "network: " + type(error).__name__
        continue
    body = data[4:]
    if len(body) < 12 or struct.unpack(">I", body[:4])[0] != xid:
        answers[version] = "no RPC reply"
    elif struct.unpack(">I", body[8:12])[0] != 0:
        answers[version] = "denied"
    else:
        verf_len = struct.unpack(">I", body[16:20])[0]
        at = 20 + (verf_len + 3) // 4 * 4
        stat = struct.unpack(">I", body[at:at + 4])[0]
        if stat == 0:
            answers[version] = "success"
        elif stat == 2:
            low, high = struct.unpack(">2I", body[at + 4:at + 12])
            answers[version] = f"version mismatch: serves {low}-{high}"
        else:
            answers[version] = f"accept_stat {stat}"
print(json.dumps(answers))
"""


def _server_nfs_versions(cluster: Any) -> tuple[bool, str]:
    """(v3 off and v4 on in the running server's configuration, what was read)."""
    master = cluster.node(cluster.master)
    with as_root(master):
        if cluster.var(cluster.master, "oq_nfs_server_backend", "kernel") == "ganesha":
            conf = master.file("/etc/ganesha/ganesha.conf").content_string
            protocols = [line.split("=", 1)[1].strip(" ;") for line in conf.splitlines()
                         if line.strip().lower().startswith("protocols")]
            return bool(protocols) and all(p == "4" for p in protocols), \
                f"ganesha.conf Protocols = {', '.join(protocols) or 'unset (3, 4)'}"
        versions = master.run("cat /proc/fs/nfsd/versions").stdout.split()
        return "-3" in versions and "+4" in versions, \
            f"/proc/fs/nfsd/versions: {' '.join(versions) or 'unreadable'}"


@pytest.mark.usefixtures("on_master")
def test_exports_refuse_nfsv3(cluster: Any) -> None:
    """NFSv3 off, proven at the server: its running configuration says so, and an RPC call
    for NFS version 3 that reaches port 2049 gets "version mismatch" while version 4, in
    the same connection attempt from the same worker, succeeds."""
    worker = cluster.remote_workers()[0]
    node = cluster.node(worker)
    off, found = _server_nfs_versions(cluster)
    expect(off, "the NFS server configured NFSv4 only (v3 off)", found,
           "re-run site.yml --tags nfs")
    out = node.run("python3 -c %s %s %s", RPC_NULL, cluster.address(cluster.master), "2049")
    answers = json.loads(out.stdout) if out.rc == 0 else {}
    expect(answers.get("4") == "success",
           f"{worker}'s NFSv4 NULL call answered by {cluster.address(cluster.master)}:2049",
           answers.get("4") or _said(out), NFS_FIX)
    v3 = answers.get("3", "")
    served = [int(n) for n in v3.removeprefix("version mismatch: serves ").split("-")
              if n.isdigit()] if v3.startswith("version mismatch") else []
    expect(len(served) == 2 and not served[0] <= 3 <= served[1],
           "the NFSv3 NULL call reaches the server and is refused (version mismatch)",
           v3 or _said(out), "turn NFSv3 off: re-run site.yml --tags nfs")


@pytest.mark.usefixtures("on_master")
def test_an_unlisted_client_is_refused(cluster: Any, nfs_probe: tuple[str, str]) -> None:
    """The master itself is never in the export list: it stands for any unlisted host. A
    listed worker reads the same file first (the positive twin)."""
    oq = cluster.settings(cluster.master)
    master = cluster.node(cluster.master)
    worker = cluster.remote_workers()[0]
    node = cluster.node(worker)
    _nfs_client(node, worker)
    _nfs_client(master, cluster.master)
    path, token = nfs_probe
    _reads(cluster, worker, node, path, token)
    read = master.run("nfs-cat %s", _nfs_url(cluster, path, oq["oq_uid"], oq["oq_gid"]))
    # Ganesha answers NOENT/ACCESS; kernel nfsd shows an unlisted client no export at all,
    # so libnfs's mount step fails ("mount_cb") - against the server's own address, after
    # the listed worker read the file: the server answered and refused
    expect(_nfs_error(read, "NOENT", "ACCESS", "PERM", "No such file", "denied",
                      "Failed to mount nfs share : mount_cb"),
           f"{cluster.address(cluster.master)} (not listed) refused by the NFS server",
           _said(read) if read.rc else "the export answered", NFS_FIX)
