"""Inventory validation rules: written once, used by `oqcluster check` and the preflight play.

The rules see plain data only (`ClusterData`: group membership plus each host's evaluated
oq_* variables), so they import nothing from Ansible and are cheap to test. Loading an
inventory into that shape is `oqcluster.inventory`'s job; both `oqcluster check` and the
Ansible action plugin `oq_preflight` (plugins/action/) go through it.

Every problem names the host(s), the variable, what is wrong and how to fix it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from oqcluster.model import MASTER_GROUP, WORKERS_GROUP, ClusterData, HostSettings

DISTRIBUTE_MODES = ("no", "processpool", "zmq")
MIN_AUTHKEY_LENGTH = 32
# The real engine's versions this checkout can install: one pinned requirements file each.
OPENQUAKE_PINS = Path(__file__).resolve().parents[2] / "roles" / "oq_engine" / "files"
FIRST_UNPRIVILEGED_PORT = 1024
MAX_PORT = 65535
NFS_NOBODY_ID = 65534  # root-squashed NFS requests run as this id: never the openquake user's
MAX_ID = 4294967294
MAX_MESSAGE_MB = 65536  # 64 GB: beyond any node's RAM
GENERATED = "<generated on the control node at provisioning>"

# The variables every node must agree on: they end up in openquake.cfg or in shared state
# (NFS ownership, exported paths), so a per-host override silently splits the cluster.
CLUSTER_WIDE = (
    "oq_user", "oq_group", "oq_uid", "oq_gid",
    "oq_shared_dir", "oq_install_dir", "oq_venv_dir",
    "oq_distribute", "oq_multi_user", "oq_dbserver_file", "oq_dbserver_port",
    "oq_receiver_port_first", "oq_receiver_port_last", "oq_ctrl_port",
    "oq_authkey", "oq_default_cores", "oq_soft_mem_limit", "oq_hard_mem_limit",
    "oq_engine_flavor", "oq_openquake_version", "oq_task_retries", "oq_oom_retries",
    "oq_max_message_mb", "oq_admin_users", "oq_users_list",
)
PORT_VARIABLES = (
    "oq_dbserver_port", "oq_ctrl_port", "oq_webui_port",
    "oq_receiver_port_first", "oq_receiver_port_last",
)
ABSOLUTE_PATHS = (
    "oq_shared_dir", "oq_install_dir", "oq_venv_dir",
    "oq_config_dir", "oq_state_dir", "oq_dbserver_file", "oq_home",
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the inventory: where, which variable, what, and the fix."""

    host: str
    variable: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.host}: {self.variable}: {self.message}. Fix: {self.fix}"


@dataclass(frozen=True)
class Finding:
    """A problem found in one host's settings, before it is attributed to host names."""

    variable: str
    message: str
    fix: str


Resolver = Callable[[str], bool]


def resolves(name: str) -> bool:
    """True when `name` resolves on this (control) node."""
    try:
        socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    return True


def validate(cluster: ClusterData, resolve: Resolver = resolves) -> list[Problem]:
    """Every problem of the inventory, in a stable order (groups first, then settings)."""
    problems = list(_group_problems(cluster))
    if not cluster.masters:
        return problems  # without a master the address and settings rules have no anchor
    problems += _templating_problems(cluster)
    problems += _address_problems(cluster, resolve)
    problems += _cores_problems(cluster)
    problems += _agreement_problems(cluster)
    problems += _merged_host_problems(cluster)
    return problems


# --- groups -------------------------------------------------------------------------------


def _group_problems(cluster: ClusterData) -> Iterator[Problem]:
    if len(cluster.masters) != 1:
        found = ", ".join(cluster.masters) if cluster.masters else "none"
        yield Problem(
            host=", ".join(cluster.masters) or "(inventory)",
            variable=f"group {MASTER_GROUP}",
            message=f"exactly one host must be in group '{MASTER_GROUP}', found {found}",
            fix=f"put exactly one host under '{MASTER_GROUP}' in the inventory",
        )
    if not cluster.workers:
        yield Problem(
            host="(inventory)",
            variable=f"group {WORKERS_GROUP}",
            message=f"group '{WORKERS_GROUP}' has no hosts",
            fix=f"add at least one host under '{WORKERS_GROUP}' (the master may be one too)",
        )


def _templating_problems(cluster: ClusterData) -> Iterator[Problem]:
    holders: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in cluster.cluster_hosts():
        for variable, error in cluster.hosts[name].errors.items():
            holders[(variable, error)].append(name)
    for (variable, error), names in holders.items():
        fix = (
            "pass the vault password: --vault-password-file FILE or --ask-vault-pass"
            if "vault" in error.lower()
            else f"correct the value or template of {variable}"
        )
        yield Problem(", ".join(names), variable, f"cannot be evaluated: {error}", fix)


# --- addresses ----------------------------------------------------------------------------


def _address_problems(cluster: ClusterData, resolve: Resolver) -> Iterator[Problem]:
    master = cluster.hosts[cluster.masters[0]]
    yield from _resolution_problem(
        master, resolve, role="the master's address, which every worker connects to"
    )
    by_address: dict[str, list[str]] = defaultdict(list)
    if master.name not in cluster.workers:
        by_address[master.address()].append(master.name)
    for name in cluster.workers:
        worker = cluster.hosts[name]
        if worker.address_source() is None:
            yield Problem(
                host=name,
                variable="oq_address",
                message="worker has no address (neither oq_address nor ansible_host is set)",
                fix=f"set oq_address: <its IP on the cluster network> for {name}",
            )
            continue
        by_address[worker.address()].append(name)
        yield from _resolution_problem(
            worker, resolve, role="in [zworkers] host_cores, which the master connects to"
        )
    yield from _duplicate_address_problems(by_address)


def _resolution_problem(host: HostSettings, resolve: Resolver, role: str) -> Iterator[Problem]:
    address = host.address()
    if _is_ip(address) or resolve(address):
        return
    variable = host.address_source() or "inventory_hostname"
    yield Problem(
        host=host.name,
        variable=variable,
        message=(
            f"address '{address}' ({role}) is not an IP address and does not resolve "
            "on the control node"
        ),
        fix=f"set oq_address: <IP address> for {host.name}, or make '{address}' resolvable "
        "(DNS or /etc/hosts) on the control node and every cluster node",
    )


def _duplicate_address_problems(by_address: Mapping[str, list[str]]) -> Iterator[Problem]:
    for address, names in by_address.items():
        if len(names) > 1:
            yield Problem(
                host=", ".join(names),
                variable="oq_address",
                message=f"hosts share the address {address} (firewall and NFS allow-lists, "
                "host_cores and the workerpools would mix them up)",
                fix="give every host its own oq_address (or ansible_host); a master that also "
                "computes goes in both groups under one name",
            )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- cores --------------------------------------------------------------------------------


def _cores_problems(cluster: ClusterData) -> Iterator[Problem]:
    for name in cluster.workers:
        cores = cluster.hosts[name].values.get("oq_cores")
        if cores is not None and not _valid_cores(cores):
            yield Problem(
                host=name,
                variable="oq_cores",
                message=f"must be -1 (all cores) or an integer >= 1, got {cores!r}",
                fix=f"set oq_cores: -1 or a positive number of worker processes for {name}",
            )


def _valid_cores(value: Any) -> bool:
    return _is_int(value) and (value == -1 or value >= 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- cluster-wide agreement -----------------------------------------------------------------


def _agreement_problems(cluster: ClusterData) -> Iterator[Problem]:
    hosts = cluster.cluster_hosts()
    for variable in CLUSTER_WIDE:
        by_value: dict[str, list[str]] = defaultdict(list)
        for name in hosts:
            if variable in cluster.hosts[name].values:
                by_value[repr(cluster.hosts[name].values[variable])].append(name)
        if len(by_value) > 1:
            found = "; ".join(f"{value} on {', '.join(names)}" for value, names in by_value.items())
            yield Problem(
                host=", ".join(hosts),
                variable=variable,
                message=f"must be the same on every node, found {found}",
                fix=f"set {variable} once for the whole cluster (group_vars/all.yml), "
                "not per host or per group",
            )


# --- per-host settings --------------------------------------------------------------------


def _merged_host_problems(cluster: ClusterData) -> Iterator[Problem]:
    """Run the per-host rules on every cluster host, naming each finding's hosts once."""
    hosts = cluster.cluster_hosts()
    holders: dict[Finding, list[str]] = defaultdict(list)
    for name in hosts:
        for finding in _type_findings(cluster.hosts[name]):
            holders[finding].append(name)
        for finding in host_findings(cluster.hosts[name].values):
            holders[finding].append(name)
    for finding, names in holders.items():
        label = "all hosts" if names == hosts and len(hosts) > 1 else ", ".join(names)
        yield Problem(label, finding.variable, finding.message, finding.fix)


def _type_findings(host: HostSettings) -> Iterator[Finding]:
    for variable, error in host.type_errors.items():
        fix = f"give {variable} a value of the type and choices its argument spec allows"
        yield Finding(variable, error, fix)


def host_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    """Problems of one host's settings (types, ranges, cross-field rules)."""
    for rule in HOST_RULES:
        yield from rule(values)


def _port_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    ports = {name: values[name] for name in PORT_VARIABLES if name in values}
    bad = [name for name, port in ports.items() if not _valid_port(port)]
    for name in bad:
        yield Finding(
            name,
            f"must be an integer port in {FIRST_UNPRIVILEGED_PORT}..{MAX_PORT} (the services "
            f"run as an unprivileged user), got {ports[name]!r}",
            f"set {name} to a free port >= {FIRST_UNPRIVILEGED_PORT}",
        )
    if bad:
        return  # the overlap rules below compare numbers
    yield from _port_overlap_findings(ports, webui=bool(values.get("oq_webui_enabled", True)))


def _port_overlap_findings(ports: Mapping[str, int], webui: bool) -> Iterator[Finding]:
    first, last = ports.get("oq_receiver_port_first"), ports.get("oq_receiver_port_last")
    if first is not None and last is not None and first > last:
        yield Finding(
            "oq_receiver_port_first",
            f"receiver range {first}-{last} is empty (first > last)",
            "set oq_receiver_port_first <= oq_receiver_port_last",
        )
    singles = ["oq_dbserver_port", "oq_ctrl_port"] + (["oq_webui_port"] if webui else [])
    singles = [name for name in singles if name in ports]
    for i, name in enumerate(singles):
        for other in singles[i + 1:]:
            if ports[name] == ports[other]:
                yield Finding(
                    name,
                    f"{name} and {other} are both {ports[name]}",
                    f"give {name} and {other} different ports",
                )
        if first is not None and last is not None and first <= ports[name] <= last:
            yield Finding(
                "oq_receiver_port_first",
                f"receiver range {first}-{last} contains {name} ({ports[name]})",
                f"move oq_receiver_port_first..oq_receiver_port_last off {ports[name]} "
                f"(the defaults are 1912..1920), or change {name}",
            )


def _valid_port(value: Any) -> bool:
    return _is_int(value) and FIRST_UNPRIVILEGED_PORT <= value <= MAX_PORT


def _path_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    for name in ABSOLUTE_PATHS:
        if name in values and not _is_absolute(values[name]):
            yield Finding(
                name, f"must be an absolute path, got {values[name]!r}",
                f"set {name} to an absolute path such as /{str(values[name]).lstrip('./')}",
            )
    custom_tmp = values.get("oq_custom_tmp")
    if custom_tmp not in (None, "") and not _is_absolute(custom_tmp):
        yield Finding(
            "oq_custom_tmp", f"must be empty or an absolute path, got {custom_tmp!r}",
            'set oq_custom_tmp to an absolute path, or "" for the system default',
        )
    yield from _nesting_findings(values)


def _nesting_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    install, venv, shared = (
        values.get(name) for name in ("oq_install_dir", "oq_venv_dir", "oq_shared_dir")
    )
    if _is_absolute(install) and _is_absolute(venv) and not _strictly_under(venv, install):
        yield Finding(
            "oq_venv_dir",
            f"{venv} is not inside oq_install_dir {install}, so the workers, which mount "
            "oq_install_dir from the master, would not see the engine",
            f"set oq_venv_dir to a directory under {install}, e.g. {install}/venv",
        )
    home = values.get("oq_home")
    if _is_absolute(home) and _is_absolute(shared) and _under_or_same(home, shared):
        yield Finding(
            "oq_home",
            f"{home} is inside oq_shared_dir {shared}, which the workers mount read-only: "
            "the openquake account's ~/.ssh would be shared and unwritable there",
            "keep oq_home outside oq_shared_dir (the default is /home/openquake)",
        )
    if _is_absolute(install) and _is_absolute(shared) and (
        _under_or_same(shared, install) or _under_or_same(install, shared)
    ):
        yield Finding(
            "oq_shared_dir",
            f"{shared} and oq_install_dir {install} overlap; they are exported separately "
            "(shared_dir read-write for the engine, install_dir read-only)",
            "use two separate trees, e.g. /oq_shared and /opt/openquake",
        )


def _is_absolute(value: Any) -> bool:
    return isinstance(value, str) and PurePosixPath(value).is_absolute()


def _strictly_under(path: str, parent: str) -> bool:
    inner, outer = PurePosixPath(path), PurePosixPath(parent)
    return inner != outer and inner.is_relative_to(outer)


def _under_or_same(path: str, parent: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(parent))


def _identity_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    for name in ("oq_uid", "oq_gid"):
        if name not in values:
            continue
        value = values[name]
        if not _is_int(value) or not 1 <= value <= MAX_ID or value == NFS_NOBODY_ID:
            yield Finding(
                name,
                f"must be an integer id in 1..{MAX_ID} other than {NFS_NOBODY_ID} "
                f"(nobody, the id of root-squashed NFS requests), got {value!r}",
                f"set {name} to an id free on every node (the default is 1909)",
            )


def _memory_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    soft, hard = values.get("oq_soft_mem_limit"), values.get("oq_hard_mem_limit")
    if soft is None or hard is None:
        return
    if not (_is_number(soft) and _is_number(hard) and 0 < soft <= hard <= 100):
        yield Finding(
            "oq_soft_mem_limit",
            f"memory limits must satisfy 0 < oq_soft_mem_limit <= oq_hard_mem_limit <= 100 "
            f"(percent of RAM), got soft={soft!r}, hard={hard!r}",
            "set e.g. oq_soft_mem_limit: 90 and oq_hard_mem_limit: 99",
        )


def _retries_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    for name in ("oq_task_retries", "oq_oom_retries"):
        value = values.get(name)
        if value is not None and not (isinstance(value, int) and 0 <= value <= 100):
            yield Finding(name, f"must be a number of re-runs in 0..100, got {value!r}",
                          f"set {name}: 0 (never re-run) or a small number such as 2")


def _message_cap_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    cap = values.get("oq_max_message_mb")
    if cap is not None and not (_is_int(cap) and 1 <= cap <= MAX_MESSAGE_MB):
        yield Finding(
            "oq_max_message_mb",
            f"must be a whole number of MB in 1..{MAX_MESSAGE_MB}, got {cap!r}",
            "set oq_max_message_mb to the largest task result you expect (default 512); "
            "bigger results are yielded in parts by generator tasks",
        )


def _cgroup_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    high, peak = values.get("oq_memory_high_percent"), values.get("oq_memory_max_percent")
    if high is None or peak is None:
        return
    if not (_is_number(high) and _is_number(peak) and 0 < high <= peak <= 100):
        yield Finding(
            "oq_memory_high_percent",
            "cgroup caps must satisfy 0 < oq_memory_high_percent <= oq_memory_max_percent "
            f"<= 100 (percent of RAM), got high={high!r}, max={peak!r}",
            "set e.g. oq_memory_high_percent: 90 and oq_memory_max_percent: 95",
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _choice_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    distribute = values.get("oq_distribute")
    if distribute is not None and distribute not in DISTRIBUTE_MODES:
        yield Finding(
            "oq_distribute", f"must be one of {', '.join(DISTRIBUTE_MODES)}, got {distribute!r}",
            "set oq_distribute: zmq for a cluster",
        )
    for name in ("oq_multi_user", "oq_webui_enabled"):
        if name in values and not isinstance(values[name], bool):
            yield Finding(
                name, f"must be true or false, got {values[name]!r}",
                f"set {name}: true or {name}: false (unquoted)",
            )
    if "oq_default_cores" in values and not _valid_cores(values["oq_default_cores"]):
        yield Finding(
            "oq_default_cores",
            f"must be -1 (all cores) or an integer >= 1, got {values['oq_default_cores']!r}",
            "set oq_default_cores: -1",
        )


def _authkey_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    key = values.get("oq_authkey")
    if key is None or key == GENERATED:
        return
    fix = (
        "remove oq_authkey from the inventory so a secret is generated in "
        "<inventory>/credentials/oq_authkey.txt, or set a vaulted random value of "
        f"at least {MIN_AUTHKEY_LENGTH} characters"
    )
    if not isinstance(key, str) or key.strip().lower() == "changeme":
        yield Finding("oq_authkey", "is the well-known placeholder or not a string", fix)
    elif len(key) < MIN_AUTHKEY_LENGTH:
        yield Finding(
            "oq_authkey", f"is {len(key)} characters long, need at least {MIN_AUTHKEY_LENGTH}", fix
        )


def _user_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    for name in ("oq_user", "oq_group"):
        value = values.get(name)
        if value is not None and not _valid_account_name(value):
            yield Finding(
                name, f"is not a valid account name: {value!r}",
                f"set {name} to lower-case letters, digits, '_' or '-' (e.g. openquake)",
            )


USERS_FIX = ("list cluster users as mappings in group_vars/all.yml, e.g. oq_users_list: "
             "[{name: alice}, {name: bob, create: true, uid: 2001}]")


def _cluster_users_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    """oq_users_list (role oq_users) and oq_admin_users: names, keys, no duplicates, and no
    service account among the cluster users (it is set up by oq_common)."""
    admins = values.get("oq_admin_users", [])
    if not isinstance(admins, list) or not all(_valid_account_name(a) for a in admins):
        yield Finding("oq_admin_users", f"must be a list of account names, got {admins!r}",
                      "set oq_admin_users to a list such as [openquake, root]")
    users = values.get("oq_users_list", [])
    if not isinstance(users, list):
        yield Finding("oq_users_list", f"must be a list, got {users!r}", USERS_FIX)
        return
    seen: set[str] = set()
    service = {values.get("oq_user", "openquake"), "root"}
    for index, item in enumerate(users):
        where = f"item {index + 1}"
        if not isinstance(item, Mapping) or not _valid_account_name(item.get("name")):
            yield Finding("oq_users_list", f"{where} must be a mapping with a valid account "
                          f"name (lower-case letters, digits, '_', '-'), got {item!r}", USERS_FIX)
            continue
        name = item["name"]
        unknown = set(item) - {"name", "create", "uid", "webui_password"}
        if unknown:
            yield Finding("oq_users_list", f"{where} ({name}) has unknown keys "
                          f"{sorted(unknown)}", "use only name, create, uid and webui_password")
        password = item.get("webui_password")
        if password is not None and (not isinstance(password, str) or not 8 <= len(password)
                                     <= 1024 or "\n" in password or "\r" in password):
            # never echo the password itself
            yield Finding("oq_users_list", f"{where} ({name}): webui_password must be one line "
                          "of 8 to 1024 characters", "set it from Ansible Vault, e.g. "
                          "webui_password: '{{ vault_oqalice_webui_password }}', or drop it "
                          "(a random one is generated once on the master)")
        if not isinstance(item.get("create", False), bool):
            yield Finding("oq_users_list", f"{where} ({name}): create must be true or false, "
                          f"got {item['create']!r}", USERS_FIX)
        uid = item.get("uid")
        if uid is not None and (not _is_int(uid) or not 1000 <= uid <= MAX_ID
                                or uid == NFS_NOBODY_ID or uid == values.get("oq_uid")):
            yield Finding("oq_users_list", f"{where} ({name}): uid must be a free regular "
                          f"user id (1000..{MAX_ID}, not nobody's nor oq_uid), got {uid!r}",
                          "pick an id that is free on the master, or drop uid")
        if uid is not None and not item.get("create", False):
            yield Finding("oq_users_list", f"{where} ({name}): uid is only used with create: "
                          "true", f"add create: true to {name}, or drop its uid")
        if name in service:
            yield Finding("oq_users_list", f"{where}: {name} is a service account (oq_user or "
                          "root), set up by the roles already", f"remove {name} from the list "
                          "(admins are listed in oq_admin_users)")
        if name in seen:
            yield Finding("oq_users_list", f"{name} is listed twice", f"list {name} once")
        seen.add(name)


def shared_engine_dir(shared_dir: str, user: str) -> str:
    """The part of the shared dir the engine's account owns (mode 2770, setgid): the shared
    dir itself, or <shared_dir>/<user> when the shared dir is /home (the manual's choice),
    which holds everyone's home and is never handed to the engine's account."""
    return f"{shared_dir.rstrip('/')}/{user}" if shared_dir.rstrip("/") == "/home" else shared_dir


def _valid_account_name(value: Any) -> bool:
    if not isinstance(value, str) or not value or len(value) > 32:
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
    return (value[0].isalpha() or value[0] == "_") and set(value) <= allowed


def pinned_openquake_versions(pins: Path = OPENQUAKE_PINS) -> list[str]:
    prefix = "openquake-engine-"
    return sorted(path.stem[len(prefix):] for path in pins.glob(f"{prefix}*.txt"))


def _flavor_findings(values: Mapping[str, Any]) -> Iterator[Finding]:
    if values.get("oq_engine_flavor") != "openquake" or not OPENQUAKE_PINS.is_dir():
        return
    version, pinned = values.get("oq_openquake_version"), pinned_openquake_versions()
    if str(version) not in pinned:
        yield Finding(
            "oq_openquake_version",
            f"{version!r} has no pinned requirements (roles/oq_engine/files/"
            f"openquake-engine-{version}.txt); this checkout can install {', '.join(pinned)}",
            f"set oq_openquake_version to one of {', '.join(pinned)}, or add the pinned "
            "file for your version as the existing one's header says",
        )


HOST_RULES: tuple[Callable[[Mapping[str, Any]], Iterable[Finding]], ...] = (
    _user_findings,
    _cluster_users_findings,
    _identity_findings,
    _path_findings,
    _choice_findings,
    _port_findings,
    _memory_findings,
    _retries_findings,
    _cgroup_findings,
    _message_cap_findings,
    _authkey_findings,
    _flavor_findings,
)
