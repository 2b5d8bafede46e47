"""Inventories loaded through Ansible's own API, with the role defaults underneath.

`Inventory` is what the CLI uses: InventoryManager + VariableManager + DataLoader, so every
inventory format and plugin works, and roles/oq/defaults/main.yml as the lowest-precedence
layer, exactly like a role's defaults. `cluster_data` turns any host-variable source into the
plain `ClusterData` the rules check; the preflight action plugin calls it with the play's
hostvars, so `oqcluster check` and the preflight see the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oqcluster.model import (
    ADDRESS_VARIABLES,
    FACT,
    MASTER_GROUP,
    WORKERS_GROUP,
    ClusterData,
    ClusterModel,
    HostSettings,
    build,
)
from oqcluster.rules import GENERATED

if TYPE_CHECKING:
    from ansible.parsing.dataloader import DataLoader

# Per-host variables the model and the rules read besides the role defaults.
PER_HOST_VARIABLES = (*ADDRESS_VARIABLES, "oq_cores")

CREDENTIALS = "credentials"  # where the role defaults keep generated secrets

RawVars = Callable[[str], Mapping[str, Any]]


class InventoryError(RuntimeError):
    """The inventory cannot be loaded at all (missing file, parse error, no hosts)."""


# Argument-spec keys that describe a value (the rest document it, or fill it in).
SPEC_KEYS = ("type", "choices", "elements", "options")
SOURCE = "_source"  # where a spec was read, for the messages


def load_defaults(loader: DataLoader, path: Path) -> dict[str, Any]:
    """The role defaults file, loaded as Ansible loads it (its templates stay trusted)."""
    data = loader.load_from_file(str(path), trusted_as_template=True)
    if not isinstance(data, dict):
        raise InventoryError(f"{path} must be a mapping of variables")
    return data


def load_specs(loader: DataLoader, defaults_path: Path) -> dict[str, dict[str, Any]]:
    """The argument specs of the oq role (beside defaults/) and of its sibling roles.

    Each role checks its own variables when it starts on a host; checking them here too
    fails a typo (a wrong choice, a string for a number) before any host is touched.
    """
    own = defaults_path.parent.parent / "meta" / "argument_specs.yml"
    roles = own.parents[2]
    specs: dict[str, dict[str, Any]] = {}
    for path in (own, *sorted(roles.glob("*/meta/argument_specs.yml"))):
        if path.is_file():
            source = f"roles/{path.relative_to(roles)}"
            for name, spec in _main_options(loader, path).items():
                kept = {key: spec[key] for key in SPEC_KEYS if key in spec}
                specs.setdefault(name, {**kept, SOURCE: source})
    return specs


def _main_options(loader: DataLoader, path: Path) -> dict[str, Any]:
    data = loader.load_from_file(str(path)) or {}
    main = data.get("argument_specs", {}).get("main", {})
    return dict(main.get("options") or {})


def check_types(
    values: Mapping[str, Any], specs: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Values converted as the role's argument-spec validation converts them, and errors.

    Each variable is validated alone so that every error belongs to one variable. `path`
    values are kept as written: Ansible would expand `~` on the control node here.
    """
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    converted, errors = dict(values), {}
    for name, spec in specs.items():
        if name not in values or values[name] == GENERATED:
            continue
        validator = ArgumentSpecValidator({name: {k: v for k, v in spec.items() if k != SOURCE}})
        result = validator.validate({name: values[name]})
        if result.error_messages:
            errors[name] = f"{result.error_messages[0]} (spec: {spec.get(SOURCE, '?')})"
            del converted[name]
        elif spec.get("type") != "path":
            converted[name] = result.validated_parameters[name]
    return converted, errors


def evaluate_host(
    name: str,
    raw_vars: Mapping[str, Any],
    defaults: Mapping[str, Any],
    loader: DataLoader,
    extra: Mapping[str, Any] | None = None,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
) -> HostSettings:
    """The host's settings the rules need, templated under the host's own variables."""
    from ansible.errors import AnsibleError
    from ansible.template import Templar
    from ansible.utils.vars import combine_vars

    variables = combine_vars(defaults, raw_vars)
    if extra:
        variables = combine_vars(variables, extra)
    templar = Templar(loader=loader, variables=variables)
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key in _variables_to_check(defaults, variables, raw_vars, specs or {}):
        if key == "oq_authkey" and _is_generated_secret(variables[key], defaults):
            values[key] = GENERATED  # evaluating it would write the secret file: not in a check
            continue
        try:
            values[key] = templar.template(variables[key])
        except AnsibleError as error:
            errors[key] = error.message if hasattr(error, "message") else str(error)
    converted, type_errors = check_types(values, specs or {})
    return HostSettings(name=name, values=converted, errors=errors, type_errors=type_errors)


def _variables_to_check(
    defaults: Mapping[str, Any], variables: Mapping[str, Any],
    inventory_vars: Mapping[str, Any], specs: Mapping[str, Any],
) -> list[str]:
    """The oq role's variables, the per-host ones, and other roles' set in the inventory.

    Other roles' defaults are not evaluated: some need facts only a host can give.
    """
    other_roles = [name for name in specs if name in inventory_vars]
    wanted = [*defaults, *PER_HOST_VARIABLES, *other_roles]
    return [key for key in dict.fromkeys(wanted) if key in variables]


def _is_generated_secret(value: Any, defaults: Mapping[str, Any]) -> bool:
    from ansible.parsing.vault import EncryptedString

    if isinstance(value, EncryptedString):  # comparing it would decrypt it
        return False
    return "oq_authkey" in defaults and value == defaults["oq_authkey"]


def cluster_data(
    groups: Mapping[str, Iterable[str]],
    raw_vars: RawVars,
    defaults_path: Path,
    loader: DataLoader,
    extra: Mapping[str, Any] | None = None,
) -> ClusterData:
    """ClusterData for the hosts of the master and workers groups.

    `defaults_path` is roles/oq/defaults/main.yml: its values are the lowest-precedence
    layer, and the role's meta/argument_specs.yml gives the types.
    """
    defaults = load_defaults(loader, defaults_path)
    specs = load_specs(loader, defaults_path)
    masters = tuple(groups.get(MASTER_GROUP, ()))
    workers = tuple(groups.get(WORKERS_GROUP, ()))
    hosts = {
        name: evaluate_host(name, raw_vars(name), defaults, loader, extra, specs)
        for name in dict.fromkeys((*masters, *workers))
    }
    return ClusterData(masters=masters, workers=workers, hosts=hosts)


@cache
def init_ansible() -> None:
    """What the ansible CLIs do first: plugin filters and the collection loader (lookups)."""
    from ansible.plugins.loader import init_plugin_loader

    init_plugin_loader()


class Inventory:
    """An inventory as Ansible sees it, plus the oq role defaults."""

    def __init__(
        self,
        sources: list[str],
        defaults_path: Path,
        vault_password_files: list[str] | None = None,
        ask_vault_pass: bool = False,
    ) -> None:
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.vars.hostvars import HostVars
        from ansible.vars.manager import VariableManager

        _require_sources(sources)
        init_ansible()
        self.defaults_path = defaults_path
        self.loader = DataLoader()
        _load_vault_secrets(self.loader, vault_password_files or [], ask_vault_pass)
        self.manager = InventoryManager(loader=self.loader, sources=sources)
        self.variables = VariableManager(loader=self.loader, inventory=self.manager)
        # Creating HostVars registers it with the VariableManager: `hostvars` in templates.
        self.hostvars = HostVars(self.manager, self.variables, self.loader)
        self.defaults = load_defaults(self.loader, defaults_path)
        self._cluster: ClusterData | None = None
        if not self.manager.list_hosts("all"):
            raise InventoryError(f"no hosts found in {', '.join(sources)}")

    @property
    def groups(self) -> dict[str, list[str]]:
        return {
            name: [host.name for host in group.get_hosts()]
            for name, group in self.manager.groups.items()
        }

    def host_names(self) -> list[str]:
        return [host.name for host in self.manager.list_hosts("all")]

    def raw_vars(self, name: str) -> dict[str, Any]:
        """The host's variables as a task sees them, untemplated, without role defaults."""
        host = self.manager.get_host(name)
        if host is None:
            raise InventoryError(f"host {name} is not in the inventory")
        return self.variables.get_vars(host=host)

    def task_vars(self, name: str) -> dict[str, Any]:
        """The host's variables as in a role task after the preflight: the oq role defaults
        underneath, the cluster model (`oq_cluster`) on top. ModelError without one master."""
        return {**self._defaulted_vars(name), FACT: self.model().as_fact()}

    def _defaulted_vars(self, name: str) -> dict[str, Any]:
        from ansible.utils.vars import combine_vars

        return combine_vars(self.defaults, self.raw_vars(name))

    def cluster_data(self) -> ClusterData:
        """The evaluated settings of the master and workers (evaluated once, then kept)."""
        if self._cluster is None:
            self._cluster = cluster_data(
                self.groups, self.raw_vars, self.defaults_path, self.loader)
        return self._cluster

    def model(self) -> ClusterModel:
        """The cluster model, as the preflight publishes it (oqcluster.model)."""
        return build(self.cluster_data())

    def missing_secret(self, name: str) -> Path | None:
        """The generated secret's file when it is not on this control node, else None.

        None too when the inventory sets oq_authkey itself. Nothing is left behind.
        """
        return missing_secret(self._defaulted_vars(name), self.loader, self.inventory_dirs())

    def inventory_dirs(self) -> list[Path]:
        """The directories the hosts were read from (where generated secrets are kept)."""
        dirs = {
            str(self.raw_vars(name).get("inventory_dir") or ".") for name in self.host_names()
        }
        return sorted(Path(d) for d in dirs)


def missing_secret(
    variables: Mapping[str, Any], loader: DataLoader, dirs: list[Path]
) -> Path | None:
    """The file that evaluating oq_authkey would create (the secret is not here), else None.

    `variables` are a host's, with the oq role defaults underneath; `dirs` the inventory
    directories. None too when the inventory sets oq_authkey itself. Nothing is left behind.
    """
    from ansible.template import Templar

    try:
        with no_new_credentials(dirs):
            Templar(loader=loader, variables=variables).template(variables["oq_authkey"])
    except SecretMissing as error:
        return error.created[0]
    return None


class SecretMissing(RuntimeError):
    """Evaluating oq_authkey would generate a secret the cluster already has elsewhere."""

    def __init__(self, created: list[Path]) -> None:
        self.created = created
        names = ", ".join(str(path) for path in created)
        super().__init__(
            f"the cluster secret ({names}) is not on this control node: copy it from the "
            "control node that ran site.yml, or set oq_authkey (vaulted) in the inventory"
        )


@contextmanager
def no_new_credentials(dirs: list[Path]) -> Iterator[None]:
    """Fail with SecretMissing, removing them, if the block creates files in credentials/.

    The generated oq_authkey is created on first use (a password lookup that writes
    <inventory_dir>/credentials/...). Commands that compare with a running cluster must not
    invent one: it would not match the nodes, and the next site.yml run would push it to
    every node.
    """
    before = _credential_files(dirs)
    new_dirs = [d / CREDENTIALS for d in dirs if not (d / CREDENTIALS).exists()]
    try:
        yield
    finally:
        created = sorted(_credential_files(dirs) - before)
        if created:
            _remove_credentials(created, new_dirs)
            raise SecretMissing(created)


def _credential_files(dirs: list[Path]) -> set[Path]:
    return {
        path for directory in dirs
        for path in (directory / CREDENTIALS).glob("*") if path.is_file()
    }


def _remove_credentials(created: list[Path], new_dirs: list[Path]) -> None:
    """Remove the created files, and the credentials/ directories the lookup created."""
    for path in created:
        path.unlink(missing_ok=True)
    for credentials in new_dirs:
        if credentials.is_dir() and not any(credentials.iterdir()):
            credentials.rmdir()


def _load_vault_secrets(loader: DataLoader, password_files: list[str], ask: bool) -> None:
    """Vault secrets as ansible-playbook finds them (options, then ansible.cfg / env)."""
    from ansible import constants as C
    from ansible.cli import CLI
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import VaultSecretsContext

    if not (password_files or ask or C.DEFAULT_VAULT_PASSWORD_FILE):
        if VaultSecretsContext.current(optional=True) is None:
            # no secrets: a vaulted value then fails as an AnsibleError the rules report
            VaultSecretsContext.initialize(VaultSecretsContext([]))
        return
    try:
        CLI.setup_vault_secrets(
            loader, vault_ids=list(C.DEFAULT_VAULT_IDENTITY_LIST),
            vault_password_files=list(password_files), ask_vault_pass=ask,
            initialize_context=VaultSecretsContext.current(optional=True) is None,
        )
    except AnsibleError as error:
        raise InventoryError(f"vault password: {error.message}") from error


def _require_sources(sources: list[str]) -> None:
    # "a,b," is Ansible's inline host list, not a path
    missing = [source for source in sources if "," not in source and not Path(source).exists()]
    if missing:
        raise InventoryError(
            f"inventory {', '.join(missing)} does not exist; pass -i with an inventory "
            "file or directory (e.g. -i inventories/example)"
        )
