"""The master: directories, services in openquake.slice, listening ports, the engine."""

from __future__ import annotations

from typing import Any

import pytest

from oqcluster.nodetests.expect import expect


@pytest.fixture
def master(cluster: Any, node_name: str) -> None:
    if node_name != cluster.master:
        pytest.skip("only on the master")


def _services(oq: dict[str, Any]) -> list[str]:
    return ["openquake-dbserver.service"] + (
        ["openquake-webui.service"] if oq["oq_webui_enabled"] else []
    )


@pytest.mark.usefixtures("master")
def test_shared_dir_is_setgid_group_private(host: Any, oq: dict[str, Any]) -> None:
    shared = host.file(oq["oq_shared_dir"])
    found = f"{shared.user}:{shared.group} {shared.mode:04o}" if shared.exists else "missing"
    wanted = f"{oq['oq_user']}:{oq['oq_group']} 2770"
    expect(found == wanted, wanted, found, "re-run site.yml --tags config")
    # setgid at work: a file created by root inherits the openquake group
    probe = f"{oq['oq_shared_dir']}/.oqcluster-setgid-probe"
    host.run("touch %s", probe)
    group = host.file(probe).group
    host.run("rm -f %s", probe)
    expect(group == oq["oq_group"], f"new files get group {oq['oq_group']}", group,
           f"chmod g+s {oq['oq_shared_dir']}")


@pytest.mark.usefixtures("master")
def test_state_dir_belongs_to_openquake(host: Any, oq: dict[str, Any]) -> None:
    state = host.file(oq["oq_state_dir"])
    found = f"{state.user}:{state.group} {state.mode:04o}" if state.exists else "missing"
    wanted = f"{oq['oq_user']}:{oq['oq_group']} 0750"
    expect(found == wanted, wanted, found, "re-run site.yml --tags config")


@pytest.mark.usefixtures("master")
def test_services_run_as_openquake_in_the_slice(host: Any, oq: dict[str, Any]) -> None:
    for name in _services(oq):
        service = host.service(name)
        expect(service.is_running and service.is_enabled, f"{name} active and enabled",
               f"running={service.is_running} enabled={service.is_enabled}",
               f"journalctl -u {name}; re-run site.yml --tags services")
        show = dict(
            line.split("=", 1)
            for line in host.run(
                "systemctl show -p Slice,User,Restart,MainPID %s", name
            ).stdout.splitlines()
        )
        wanted = {"Slice": "openquake.slice", "User": oq["oq_user"], "Restart": "on-failure"}
        found = {key: show.get(key) for key in wanted}
        expect(found == wanted, str(wanted), str(found), "re-run site.yml --tags services")
        owner = host.run("ps -o user= -p %s", show["MainPID"]).stdout.strip()
        expect(owner == oq["oq_user"], f"{name} process owned by {oq['oq_user']}", owner,
               f"systemctl restart {name}")
        cgroup = host.file(f"/proc/{show['MainPID']}/cgroup").content_string
        expect(f"/openquake.slice/{name}" in cgroup, f"{name} in openquake.slice (cgroupfs)",
               cgroup.splitlines()[0], f"systemctl restart {name}")


@pytest.mark.usefixtures("master")
def test_dbserver_answers(host: Any, oq: dict[str, Any]) -> None:
    result = host.run(
        "sudo -u %s env OQ_CONFIG_FILE=%s %s/bin/oqz dbserver status",
        oq["oq_user"], f"{oq['oq_config_dir']}/openquake.cfg", oq["oq_venv_dir"],
    )
    expect(result.rc == 0, "oqz dbserver status exits 0", (result.stdout + result.stderr)[-300:],
           "journalctl -u openquake-dbserver")


@pytest.mark.usefixtures("master")
def test_ports_listen_on_the_cluster_address(
    host: Any, oq: dict[str, Any], cluster: Any, node_name: str
) -> None:
    address = cluster.address(node_name)
    ports = {oq["oq_dbserver_port"]: "dbserver", 2049: "nfs"}
    if oq["oq_webui_enabled"]:
        ports[oq["oq_webui_port"]] = "webui"
    for port, what in ports.items():
        socket = host.socket(f"tcp://{address}:{port}")
        wildcard = host.socket(f"tcp://0.0.0.0:{port}")
        listening = socket.is_listening or wildcard.is_listening
        expect(listening, f"{what} listening on {address}:{port}", "not listening",
               "re-run site.yml; journalctl -u openquake-*")


@pytest.mark.usefixtures("master")
def test_engine_venv_is_installed_offline(host: Any, oq: dict[str, Any]) -> None:
    oqz = host.file(f"{oq['oq_venv_dir']}/bin/oqz")
    expect(oqz.exists, f"{oq['oq_venv_dir']}/bin/oqz", "missing", "re-run site.yml --tags engine")
    version = host.run("%s/bin/oqz --version", oq["oq_venv_dir"])
    expect(version.rc == 0, "oqz --version works", version.stderr[-200:],
           "re-run site.yml --tags engine")
    wheels = host.run("ls %s/wheelhouse", oq["oq_install_dir"]).stdout.split()
    expect(any(w.startswith("oq_zmq_engine-") for w in wheels),
           f"the engine wheel in {oq['oq_install_dir']}/wheelhouse", " ".join(wheels),
           "re-run site.yml --tags engine")


def test_engine_runs_on_every_node_as_openquake(host: Any, oq: dict[str, Any]) -> None:
    """Workers run the master's venv through the export."""
    result = host.run("sudo -u %s %s/bin/oqz --version", oq["oq_user"], oq["oq_venv_dir"])
    expect(result.rc == 0, f"{oq['oq_venv_dir']}/bin/oqz runs as {oq['oq_user']}",
           (result.stdout + result.stderr)[-300:],
           "check the NFS mount of the software tree and the Python version")
