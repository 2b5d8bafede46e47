"""openquake.cfg rendered on the control node exactly as the role renders it on each node.

The role writes the file with `ansible.builtin.template`; this module reproduces that
action's templating step (trusted template text, the same Jinja overrides, a Templar over
the host's task variables with the role defaults underneath) so both give the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oqcluster.inventory import Inventory, SecretMissing, no_new_credentials

__all__ = ["SecretMissing", "render_config", "render_existing_config", "write_config"]

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


def render_existing_config(inventory: Inventory, host: str, template: Path) -> str:
    """render_config, for comparing with a running cluster: it never invents the secret.

    Raises SecretMissing (and leaves nothing behind) when the generated oq_authkey is not
    on this control node; see oqcluster.inventory.no_new_credentials.
    """
    with no_new_credentials(inventory.inventory_dirs()):
        return render_config(inventory, host, template)


def write_config(out_dir: Path, host: str, text: str) -> Path:
    """Write `text` to OUT/<host>/openquake.cfg, readable by the current user only."""
    target = out_dir / host / CONFIG_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch(mode=CONFIG_MODE, exist_ok=True)
    target.chmod(CONFIG_MODE)
    target.write_bytes(text.encode("utf-8"))
    return target
