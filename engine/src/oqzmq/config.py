"""Read ``openquake.cfg``: the same file (sections and keys) the real OpenQuake engine reads.

Lookup order: ``$OQ_CONFIG_FILE``, then ``/etc/openquake/openquake.cfg``. A missing file gives
single-machine defaults (``processpool``, no cluster); a file that exists but is wrong gives a
:class:`ConfigError` naming the file, the section/key and the fix.

``OQ_DISTRIBUTE`` in the environment overrides ``[distribution] oq_distribute``.

Example::

    cfg = load_config()
    cfg.distribute          # 'no' | 'processpool' | 'zmq'
    cfg.host_cores          # (HostCores('10.0.0.2', -1), ...)
    cfg.require_authkey()   # the cluster secret, or a ConfigError explaining how to set it
"""

from __future__ import annotations

import configparser
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_CONFIG = Path("/etc/openquake/openquake.cfg")
DISTRIBUTE_MODES = ("no", "processpool", "zmq")
# Values the real engine ships with or that provisioning must have replaced.
WEAK_AUTHKEYS = frozenset({"", "changeme", "change-me", "secret"})


class ConfigError(ValueError):
    """openquake.cfg (or OQ_DISTRIBUTE) is wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class HostCores:
    """One ``[zworkers] host_cores`` entry: a worker host and its process count (-1 = all)."""

    host: str
    cores: int


@dataclass(frozen=True)
class Config:
    """Typed view of openquake.cfg. ``path`` is None when no file was found (defaults)."""

    path: Path | None = None
    distribute: str = "processpool"
    serialize_jobs: int = 1  # at most this many calculations execute at once; 0 = no limit
    multi_user: bool = False
    admins: tuple[str, ...] = ("openquake", "root")  # multi_user: these users see all
    db_file: str = ""
    db_listen: str = "127.0.0.1"
    db_host: str = "127.0.0.1"
    db_port: int = 1908
    receiver_host: str = "127.0.0.1"
    receiver_ports: range = field(default_factory=lambda: range(1912, 1921))
    authkey: str = ""
    host_cores: tuple[HostCores, ...] = ()
    ctrl_port: int = 1909
    max_message_mb: int = 512  # the largest message any engine socket accepts
    shared_dir: str = ""
    custom_tmp: str = ""
    soft_mem_limit: int = 90
    hard_mem_limit: int = 99
    task_retries: int = 2  # times a task lost with its worker or pool is re-run
    oom_retries: int = 0  # of those, after its worker ran out of memory

    @property
    def source(self) -> str:
        """Where the settings came from, for error messages."""
        return str(self.path) if self.path else "built-in defaults (no openquake.cfg found)"

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb << 20

    def require_authkey(self) -> str:
        """The cluster secret; a ConfigError with the fix when it is missing or a placeholder."""
        if self.authkey.strip().lower() in WEAK_AUTHKEYS:
            raise ConfigError(
                f"{self.source}: [dbserver] authkey is "
                f"{'missing' if not self.authkey else repr(self.authkey)}; every zmq message is "
                "authenticated with it. Set a long random secret (provisioning generates one; "
                "by hand: python3 -c 'import secrets; print(secrets.token_urlsafe(36))')."
            )
        return self.authkey

    def require_workers(self) -> tuple[HostCores, ...]:
        """The workerpool hosts; a ConfigError when ``[zworkers] host_cores`` is empty."""
        if not self.host_cores:
            raise ConfigError(
                f"{self.source}: [zworkers] host_cores is empty; zmq mode needs at least one "
                "worker, e.g. 'host_cores = 10.0.0.2 -1, 10.0.0.3 4' (-1 = all cores)."
            )
        return self.host_cores


def config_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The openquake.cfg in effect: ``$OQ_CONFIG_FILE`` (must exist), else the system file."""
    env = os.environ if environ is None else environ
    explicit = env.get("OQ_CONFIG_FILE")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(
                f"OQ_CONFIG_FILE={explicit} does not exist or is not a file; "
                "point it at an openquake.cfg or unset it to use /etc/openquake/openquake.cfg."
            )
        return path
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load_config(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read openquake.cfg (``path`` or the lookup order above) and apply ``OQ_DISTRIBUTE``."""
    env = os.environ if environ is None else environ
    cfg_path = Path(path) if path is not None else config_path(env)
    config = _parse_file(cfg_path) if cfg_path else Config()
    override = env.get("OQ_DISTRIBUTE")
    if override:
        config = _replace(config, distribute=_check_distribute(override, "OQ_DISTRIBUTE"))
    return config


def parse_host_cores(text: str, where: str = "[zworkers] host_cores") -> tuple[HostCores, ...]:
    """Parse ``'10.0.0.2 -1, 10.0.0.3 4'`` into HostCores entries."""
    entries = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        words = item.split()
        if len(words) != 2:
            raise ConfigError(
                f"{where}: entry {item!r} must be '<host> <cores>' (cores -1 = all), "
                "entries separated by commas"
            )
        host, cores_text = words
        cores = _to_int(cores_text, f"{where} ({host})")
        if cores == 0 or cores < -1:
            raise ConfigError(f"{where}: {host} has cores={cores}; use -1 (all cores) or 1..N")
        entries.append(HostCores(host, cores))
    return tuple(entries)


def parse_port_range(text: str, where: str = "[dbserver] receiver_ports") -> range:
    """Parse ``'1912-1920'`` (inclusive) or a single port into a range of ports."""
    first_text, _, last_text = text.strip().partition("-")
    first = _to_int(first_text, where)
    last = _to_int(last_text, where) if last_text else first
    if not 0 < first <= last < 65536:
        raise ConfigError(f"{where} = {text!r}: expected FIRST-LAST with 0 < FIRST <= LAST < 65536")
    return range(first, last + 1)


def is_local_host(host: str) -> bool:
    """True for addresses that are this machine by definition (loopback, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_file(path: Path) -> Config:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc

    def get(section: str, key: str, default: str = "") -> str:
        return parser.get(section, key, fallback=default).strip()

    def where(section: str, key: str) -> str:
        return f"{path}: [{section}] {key}"

    distribute = get("distribution", "oq_distribute", "processpool")
    return Config(
        path=path,
        distribute=_check_distribute(distribute, where("distribution", "oq_distribute")),
        serialize_jobs=_to_serialize_jobs(
            get("distribution", "serialize_jobs", "true"), where("distribution", "serialize_jobs")
        ),
        multi_user=_to_bool(
            get("dbserver", "multi_user", "false"), where("dbserver", "multi_user")
        ),
        admins=_to_names(get("dbserver", "admins", "openquake, root")),
        db_file=get("dbserver", "file"),
        db_listen=get("dbserver", "listen", "127.0.0.1"),
        db_host=get("dbserver", "host", "127.0.0.1"),
        db_port=_to_int(get("dbserver", "port", "1908"), where("dbserver", "port")),
        receiver_host=get("dbserver", "receiver_host") or get("dbserver", "host", "127.0.0.1"),
        receiver_ports=parse_port_range(
            get("dbserver", "receiver_ports", "1912-1920"), where("dbserver", "receiver_ports")
        ),
        authkey=get("dbserver", "authkey"),
        host_cores=parse_host_cores(get("zworkers", "host_cores"), where("zworkers", "host_cores")),
        ctrl_port=_to_int(get("zworkers", "ctrl_port", "1909"), where("zworkers", "ctrl_port")),
        max_message_mb=_to_message_cap(get("zworkers", "max_message_mb", "512"),
                                       where("zworkers", "max_message_mb")),
        shared_dir=get("directory", "shared_dir"),
        custom_tmp=get("directory", "custom_tmp"),
        soft_mem_limit=_to_int(get("memory", "soft_mem_limit", "90"),
                               where("memory", "soft_mem_limit")),
        hard_mem_limit=_to_int(get("memory", "hard_mem_limit", "99"),
                               where("memory", "hard_mem_limit")),
        task_retries=_to_count(get("distribution", "task_retries", "2"),
                               where("distribution", "task_retries")),
        oom_retries=_to_count(get("memory", "oom_retries", "0"), where("memory", "oom_retries")),
    )


def _to_names(text: str) -> tuple[str, ...]:
    """``'openquake, root'`` (commas and/or spaces) into a tuple of account names."""
    return tuple(name for name in text.replace(",", " ").split() if name)


def _check_distribute(value: str, where: str) -> str:
    mode = value.strip().lower()
    if mode not in DISTRIBUTE_MODES:
        raise ConfigError(f"{where} = {value!r}: use one of {', '.join(DISTRIBUTE_MODES)}")
    return mode


def _to_int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{where} = {text!r} is not an integer") from None


def _to_count(text: str, where: str) -> int:
    count = _to_int(text, where)
    if count < 0:
        raise ConfigError(f"{where} = {text!r}: use a number >= 0")
    return count


def _to_message_cap(text: str, where: str) -> int:
    cap = _to_int(text, where)
    if cap < 1:
        raise ConfigError(f"{where} = {text!r}: use the largest message in MB to accept (>= 1, "
                          "e.g. 512)")
    return cap


def _to_bool(text: str, where: str) -> bool:
    lowered = text.lower()
    if lowered in {"true", "yes", "on", "1"}:
        return True
    if lowered in {"false", "no", "off", "0"}:
        return False
    raise ConfigError(f"{where} = {text!r}: use true or false")


def _to_serialize_jobs(text: str, where: str) -> int:
    """The reference engine's semantics: true = 1 calculation at a time, false = no limit."""
    if text.lower() in {"true", "yes", "on"}:
        return 1
    if text.lower() in {"false", "no", "off"}:
        return 0
    count = _to_int(text, where)
    if count < 0:
        raise ConfigError(f"{where} = {text!r}: use true, false or a number of calculations >= 0")
    return count


def _replace(config: Config, **changes: object) -> Config:
    from dataclasses import replace

    return replace(config, **changes)
