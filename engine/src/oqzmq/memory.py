"""How much memory a host (or the cgroup a process runs in) uses, and whether the OOM killer
struck: what ``[memory] soft_mem_limit`` / ``hard_mem_limit`` are checked against.

The real engine checks ``psutil.virtual_memory().percent`` (used = total - available). Here
the same figure comes from ``/proc/meminfo``, and where the process runs in a memory cgroup
with a limit (systemd's ``MemoryMax=`` on ``openquake.slice``, a container's limit), its use
of that limit counts too: the kernel's OOM killer fires at the cgroup's limit, well before the
host's RAM is full. The larger of the two percentages is what the limits are compared with.
Both cgroup v2 (``memory.current``, ``memory.max``, ``memory.events``) and v1
(``memory.usage_in_bytes``, ``memory.limit_in_bytes``, ``memory.oom_control``) are read;
reclaimable page cache (``inactive_file``) is not counted as used.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")
UNLIMITED = 1 << 60
MB = 1 << 20


@dataclass(frozen=True)
class MemoryUse:
    """``used_mb`` of ``total_mb`` in use (``percent``) in ``scope`` (the host or a cgroup)."""

    percent: float
    used_mb: float
    total_mb: float
    scope: str

    def describe(self) -> str:
        return (f"{self.percent:.0f}% of the memory in use ({self.used_mb:.0f} of "
                f"{self.total_mb:.0f} MB, {self.scope})")


def host_memory(meminfo: Path = Path("/proc/meminfo")) -> MemoryUse:
    """Used memory of the whole host, as psutil computes it: total - available."""
    fields = {}
    for line in meminfo.read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0]) * 1024
    total, available = fields["MemTotal"], fields.get("MemAvailable", fields["MemFree"])
    used = total - available
    return MemoryUse(100.0 * used / total, used / MB, total / MB,
                     f"host {socket.gethostname()}")


def memory_cgroup(pid: int | str = "self") -> Path | None:
    """The directory of the memory cgroup of process ``pid`` (None: none found)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified = None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            directory = CGROUP_V1_MEMORY / path.lstrip("/")
            if (directory / "memory.oom_control").exists():
                return directory
        elif hierarchy == "0":
            unified = path.lstrip("/")
    for root in CGROUP_ROOTS if unified is not None else ():
        directory = root / unified
        if (directory / "memory.events").exists():
            return directory
    return None


def oom_kills(cgroup: Path) -> int:
    """The cgroup's count of processes killed by the OOM killer (v2 memory.events, v1
    memory.oom_control: both have an ``oom_kill`` line)."""
    name = "memory.events" if (cgroup / "memory.events").exists() else "memory.oom_control"
    try:
        text = (cgroup / name).read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def cgroup_memory(cgroup: Path) -> MemoryUse | None:
    """Use of the tightest memory limit on ``cgroup`` (None: no limit)."""
    if (cgroup / "memory.events").exists():
        return _cgroup_v2(cgroup)
    return _cgroup_v1(cgroup)


def _stat(cgroup: Path, key: str) -> int:
    for line in (cgroup / "memory.stat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _cgroup_v1(cgroup: Path) -> MemoryUse | None:
    try:
        limit = min(int((cgroup / "memory.limit_in_bytes").read_text()),
                    _stat(cgroup, "hierarchical_memory_limit") or UNLIMITED)
        if limit >= UNLIMITED:
            return None
        used = int((cgroup / "memory.usage_in_bytes").read_text())
        used -= _stat(cgroup, "total_inactive_file")
    except (OSError, ValueError):
        return None
    return MemoryUse(100.0 * used / limit, used / MB, limit / MB, f"cgroup {cgroup}")


def _cgroup_v2(cgroup: Path) -> MemoryUse | None:
    """The ancestor (or the cgroup itself) closest to its memory.max."""
    worst = None
    for directory in (cgroup, *cgroup.parents):
        try:
            text = (directory / "memory.max").read_text().strip()
            if text == "max":
                continue
            used = int((directory / "memory.current").read_text())
            used -= _stat(directory, "inactive_file")
        except (OSError, ValueError):
            break  # above the cgroup root
        use = MemoryUse(100.0 * used / int(text), used / MB, int(text) / MB,
                        f"cgroup {directory}")
        if worst is None or use.percent > worst.percent:
            worst = use
    return worst


def memory_use(cgroup: Path | None) -> MemoryUse:
    """The higher of the host's and ``cgroup``'s use."""
    use = host_memory()
    limited = cgroup_memory(cgroup) if cgroup is not None else None
    return limited if limited is not None and limited.percent > use.percent else use


class MemoryLimits:
    """``[memory] soft_mem_limit`` and ``hard_mem_limit`` (percent) checked against
    :func:`memory_use`: ``check()`` gives the use and whether it is above each."""

    def __init__(self, soft_percent: int, hard_percent: int) -> None:
        self.soft = soft_percent
        self.hard = hard_percent
        self.cgroup = memory_cgroup()

    def check(self) -> tuple[MemoryUse, bool, bool]:
        use = memory_use(self.cgroup)
        return use, use.percent > self.soft, use.percent > self.hard

    def error(self, use: MemoryUse, host: str, what: str) -> str:
        return (f"MemoryError: using more memory than allowed by configuration on host "
                f"{host}: {use.describe()}, above [memory] hard_mem_limit = {self.hard}%: "
                f"{what}")

    def warning(self, use: MemoryUse, host: str) -> str:
        return (f"host {host}: {use.describe()}, above [memory] soft_mem_limit = "
                f"{self.soft}% (at hard_mem_limit = {self.hard}% the calculation is stopped)")
