"""Where the project's shared files live: the role defaults and the openquake.cfg template.

The CLI works on the same files the playbooks use (one truth), so it needs the project
tree: `$OQCLUSTER_PROJECT`, else the first of the current directory and its parents that
holds the project, else the checkout this package was installed from (editable install).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULTS = Path("roles/oq/defaults/main.yml")
TEMPLATE = Path("templates/openquake.cfg.j2")
ENV_VARIABLE = "OQCLUSTER_PROJECT"


class ProjectNotFound(RuntimeError):
    """The project tree (roles/, templates/) cannot be found."""


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def defaults(self) -> Path:
        return self.root / DEFAULTS

    @property
    def template(self) -> Path:
        return self.root / TEMPLATE


def is_project(path: Path) -> bool:
    return (path / DEFAULTS).is_file() and (path / TEMPLATE).is_file()


def find_project(start: Path | None = None) -> Project:
    """The project tree, searched as described in the module docstring."""
    explicit = os.environ.get(ENV_VARIABLE)
    if explicit:
        if is_project(Path(explicit)):
            return Project(Path(explicit).resolve())
        raise ProjectNotFound(
            f"{ENV_VARIABLE}={explicit} does not contain {DEFAULTS} and {TEMPLATE}; "
            f"point {ENV_VARIABLE} at the oqcluster checkout"
        )
    here = (start or Path.cwd()).resolve()
    source_checkout = Path(__file__).resolve().parents[2]
    for candidate in (here, *here.parents, source_checkout):
        if is_project(candidate):
            return Project(candidate)
    raise ProjectNotFound(
        f"cannot find {DEFAULTS} and {TEMPLATE}: run oqcluster from the oqcluster checkout "
        f"or set {ENV_VARIABLE} to it"
    )
