"""What the master and the workers each guarantee (DESIGN.md, "Nodes")."""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.nodetests.cluster import Cluster
from oqcluster.nodetests.expect import as_root, expect
from oqcluster.rules import shared_engine_dir


def engine_command(oq: dict[str, Any]) -> str:
    """The flavor's command in the venv: `oqz` (bundled engine) or `oq` (OpenQuake)."""
    name = "oqz" if oq["oq_engine_flavor"] == "oqzmq" else "oq"
    return f"{oq['oq_venv_dir']}/bin/{name}"


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
               f"re-run site.yml --tags services (starts it); journalctl -u {name}")
        expect(service.is_enabled, f"{name} enabled", "not enabled",
               f"systemctl enable {name} (re-run site.yml --tags services)")
        show = dict(line.split("=", 1) for line in host.run(
            "systemctl show -p Slice,User,Restart,MainPID %s", name).stdout.splitlines())
        wanted = {"Slice": "openquake.slice", "User": oq["oq_user"], "Restart": "on-failure"}
        found = {key: show.get(key) for key in wanted}
        expect(found == wanted, str(wanted), str(found), "re-run site.yml --tags services")
        owner = host.run("ps -o user= -p %s", show["MainPID"]).stdout.strip()
        expect(owner == oq["oq_user"], f"{name} process owned by {oq['oq_user']}", owner,
               f"systemctl restart {name}")
        cgroup = host.file(f"/proc/{show['MainPID']}/cgroup").content_string
        expect(f"/openquake.slice/{name}" in cgroup, f"{name} in openquake.slice (cgroupfs)",
               cgroup.splitlines()[0] if cgroup else "no process", f"systemctl restart {name}")
    with as_root(host):
        answer = host.run("runuser -u %s -- env OQ_CONFIG_FILE=%s %s dbserver status",
                          oq["oq_user"], f"{oq['oq_config_dir']}/openquake.cfg",
                          engine_command(oq))
    running = answer.rc == 0 and "not-running" not in answer.stdout
    expect(running, f"`{engine_command(oq)} dbserver status` as the engine's user: running",
           (answer.stdout + answer.stderr).strip()[-300:], "journalctl -u openquake-dbserver")


WILDCARDS = {"0.0.0.0", "::", "*"}


@pytest.mark.usefixtures("master_only")
def test_master_serves_nfs_and_the_webui_on_its_cluster_address(
    host: Any, oq: dict[str, Any], cluster: Cluster, node_name: str
) -> None:
    """On the cluster address, not on every interface (0.0.0.0 or ::). NFS-Ganesha 4.3
    binds every address whatever it is told: there the firewall rule that limits 2049 to
    the cluster must be live in the kernel instead. The dbserver's port is checked from the
    workers (test_cluster_ports.py)."""
    address = cluster.address(node_name)
    ports = {2049: "NFS"} | ({oq["oq_webui_port"]: "webui"} if oq["oq_webui_enabled"] else {})
    listeners = host.socket.get_listening_sockets()
    for port, what in ports.items():
        bound = sorted({_bound_address(s) for s in listeners if s.endswith(f":{port}")
                        and s.startswith("tcp://")})
        if (port == 2049 and bound and set(bound) <= WILDCARDS
                and cluster.var(node_name, "oq_nfs_server_backend", "kernel") == "ganesha"):
            guarded, found = _firewall_limits(host, cluster, node_name, port)
            expect(guarded, f"NFS-Ganesha on {', '.join(bound)}:{port} (it ignores Bind_addr), "
                   "limited to the cluster addresses by the live firewall rule", found,
                   "re-run site.yml --tags firewall")
            continue
        expect(bound == [address], f"{what} listening on {address}:{port} only",
               ", ".join(bound) or "not listening",
               "re-run site.yml; journalctl -u openquake-webui, nfs-server or nfs-ganesha")


def _bound_address(socket: str) -> str:
    """'tcp://10.0.0.1:2049' -> '10.0.0.1'; 'tcp://:::2049' -> '::'."""
    return socket.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")


def _firewall_limits(host: Any, cluster: Cluster, name: str, port: int) -> tuple[bool, str]:
    """(the kernel's ruleset accepts `port` from the cluster addresses only, what was read):
    the accept rule with exactly those sources, then the reset for everyone else."""
    sources = {cluster.address(n) for n in [cluster.master, *cluster.workers]}
    with as_root(host):
        table = host.run("nft list table inet oqcluster")
    if table.rc != 0:
        return False, f"no table inet oqcluster in the kernel: {table.stderr.strip()[-120:]}"
    lines = [line.strip() for line in table.stdout.splitlines()
             if line.strip().startswith(f"tcp dport {port} ")]
    accept = [line for line in lines if line.endswith("accept")]
    listed = {word.strip("{},") for line in accept for word in line.split()} & sources
    rejected = any(line.endswith("reject with tcp reset") for line in lines)
    ok = len(accept) == 1 and listed == sources and rejected \
        and lines.index(accept[0]) < len(lines) - 1
    return ok, "; ".join(lines) or f"no rule for port {port} in table inet oqcluster"


@pytest.mark.usefixtures("master_only")
def test_master_state_dir_belongs_to_openquake(host: Any, oq: dict[str, Any]) -> None:
    with as_root(host):
        state = host.file(oq["oq_state_dir"])
        found = f"{state.user}:{state.group} {state.mode:04o}" if state.exists else "missing"
    wanted = f"{oq['oq_user']}:{oq['oq_group']} 0750"
    expect(found == wanted, wanted, found, "re-run site.yml --tags config")


@pytest.mark.usefixtures("master_only")
def test_master_shared_dir_is_setgid_and_private(host: Any, oq: dict[str, Any]) -> None:
    # the shared dir, or <shared_dir>/openquake when it is /home (never handed to openquake)
    directory = shared_engine_dir(oq["oq_shared_dir"], oq["oq_user"])
    with as_root(host):
        shared = host.file(directory)
        expect(shared.is_directory, f"{directory} directory", "missing",
               "re-run site.yml --tags nfs")
        found = f"{shared.user}:{shared.group} {shared.mode:04o}"
    wanted = f"{oq['oq_user']}:{oq['oq_group']} 2770"
    expect(found == wanted, wanted, found,
           f"chown {oq['oq_user']}:{oq['oq_group']} {directory}; "
           f"chmod 2770 {directory} (or re-run site.yml --tags nfs)")
    # setgid at work: a file root creates there gets the engine's group
    probe = f"{directory}/.oqcluster-setgid-probe"
    with as_root(host):
        host.run("touch %s", probe)
        group = host.file(probe).group
        host.run("rm -f %s", probe)
    expect(group == oq["oq_group"], f"new files get group {oq['oq_group']}", group,
           f"chmod g+s {directory} (or re-run site.yml --tags nfs)")


@pytest.mark.usefixtures("master_only")
def test_master_has_the_engine_venv_installed_offline(host: Any, oq: dict[str, Any]) -> None:
    version = host.run("%s --version", engine_command(oq))
    expect(version.rc == 0, f"{engine_command(oq)} --version works",
           (version.stdout + version.stderr).strip()[-200:], "re-run site.yml --tags engine")
    if oq["oq_engine_flavor"] == "openquake":
        expect(version.stdout.strip() == oq["oq_openquake_version"],
               f"openquake-engine {oq['oq_openquake_version']}", version.stdout.strip(),
               "re-run site.yml --tags engine")
    wheelhouse, wheel = _wheelhouse(oq)
    wheels = host.run("ls %s", wheelhouse).stdout.split()
    expect(any(name.startswith(wheel) for name in wheels),
           f"the engine wheel {wheel}* in {wheelhouse}", " ".join(wheels[:5]) or "none",
           "re-run site.yml --tags engine")


def _wheelhouse(oq: dict[str, Any]) -> tuple[str, str]:
    """Where the master keeps its flavor's wheels, and the engine wheel's name prefix."""
    if oq["oq_engine_flavor"] == "oqzmq":
        return f"{oq['oq_install_dir']}/wheelhouse", "oq_zmq_engine-"
    version = oq["oq_openquake_version"]
    return (f"{oq['oq_install_dir']}/wheelhouse-openquake-{version}",
            f"openquake_engine-{version}-")


def test_engine_runs_as_openquake_on_every_node(host: Any, oq: dict[str, Any]) -> None:
    """Workers run the master's venv through the export of the software tree."""
    with as_root(host):
        result = host.run("runuser -u %s -- %s --version", oq["oq_user"], engine_command(oq))
    expect(result.rc == 0, f"{engine_command(oq)} runs as {oq['oq_user']}",
           (result.stdout + result.stderr).strip()[-300:],
           "check the NFS mount of the software tree (findmnt) and the Python version")


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


POOL_UNIT = "openquake-workerpool.service"


@pytest.mark.usefixtures("worker_only")
def test_worker_runs_its_pool_from_the_enabled_workerpool_service(
    host: Any, oq: dict[str, Any]
) -> None:
    """Bundled engine: the pool runs from its enabled unit, so a rebooted worker rejoins by
    itself; the real engine starts its pools for each calculation, so no unit is left."""
    if oq["oq_engine_flavor"] != "oqzmq":
        state = host.run("systemctl is-enabled %s", POOL_UNIT)  # testinfra raises when absent
        found = (state.stdout.strip() or state.stderr.strip())[-200:]
        expect(state.stdout.strip() not in ("enabled", "enabled-runtime"),
               f"no {POOL_UNIT} enabled (the engine starts its pools)", found,
               "re-run site.yml --tags workerpool")
        return
    service = host.service(POOL_UNIT)
    expect(service.is_enabled, f"{POOL_UNIT} enabled", "not enabled",
           "re-run site.yml --tags workerpool")
    expect(service.is_running, f"{POOL_UNIT} running", "not running",
           f"on the master as {oq['oq_user']}: oqz workers start; journalctl -u {POOL_UNIT}")
    show = dict(line.split("=", 1) for line in host.run(
        "systemctl show -p Slice,User,MainPID %s", POOL_UNIT).stdout.splitlines())
    wanted = {"Slice": "openquake.slice", "User": oq["oq_user"]}
    found = {key: show.get(key) for key in wanted}
    expect(found == wanted, str(wanted), str(found), "re-run site.yml --tags workerpool")
    command = host.file(f"/proc/{show['MainPID']}/cmdline").content_string.replace("\0", " ")
    expect("-m oqzmq.workerpool" in command, f"{POOL_UNIT} runs the workerpool", command,
           f"journalctl -u {POOL_UNIT}")
