"""Kernel NFS: the master's kernel nfsd serves NFSv4 only, the workers mount both exports
with the kernel client, read-only, root squashed, and a VM not in the export list is refused.
(What the master writes in the shared dir each worker reads through its mount: the packaged
node test oqcluster/nodetests/test_cluster_nfs.py, which runs here too.)
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from kernelprobes import python

from oqcluster.nodetests.expect import expect

FIX_NFS = "re-run site.yml --tags nfs; on the master: exportfs -v, journalctl -u nfs-server"


@pytest.fixture
def remote_worker(cluster: Any, node_name: str) -> None:
    if node_name not in cluster.remote_workers():
        pytest.skip("only on workers that mount the master's exports")


def _exports(oq: dict[str, Any]) -> list[str]:
    return [oq["oq_shared_dir"], oq["oq_install_dir"]]


@pytest.mark.usefixtures("on_master")
def test_kernel_nfsd_serves_nfsv4_only(host: Any) -> None:
    versions = host.file("/proc/fs/nfsd/versions")
    found = versions.content_string.strip() if versions.exists else "no /proc/fs/nfsd"
    words = found.split()
    expect("+4" in words and "-3" in words and "+2" not in words,
           "kernel nfsd with NFSv4 on and NFSv3 off (/proc/fs/nfsd/versions)", found, FIX_NFS)


@pytest.mark.usefixtures("remote_worker")
def test_both_exports_are_mounted_nfs4_read_only(
    host: Any, oq: dict[str, Any], cluster: Any
) -> None:
    master = cluster.address(cluster.master)
    for path in _exports(oq):
        found = host.run("findmnt --noheadings --output SOURCE,FSTYPE,OPTIONS --mountpoint %s",
                         path).stdout.split()
        source, fstype, options = [*found, "", "", ""][:3]
        expect(source == f"{master}:{path}" and fstype == "nfs4" and "ro" in options.split(","),
               f"{master}:{path} on {path}, nfs4, ro", " ".join(found) or "not mounted", FIX_NFS)
        fstab = [line.split() for line in host.file("/etc/fstab").content_string.splitlines()
                 if line.split()[:2] == [f"{master}:{path}", path]]
        expect(fstab and "_netdev" in fstab[0][3].split(","),
               f"a persistent /etc/fstab entry for {path} with _netdev", fstab or "none", FIX_NFS)


@pytest.mark.usefixtures("remote_worker")
def test_writes_through_the_mounts_fail_read_only(host: Any, oq: dict[str, Any]) -> None:
    """As openquake, who may write there on the master: the mount, not the mode, refuses."""
    targets = [f"{oq['oq_shared_dir']}/{oq['oq_user']}/oqdata", oq["oq_install_dir"]]
    for directory in targets:
        path = f"{directory}/.kernel-write-probe-{secrets.token_hex(4)}"
        user = oq["oq_user"] if directory.startswith(oq["oq_shared_dir"]) else "root"
        code = (f"import errno\ntry:\n open({path!r}, 'w')\nexcept OSError as e:\n"
                " print(errno.errorcode[e.errno])\nelse:\n print('written')")
        found = python(host, code, user=user).stdout.strip()
        expect(found == "EROFS", f"writing {path} as {user} fails with EROFS", found, FIX_NFS)


@pytest.mark.usefixtures("remote_worker")
def test_root_on_a_worker_is_squashed(host: Any, oq: dict[str, Any]) -> None:
    """root on a worker is nobody on the master: openquake's 2770 oqdata stays closed to it."""
    oqdata = f"{oq['oq_shared_dir'].rstrip('/')}/{oq['oq_user']}/oqdata"
    code = (f"import errno, os\ntry:\n os.listdir({oqdata!r})\n"
            "except OSError as e:\n print(errno.errorcode[e.errno])\nelse:\n print('listed')")
    found = python(host, code).stdout.strip()
    expect(found == "EACCES", f"root cannot list {oqdata} (root squash)", found, FIX_NFS)


@pytest.mark.usefixtures("on_master")
def test_a_vm_not_in_the_export_list_cannot_mount(host: Any, oq: dict[str, Any],
                                                  cluster: Any) -> None:
    """The master mounts from its own cluster address: it is not in its export list."""
    address = cluster.address(cluster.master)
    mountpoint = host.run("mktemp -d /tmp/kernel-nfs-unlisted.XXXXXX").stdout.strip()
    try:
        tried = host.run("timeout 60 mount -t nfs4 -o ro,soft,timeo=50,retrans=1 %s:%s %s",
                         address, oq["oq_shared_dir"], mountpoint)
        mounted = host.run("findmnt --mountpoint %s", mountpoint).rc == 0
    finally:
        host.run("umount %s", mountpoint)
        host.run("rmdir %s", mountpoint)
    expect(tried.rc != 0 and not mounted and "access denied" in tried.stderr,
           f"{address} (not listed) refused: 'access denied by server'",
           f"rc={tried.rc} mounted={mounted} {tried.stderr.strip()[-200:]}", FIX_NFS)
