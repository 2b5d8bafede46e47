"""Render the roles' variables and templates on the control node, for any OS family.

Only Debian images can be built on the CI machine, so the RHEL-family paths (package
and service names, firewalld) are proven here: the role's defaults, vars/main.yml and
vars/<family>.yml are layered as Ansible layers them, over a test inventory, with the
facts of the chosen family, and the role's templates are rendered with that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rolefacts import FACTS, ROLES

from oqcluster.inventory import Inventory
from oqcluster.model import FACT


def write_inventory(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.yml").write_text(text)
    return directory


class RoleRenderer:
    """A role's variables and templates for one host of an inventory."""

    def __init__(self, inventory_dir: Path) -> None:
        self.inventory = Inventory([str(inventory_dir)], ROLES / "oq" / "defaults" / "main.yml")

    def variables(self, host: str, role: str, facts: str, **extra: Any) -> dict[str, Any]:
        from ansible.utils.vars import combine_vars

        loader = self.inventory.loader

        def load(path: Path) -> dict[str, Any]:
            return loader.load_from_file(str(path), trusted_as_template=True) or {}

        layers: list[dict[str, Any]] = []
        for name in ("oq", role):  # role defaults: lowest precedence, dependency first
            path = ROLES / name / "defaults" / "main.yml"
            if path.exists():
                layers.append(load(path))
        layers.append(self.inventory.raw_vars(host))
        for name in ("oq", role):  # role vars and include_vars: above the inventory
            vars_dir = ROLES / name / "vars"
            if (vars_dir / "main.yml").exists():
                layers.append(load(vars_dir / "main.yml"))
            # the roles' include_vars: the first of <distribution>.yml, <os_family>.yml
            for file in (f"{FACTS[facts]['distribution']}.yml", f"{FACTS[facts]['os_family']}.yml"):
                if (vars_dir / file).exists():
                    layers.append(load(vars_dir / file))
                    break
        variables: dict[str, Any] = {}
        for layer in layers:
            variables = combine_vars(variables, layer)
        # the preflight's set_fact: above role vars, as the cluster model oq_cluster
        variables = combine_vars(variables, {FACT: self.inventory.model().as_fact()})
        variables["ansible_facts"] = FACTS[facts]
        variables["role_path"] = str(ROLES / role)
        return combine_vars(variables, extra)

    def value(self, expression: str, variables: dict[str, Any]) -> Any:
        from ansible.template import Templar, trust_as_template

        templar = Templar(loader=self.inventory.loader, variables=variables)
        return templar.template(trust_as_template(expression))

    def render(self, role: str, template: str, variables: dict[str, Any]) -> str:
        from ansible.template import Templar, trust_as_template

        path = ROLES / role / "templates" / template
        templar = Templar(loader=self.inventory.loader, variables=variables)
        text = trust_as_template(path.read_text())
        return str(templar.template(text, overrides={"trim_blocks": True}))


@pytest.fixture
def renderer(tmp_path: Path) -> Any:
    def make(hosts_yml: str) -> RoleRenderer:
        return RoleRenderer(write_inventory(tmp_path / "inventory", hosts_yml))

    return make
