"""The cluster model is the single source of every address: openquake.cfg, the firewall's
allow-lists, the pinned ssh host keys and verify all follow src/oqcluster/model.py, and no
role, template or other module derives an address again."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from rolefacts import ROLES, ROOT

from oqcluster import model
from oqcluster.render import render_config
from oqcluster.verify.context import build_context
from oqcluster.verify.outside import targets

# One inventory per way a host gets its address; m1 is the master, w1 and w2 workers.
CASES = {
    "oq_address": (
        "m1: {oq_address: 10.0.0.10, ansible_host: 192.0.2.10}",
        "w1: {oq_address: 10.0.0.11, ansible_host: 192.0.2.11}",
        "w2: {oq_address: 10.0.0.12, ansible_host: 192.0.2.12, oq_cores: 4}",
        {"m1": "10.0.0.10", "w1": "10.0.0.11", "w2": "10.0.0.12"},
    ),
    "ansible_host": (
        "m1: {ansible_host: 192.0.2.10}",
        "w1: {ansible_host: 192.0.2.11}",
        "w2: {ansible_host: 192.0.2.12, oq_cores: 4}",
        {"m1": "192.0.2.10", "w1": "192.0.2.11", "w2": "192.0.2.12"},
    ),
    "neither": (  # the inventory name (the rules want an address for workers: not checked)
        "m1: {}",
        "w1: {}",
        "w2: {oq_cores: 4}",
        {"m1": "m1", "w1": "w1", "w2": "w2"},
    ),
}
SECRET = "single-source-test-secret-0123456789abcdef"


def inventory_text(case: str) -> str:
    master, w1, w2, _ = CASES[case]
    return (
        f"all:\n  vars: {{oq_authkey: {SECRET}}}\n  children:\n"
        f"    master:\n      hosts:\n        {master}\n"
        f"    workers:\n      hosts:\n        {w1}\n        {w2}\n"
    )


def config_addresses(text: str) -> tuple[str, list[str]]:
    """([dbserver] host, the addresses of [zworkers] host_cores) of an openquake.cfg."""
    host = re.search(r"^host = (.*)$", text, re.MULTILINE)
    cores = re.search(r"^host_cores = (.*)$", text, re.MULTILINE)
    assert host and cores, text
    return host.group(1), [entry.split()[0] for entry in cores.group(1).split(", ")]


def ssh_pins(r: Any) -> list[list[str]]:
    """The [name, key] pairs oq_ssh pins in the master's known_hosts, for fake host keys
    (each worker's own, as its "Read each worker's ed25519 host key" task registers it)."""
    tasks = yaml.safe_load((ROLES / "oq_ssh" / "tasks" / "main.yml").read_text())
    pin = next(task for task in tasks if task["name"].startswith("Pin every worker"))
    variables = r.variables("m1", "oq_ssh", "Debian")
    variables["hostvars"] = {
        name: {"oq_ssh_host_key": {"content": base64.b64encode(
            f"ssh-ed25519 key-of-{name} root@{name}\n".encode()).decode()}}
        for name in ("w1", "w2")
    }
    lines = r.value(pin["vars"]["oq_ssh_wanted"], variables)
    return [line.split(" ", 1) for line in lines]


def observed(r: Any, inventory_dir: Path) -> dict[str, Any]:
    """Every place an address ends up: openquake.cfg, firewall, known_hosts, verify."""
    master, workers = config_addresses(
        render_config(r.inventory, "w1", ROOT / "templates" / "openquake.cfg.j2")
    )
    firewall = {
        host: r.value("{{ oq_firewall_rules }}", r.variables(host, "oq_firewall", "Debian"))
        for host in ("m1", "w1")
    }
    ctx = build_context(str(inventory_dir), r.inventory, None)
    return {
        "cfg master": master,
        "cfg host_cores": workers,
        "firewall master sources": {a for rule in firewall["m1"] for a in rule["sources"]},
        "firewall worker sources": {a for rule in firewall["w1"] for a in rule["sources"]},
        "known_hosts": {name for name, _ in ssh_pins(r)},
        "verify nodes": {node.name: node.address for node in ctx.nodes},
        "verify peers": {(t.node.address, t.peer.address) for t in targets(ctx)},
    }


def expected(addresses: dict[str, str]) -> dict[str, Any]:
    m1, w1, w2 = addresses["m1"], addresses["w1"], addresses["w2"]
    return {
        "cfg master": m1,
        "cfg host_cores": [w1, w2],
        "firewall master sources": {m1, w1, w2},
        "firewall worker sources": {m1},
        "known_hosts": {w1, w2, "w1", "w2"},
        "verify nodes": addresses,
        "verify peers": {(m1, w1), (w1, m1), (w2, m1)},
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_consumer_uses_the_models_address(renderer: Any, tmp_path: Path, case: str) -> None:
    r = renderer(inventory_text(case))
    assert observed(r, tmp_path / "inventory") == expected(CASES[case][3])


def test_a_change_of_the_rule_in_the_model_shows_up_everywhere(
    renderer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the rule is defined once: ansible_host before oq_address, changed in model.py alone,
    # changes the config, the firewall, known_hosts and verify together
    monkeypatch.setattr(model, "ADDRESS_VARIABLES", ("ansible_host", "oq_address"))
    r = renderer(inventory_text("oq_address"))
    assert observed(r, tmp_path / "inventory") == expected(CASES["ansible_host"][3])


def test_host_cores_and_allow_lists_come_from_the_model(renderer: Any) -> None:
    r = renderer(inventory_text("oq_address"))
    fact = r.inventory.model().as_fact()
    assert fact["host_cores"] == "10.0.0.11 -1, 10.0.0.12 4"
    assert [(rule["name"], rule["port"]) for rule in fact["allow"]["m1"]] == [
        ("dbserver", "1908"),
        ("receivers", "1912-1920"),
        ("webui", "8800"),
        ("nfs", "2049"),
    ]
    assert fact["allow"]["w2"] == [{"name": "workerpool", "port": "1909", "sources": ["10.0.0.10"]}]
    assert fact["nfs_clients"] == ["10.0.0.11", "10.0.0.12"]


# --- nothing else derives an address ------------------------------------------------------

ANSIBLE_FILES = [
    path
    for pattern in (
        "roles/**/*.yml",
        "roles/**/*.j2",
        "templates/**/*.j2",
        "playbooks/*.yml",
        "site.yml",
    )
    for path in sorted(ROOT.glob(pattern))
    if "meta" not in path.parts  # argument specs: documentation
]
PYTHON_FILES = [
    path
    for path in sorted((ROOT / "src").rglob("*.py")) + sorted(ROOT.glob("plugins/**/*.py"))
    if path.name != "model.py"
]
# Jinja that reads an address variable of its own: ansible_host at all, or oq_address
# through a default or a hostvars lookup.
JINJA_RULE = re.compile(
    r"ansible_host|oq_address\s*\||\[\s*['\"]oq_address['\"]\s*\]"
    r"|\.oq_address\b"
)
# Python that reads the address variables: ansible_host as a value of its own, oq_address
# looked up (naming oq_address in a Problem, or either one in prose, is fine).
PYTHON_RULE = re.compile(r"""["']ansible_host["']|(\.get\(\s*|\[\s*)["']oq_address["']""")


def _code_lines(path: Path) -> list[tuple[int, str]]:
    comment = "{#" if path.suffix == ".j2" else "#"
    return [
        (number, line)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if not line.lstrip().startswith(comment)
    ]


def test_the_guards_see_the_files() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in ANSIBLE_FILES + PYTHON_FILES}
    assert {
        "roles/oq/vars/main.yml",
        "templates/openquake.cfg.j2",
        "roles/oq_ssh/tasks/main.yml",
        "roles/oq_firewall/vars/main.yml",
        "src/oqcluster/rules.py",
        "plugins/action/oq_preflight.py",
    } <= names
    assert JINJA_RULE.search("{{ oq_address | default(ansible_host) }}")
    assert JINJA_RULE.search("{{ hostvars[h]['oq_address'] }}")
    assert PYTHON_RULE.search('values.get("ansible_host")')
    assert PYTHON_RULE.search("host.values['oq_address']")
    assert not PYTHON_RULE.search('variable="oq_address",')
    assert not PYTHON_RULE.search('message="neither oq_address nor ansible_host is set"')


@pytest.mark.parametrize(
    ("files", "rule", "instead"),
    [
        (ANSIBLE_FILES, JINJA_RULE, "read oq_cluster (src/oqcluster/model.py)"),
        (PYTHON_FILES, PYTHON_RULE, "use oqcluster.model (node_address, ClusterModel)"),
    ],
    ids=["roles and templates", "python modules"],
)
def test_nothing_but_the_model_derives_an_address(
    files: list[Path], rule: re.Pattern[str], instead: str
) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in _code_lines(path)
        if rule.search(line)
    ]
    assert found == [], f"{instead} instead:\n" + "\n".join(found)
