"""/etc/openquake/openquake.cfg: the inventory's rendering, readable by openquake only."""

from __future__ import annotations

import difflib
from typing import Any

from oqcluster.nodetests.expect import as_root, expect

FIX = "re-run ansible-playbook site.yml -i INV --tags config"


def config_path(oq: dict[str, Any]) -> str:
    return f"{oq['oq_config_dir']}/openquake.cfg"


def config_paths(oq: dict[str, Any], is_master: bool) -> list[str]:
    """The node's file, and on the master of a real-engine cluster the venv's copy.

    The real engine in a venv reads <venv>/openquake.cfg (not /etc/openquake); the workers
    read the master's through the export of the software tree.
    """
    venv_copy = is_master and oq["oq_engine_flavor"] == "openquake"
    return [config_path(oq)] + ([f"{oq['oq_venv_dir']}/openquake.cfg"] if venv_copy else [])


def test_config_is_root_owned_and_group_readable_only(
    host: Any, oq: dict[str, Any], is_master: bool
) -> None:
    for path in config_paths(oq, is_master):
        with as_root(host):
            config = host.file(path)
            expect(config.is_file, f"{path} present", "missing", FIX)
            found = f"{config.user}:{config.group} {config.mode:04o}"
        expect(found == f"root:{oq['oq_group']} 0640", f"{path} root:{oq['oq_group']} 0640",
               found, FIX)


def test_config_is_the_inventory_rendering(
    host: Any, oq: dict[str, Any], expected_config: str, is_master: bool
) -> None:
    for path in config_paths(oq, is_master):
        _expect_rendering(host, path, expected_config)


def _expect_rendering(host: Any, path: str, expected_config: str) -> None:
    with as_root(host):
        config = host.file(path)
        expect(config.is_file, f"{path} present", "missing", FIX)
        content = config.content_string
    diff = [
        line for line in difflib.unified_diff(
            expected_config.splitlines(), content.splitlines(), "expected", "found", n=0,
            lineterm="",
        ) if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    found = "; ".join(_hide_secret(line) for line in diff[:6])
    expect(not diff, f"{path}: the file `oqcluster render` gives for this node",
           found or "same", FIX)


def _hide_secret(line: str) -> str:
    key = line[1:].split("=", 1)[0].strip()
    return f"{line[0]}authkey = (differs)" if key == "authkey" else line
