"""The roles' OS-family variables and templates, rendered without any host."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import yaml
from rolefacts import FACTS, ROLES

CLUSTER = """
all:
  children:
    master:
      hosts:
        m1: {oq_address: 10.0.0.10}
    workers:
      hosts:
        w1: {oq_address: 10.0.0.11}
        w2: {oq_address: 10.0.0.12, oq_cores: 4}
"""
# the master also computes, and one worker is on IPv6
MIXED = """
all:
  vars:
    oq_webui_enabled: false
  children:
    master:
      hosts:
        m1: {oq_address: 10.0.0.10}
    workers:
      hosts:
        m1: {}
        w6: {oq_address: "fd00::6"}
"""


FAMILY_ROLES = sorted(path.parent.parent.name for path in ROLES.glob("*/vars/Debian.yml"))


@pytest.mark.parametrize("role", FAMILY_ROLES)
def test_both_families_define_the_same_variables(role: str) -> None:
    debian = yaml.safe_load((ROLES / role / "vars" / "Debian.yml").read_text())
    redhat_file = ROLES / role / "vars" / "RedHat.yml"
    assert redhat_file.exists(), f"roles/{role}/vars/RedHat.yml is missing"
    redhat = yaml.safe_load(redhat_file.read_text())
    assert set(debian) == set(redhat)


def test_redhat_names_of_packages_and_services(renderer: Any) -> None:
    r = renderer(CLUSTER)
    assert r.variables("m1", "oq_common", "RedHat")["oq_common_packages"] == [
        "python3", "openssh-clients", "sudo", "procps-ng"]
    nfs = r.variables("m1", "oq_nfs_server", "RedHat")
    assert nfs["oq_nfs_server_packages"]["kernel"] == ["nfs-utils"]
    assert nfs["oq_nfs_server_kernel_service"] == "nfs-server"
    assert r.variables("w1", "oq_nfs_client", "RedHat")["oq_nfs_client_packages"] == ["nfs-utils"]
    assert r.variables("w1", "oq_ssh", "RedHat")["oq_ssh_server_service"] == "sshd"
    assert r.variables("w1", "oq_ssh", "Debian")["oq_ssh_server_service"] == "ssh"


def test_package_installs_skip_recommends_with_apt_only(renderer: Any) -> None:
    # the roles install with ansible.builtin.package, which hands every argument to apt or
    # dnf: install_recommends must be false with apt and absent (omitted) with dnf
    from ansible.errors import AnsibleValueOmittedError

    r = renderer(CLUSTER)
    for facts in ("Debian", "Ubuntu"):
        variables = r.variables("m1", "oq_ssh", facts)
        assert r.value("{{ oq_package_install_recommends }}", variables) is False
    with pytest.raises(AnsibleValueOmittedError):
        r.value("{{ oq_package_install_recommends }}", r.variables("m1", "oq_ssh", "RedHat"))


@pytest.mark.parametrize(("facts", "backend"),
                         [("RedHat", "firewalld"), ("Debian", "nftables"), ("Ubuntu", "ufw")])
def test_firewall_backend_follows_the_os(renderer: Any, facts: str, backend: str) -> None:
    r = renderer(CLUSTER)
    variables = r.variables("m1", "oq_firewall", facts)
    assert r.value("{{ oq_firewall_selected }}", variables) == backend
    forced = r.variables("m1", "oq_firewall", facts, oq_firewall_backend="nftables")
    assert r.value("{{ oq_firewall_selected }}", forced) == "nftables"


def _zone(r: Any, host: str) -> ET.Element:
    variables = r.variables(host, "oq_firewall", "RedHat")
    variables["oq_firewall_rules"] = r.value("{{ oq_firewall_rules }}", variables)
    return ET.fromstring(r.render("oq_firewall", "oqcluster-zone.xml.j2", variables))


def _rich(zone: ET.Element) -> set[tuple[str, str, str]]:
    return {(rule.get("family"), rule.find("source").get("address"),
             rule.find("port").get("port")) for rule in zone.iter("rule")}


def test_firewalld_zone_of_the_master_allows_the_cluster_only(renderer: Any) -> None:
    zone = _zone(renderer(CLUSTER), "m1")
    addresses = {"10.0.0.10", "10.0.0.11", "10.0.0.12"}
    assert {s.get("address") for s in zone.findall("source")} == addresses
    assert {p.get("port") for p in zone.findall("port")} == {"22"}
    wanted = {("ipv4", a, p) for a in addresses for p in ("1908", "1912-1920", "8800", "2049")}
    assert _rich(zone) == wanted


def test_firewalld_zone_of_a_worker_allows_the_master_only(renderer: Any) -> None:
    zone = _zone(renderer(CLUSTER), "w2")
    assert {s.get("address") for s in zone.findall("source")} == {"10.0.0.10"}
    assert _rich(zone) == {("ipv4", "10.0.0.10", "1909")}


def test_master_that_computes_gets_both_allow_lists_and_ipv6(renderer: Any) -> None:
    zone = _zone(renderer(MIXED), "m1")
    rules = _rich(zone)
    assert ("ipv4", "10.0.0.10", "1909") in rules  # its own workerpool, from itself
    assert ("ipv6", "fd00::6", "1908") in rules
    assert not any(port == "8800" for _, _, port in rules)  # webui disabled


def test_nftables_table_rejects_others_on_the_cluster_ports(renderer: Any) -> None:
    r = renderer(MIXED)
    variables = r.variables("m1", "oq_firewall", "Debian")
    variables["oq_firewall_rules"] = r.value("{{ oq_firewall_rules }}", variables)
    text = r.render("oq_firewall", "oqcluster.nft.j2", variables)
    assert "tcp dport 1908 ip saddr { 10.0.0.10 } accept" in text
    assert "tcp dport 1908 ip6 saddr { fd00::6 } accept" in text
    assert "tcp dport 1908 reject with tcp reset" in text
    assert text.index("delete table inet oqcluster") < text.index("table inet oqcluster {")
    assert "flush ruleset" not in text  # never touches the rest of the ruleset


def test_exports_list_the_workers_only_read_only_root_squashed(renderer: Any) -> None:
    r = renderer(CLUSTER)
    variables = r.variables("m1", "oq_nfs_server", "RedHat")
    variables["oq_nfs_server_clients"] = r.value("{{ oq_nfs_server_clients }}", variables)
    variables["oq_nfs_server_exports"] = r.value("{{ oq_nfs_server_exports }}", variables)
    lines = [line for line in r.render("oq_nfs_server", "exports.j2", variables).splitlines()
             if line and not line.startswith("#")]
    assert [line.split()[0] for line in lines] == ["/oq_shared", "/opt/openquake"]
    for line in lines:
        clients = re.findall(r"(\S+)\((\S+)\)", line)
        assert [c for c, _ in clients] == ["10.0.0.11", "10.0.0.12"]
        assert all(o.split(",")[:2] == ["ro", "root_squash"] for _, o in clients)


def test_ganesha_never_lists_the_master(renderer: Any) -> None:
    r = renderer(MIXED)
    variables = r.variables("m1", "oq_nfs_server", "Debian")
    variables["oq_nfs_server_clients"] = r.value("{{ oq_nfs_server_clients }}", variables)
    variables["oq_nfs_server_exports"] = r.value("{{ oq_nfs_server_exports }}", variables)
    text = r.render("oq_nfs_server", "ganesha.conf.j2", variables)
    assert re.findall(r"Clients = (.*);", text) == ["fd00::6", "fd00::6"]
    assert "Protocols = 4;" in text and "Squash = Root_Squash;" in text
    assert "Access_Type = RO;" in text and "Access_Type = RW" not in text
    # no server-side attribute cache: the master writes datastores behind Ganesha's back
    assert text.count("Attr_Expiration_Time = 0;") == 3 and "Dir_Chunk = 0;" in text


def test_services_run_as_openquake_in_the_slice(renderer: Any) -> None:
    r = renderer(CLUSTER)
    variables = r.variables("m1", "oq_services", "RedHat")
    for unit in ("openquake-dbserver.service.j2", "openquake-webui.service.j2"):
        text = r.render("oq_services", unit, variables)
        for line in ("User=openquake", "Slice=openquake.slice", "Restart=on-failure",
                     "Environment=OQ_CONFIG_FILE=/etc/openquake/openquake.cfg"):
            assert line in text.splitlines(), (unit, line)
    webui = r.render("oq_services", "openquake-webui.service.j2", variables)
    assert "--host 10.0.0.10 --port 8800" in webui


def test_slice_caps_are_shares_of_ram(renderer: Any) -> None:
    r = renderer(CLUSTER)
    variables = r.variables("w1", "oq_common", "RedHat", oq_memory_max_percent=80)
    text = r.render("oq_common", "openquake.slice.j2", variables)
    assert "MemoryMax=80%" in text.splitlines() and "MemoryHigh=90%" in text.splitlines()


def test_every_family_has_facts_for_the_tests() -> None:
    assert {facts["os_family"] for facts in FACTS.values()} == {"Debian", "RedHat"}


def test_real_engine_units_run_oq_with_the_login_on(renderer: Any) -> None:
    r = renderer(CLUSTER)
    variables = r.variables("m1", "oq_services", "Debian", oq_engine_flavor="openquake")
    dbserver = r.render("oq_services", "openquake-dbserver.service.j2", variables).splitlines()
    assert "ExecStart=/opt/openquake/venv/bin/oq dbserver start --foreground" in dbserver
    assert "Type=simple" in dbserver and "User=openquake" in dbserver
    webui = r.render("oq_services", "openquake-webui.service.j2", variables).splitlines()
    assert ("ExecStart=/opt/openquake/venv/bin/oq webui start 10.0.0.10:8800 --skip-browser"
            in webui)
    assert "WorkingDirectory=/etc/openquake/webui" in webui
    variables["oq_services_webui_secret_key"] = "k" * 50
    settings = r.render("oq_services", "local_settings.py.j2", variables)
    assert "LOCKDOWN = True" in settings.splitlines()
    assert f'SECRET_KEY = "{"k" * 50}"' in settings.splitlines()
    compile(settings, "local_settings.py", "exec")  # valid Python


def test_bundled_engine_units_are_unchanged_by_the_flavor_switch(renderer: Any) -> None:
    r = renderer(CLUSTER)
    variables = r.variables("m1", "oq_services", "Debian")
    dbserver = r.render("oq_services", "openquake-dbserver.service.j2", variables).splitlines()
    assert "ExecStart=/opt/openquake/venv/bin/oqz dbserver start" in dbserver
    assert "Type=notify" in dbserver


@pytest.mark.parametrize(("flavor", "database", "table"), [
    ("oqzmq", "/var/lib/openquake/db.sqlite3", "calc"),
    ("openquake", "/var/lib/openquake/openquake-engine.sqlite3", "job"),
])
def test_each_flavor_keeps_its_own_database(
    renderer: Any, flavor: str, database: str, table: str
) -> None:
    r = renderer(CLUSTER)
    variables = r.variables("m1", "oq_services", "Debian", oq_engine_flavor=flavor)
    assert r.value("{{ oq_dbserver_file }}", variables) == database
    assert r.value("{{ oq_services_calc_table }}", variables) == table
