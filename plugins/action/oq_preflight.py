"""Action plugin `oq_preflight`: the oqcluster inventory rules, run on the control node.

Used by playbooks/preflight.yml before any host is touched. It applies exactly the rules of
`oqcluster check` (oqcluster.rules, loaded through oqcluster.inventory) to the play's
hostvars, with the oq role defaults underneath, and fails with one line per problem.
When the inventory is valid it also returns `model`, the cluster model (oqcluster.model:
addresses, host_cores, allow-lists), which playbooks/preflight.yml publishes as the fact
`oq_cluster` on every host; `master`, `master_config` (the master's openquake.cfg) and
`missing_secret`: the generated cluster secret's file when this control node does not have
it (the run would create a new secret), else "".

Options:
  defaults: path of roles/oq/defaults/main.yml (required)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()


def _import_oqcluster() -> tuple[Any, Any, Any]:
    """oqcluster's inventory, rules and model modules, from the venv or this checkout's src/."""
    try:
        from oqcluster import inventory, model, rules
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
        from oqcluster import inventory, model, rules
    return inventory, rules, model


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        defaults_path = self._task.args.get("defaults")
        if not defaults_path or not Path(defaults_path).is_file():
            raise AnsibleActionFail(
                f"oq_preflight: defaults={defaults_path!r} is not a file; pass the path of "
                "roles/oq/defaults/main.yml"
            )
        inventory, rules, model = _import_oqcluster()
        hostvars = task_vars["hostvars"]
        cluster = inventory.cluster_data(
            groups=task_vars["groups"],
            raw_vars=hostvars.raw_get,
            defaults_path=Path(defaults_path),
            loader=self._loader,
            extra={"hostvars": hostvars},
        )
        problems = rules.validate(cluster)
        for problem in problems:
            display.error(f"inventory: {problem}")
        result["changed"] = False
        result["problems"] = [str(problem) for problem in problems]
        if problems:
            result["failed"] = True
            result["msg"] = (
                f"{len(problems)} inventory problem(s), listed above as [ERROR] lines; "
                "nothing was changed on any host. `oqcluster check -i INV` shows the same."
            )
            return result
        result["msg"] = f"inventory OK: 1 master, {len(cluster.workers)} worker(s)"
        display.display(f"oq_preflight: {result['msg']}")
        result["model"] = model.build(cluster).as_fact()
        result.update(self._secret_facts(inventory, cluster, Path(defaults_path), hostvars))
        return result

    def _secret_facts(
        self, inventory: Any, cluster: Any, defaults_path: Path, hostvars: Any
    ) -> dict[str, str]:
        """The master, its openquake.cfg, and the secret file this run would generate.

        missing_secret is "" unless oq_authkey is the generated default and its file is not
        on this control node (checking creates nothing). The next preflight task then asks
        the master whether the cluster already has a secret this run would replace.
        """
        from ansible.utils.vars import combine_vars

        master = cluster.masters[0]
        raw = hostvars.raw_get(master)
        variables = combine_vars(inventory.load_defaults(self._loader, defaults_path), raw)
        missing = inventory.missing_secret(
            variables, self._loader, [Path(raw.get("inventory_dir") or ".")])
        config_dir = cluster.hosts[master].values["oq_config_dir"]
        return {
            "master": master,
            "master_config": f"{config_dir}/openquake.cfg",
            "missing_secret": str(missing or ""),
        }
