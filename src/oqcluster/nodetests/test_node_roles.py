"""What the master and the workers each guarantee (DESIGN.md, "Nodes")."""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.nodetests.cluster import Cluster
from oqcluster.nodetests.expect import as_root, expect


def services(oq: dict[str, Any]) -> list[str]:
    names = ["openquake-dbserver.service"]
    return names + (["openquake-webui.service"] if oq["oq_webui_enabled"] else [])


@pytest.mark.usefixtures("master_only")
def test_master_services_run_enabled_in_the_openquake_slice(
    host: Any, oq: dict[str, Any]
) -> None:
    for name in services(oq):
        service = host.service(name)
        expect(service.is_running, f"{name} running", "not running",
               f"journalctl -u {name}; systemctl restart {name}")
        expect(service.is_enabled, f"{name} enabled", "not enabled",
               f"systemctl enable {name} (re-run site.yml --tags services)")
        slice_name = host.run("systemctl show -p Slice --value %s", name).stdout.strip()
        expect(slice_name == "openquake.slice", "Slice=openquake.slice", f"Slice={slice_name}",
               "re-run site.yml --tags services")


@pytest.mark.usefixtures("master_only")
def test_master_shared_dir_is_setgid_and_private(host: Any, oq: dict[str, Any]) -> None:
    with as_root(host):
        shared = host.file(oq["oq_shared_dir"])
        expect(shared.is_directory, f"{oq['oq_shared_dir']} directory", "missing",
               "re-run site.yml --tags nfs")
        found = f"{shared.user}:{shared.group} {shared.mode:04o}"
    wanted = f"{oq['oq_user']}:{oq['oq_group']} 2770"
    expect(found == wanted, wanted, found,
           f"chown {oq['oq_user']}:{oq['oq_group']} {oq['oq_shared_dir']}; "
           f"chmod 2770 {oq['oq_shared_dir']} (or re-run site.yml --tags nfs)")


@pytest.mark.usefixtures("worker_only")
def test_worker_has_the_shared_paths_of_the_master(host: Any, oq: dict[str, Any]) -> None:
    for path in (oq["oq_shared_dir"], oq["oq_install_dir"]):
        expect(host.file(path).is_directory, f"{path} present (NFS from the master)",
               "missing", "re-run site.yml --tags nfs; findmnt " + path)
        fstab = host.file("/etc/fstab").content_string
        expect(any(_mounts(line, path) for line in fstab.splitlines()),
               f"an nfs4 entry for {path} in /etc/fstab", "none",
               "re-run site.yml --tags nfs")


def _mounts(line: str, path: str) -> bool:
    fields = line.split()
    return len(fields) >= 3 and not fields[0].startswith("#") and fields[1] == path \
        and fields[2].startswith("nfs")


@pytest.mark.usefixtures("worker_only")
def test_worker_trusts_the_masters_key(host: Any, oq: dict[str, Any], cluster: Cluster) -> None:
    """The master's openquake public key itself, not just any key, is in authorized_keys."""
    master_oq = cluster.settings(cluster.master)
    master = cluster.node(cluster.master)
    public = f"{master_oq['oq_home']}/.ssh/id_ed25519.pub"
    with as_root(master):
        key_file = master.file(public)
        master_key = key_file.content_string.split() if key_file.exists else []
    expect(len(master_key) >= 2, f"the master's public key {public} on {cluster.master}",
           "missing", "re-run site.yml --tags ssh")
    home = host.user(oq["oq_user"]).home if host.user(oq["oq_user"]).exists else oq["oq_home"]
    with as_root(host):
        keys = host.file(f"{home}/.ssh/authorized_keys")
        content = keys.content_string if keys.exists else ""
    entries = [line for line in content.splitlines() if line.strip() and line[0] != "#"]
    expect(any(master_key[1] in line.split() for line in entries),
           f"the master's key ({master_key[0]} ...{master_key[1][-12:]}) in "
           f"{home}/.ssh/authorized_keys",
           f"{len(entries)} other key(s)" if entries else "no key",
           "re-run site.yml --tags ssh")
