"""openquake.cfg rendered on the control node exactly as the role renders it on each node.

The role writes the file with `ansible.builtin.template`; this module reproduces that
action's templating step (trusted template text, the same Jinja overrides, a Templar over
the host's task variables with the role defaults underneath) so both give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oqcluster.inventory import Inventory

# The ansible.builtin.template defaults the role relies on (it passes none of these).
TEMPLATE_OVERRIDES: dict[str, Any] = {
    "trim_blocks": True,
    "lstrip_blocks": False,
    "newline_sequence": "\n",
    "block_start_string": "{%",
    "block_end_string": "%}",
    "variable_start_string": "{{",
    "variable_end_string": "}}",
    "comment_start_string": "{#",
    "comment_end_string": "#}",
}
CONFIG_NAME = "openquake.cfg"
CREDENTIALS = "credentials"  # where the role defaults keep generated secrets
CONFIG_MODE = 0o600  # it holds the cluster secret


def render_config(inventory: Inventory, host: str, template: Path) -> str:
    """The openquake.cfg text the role writes on `host`."""
    from ansible.template import Templar, trust_as_template

    text = trust_as_template(inventory.loader.get_text_file_contents(str(template)))
    templar = Templar(loader=inventory.loader).copy_with_new_env(
        searchpath=[str(template.parent)], available_variables=inventory.task_vars(host)
    )
    result = templar.template(text, escape_backslashes=False, overrides=TEMPLATE_OVERRIDES)
    return "" if result is None else str(result)


class SecretMissing(RuntimeError):
    """Rendering would have generated a secret that the cluster already has elsewhere."""

    def __init__(self, created: list[Path]) -> None:
        self.created = created
        names = ", ".join(str(path) for path in created)
        super().__init__(
            f"the cluster secret ({names}) is not on this control node: copy it from the "
            "control node that ran site.yml, or set oq_authkey (vaulted) in the inventory"
        )


def render_existing_config(inventory: Inventory, host: str, template: Path) -> str:
    """render_config, for comparing with a running cluster: it must not invent a secret.

    The generated oq_authkey is created on first use (a password lookup beside the
    inventory, in <inventory_dir>/credentials/). A new one would not match the nodes, and
    the next site.yml run would push it everywhere; so a file the rendering creates there
    is removed again and reported as SecretMissing.
    """
    dirs = inventory.inventory_dirs()
    before = _files_near(dirs)
    try:
        return render_config(inventory, host, template)
    finally:
        created = sorted(_files_near(dirs) - before)
        if created:
            _remove(created, dirs)
            raise SecretMissing(created)


def _files_near(dirs: list[Path]) -> set[Path]:
    """The files of each inventory directory's credentials/ directory."""
    return {
        path for directory in dirs
        for path in (directory / CREDENTIALS).glob("*") if path.is_file()
    }


def _remove(created: list[Path], dirs: list[Path]) -> None:
    for path in created:
        path.unlink(missing_ok=True)
    for directory in dirs:
        credentials = directory / CREDENTIALS
        if credentials.is_dir() and not any(credentials.iterdir()):
            credentials.rmdir()


def write_config(out_dir: Path, host: str, text: str) -> Path:
    """Write `text` to OUT/<host>/openquake.cfg, readable by the current user only."""
    target = out_dir / host / CONFIG_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch(mode=CONFIG_MODE, exist_ok=True)
    target.chmod(CONFIG_MODE)
    target.write_bytes(text.encode("utf-8"))
    return target
