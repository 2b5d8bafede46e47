"""Commands on the cluster's nodes through testinfra's ansible backend.

testinfra reads the inventory with `ansible-inventory` and talks to each host the way
Ansible would (ssh, docker, local, ...), so `verify` needs no connection settings of its own.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

# Runs on a node: connect to each (address, port) and say open / refused / timeout.
PROBE = """
import json, socket, sys
address, timeout = sys.argv[1], float(sys.argv[2])
states = {}
for port in sys.argv[3:]:
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    s.settimeout(timeout)
    try:
        s.connect((address, int(port)))
        states[port] = "open"
    except ConnectionRefusedError:
        states[port] = "refused"
    except (socket.timeout, TimeoutError):
        states[port] = "timeout"
    except OSError as error:
        states[port] = "error: " + str(error)
    finally:
        s.close()
print(json.dumps(states))
"""

# Runs on a node: accept (and drop) connections on address:port for a few seconds.
LISTENER = """
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = socket.create_server((sys.argv[1], int(sys.argv[2])), family=family)
server.settimeout(0.5)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        server.accept()[0].close()
    except OSError:
        pass
"""


# Commands running at once on one host. Through ssh every command is a session, and with
# ssh multiplexing (ansible.cfg) all of a host's sessions share one connection, on which
# sshd refuses more than MaxSessions (default 10: "Session open refused by peer"); without
# it, MaxStartups drops concurrent new connections. The cross-node tests' per-worker probes
# (nodetests, run with verify's Nodes) would otherwise open 16 and more at once on the
# master of a 16-worker cluster. 6 leaves room for the pytest run of the master's own node
# tests and verify's outside check (one session at a time each, in other processes that
# share the connection) and for someone else's ssh session or Ansible run on it.
SESSIONS_PER_HOST = 6
_sessions: dict[str, threading.BoundedSemaphore] = {}
_sessions_guard = threading.Lock()
_sessions_limit = SESSIONS_PER_HOST


def limit_sessions(per_host: int) -> None:
    """At most `per_host` commands at once on each host, from now on (the CLI's
    --sessions-per-host)."""
    global _sessions_limit
    if per_host < 1:
        raise ValueError(f"sessions per host must be 1 or more, not {per_host}")
    with _sessions_guard:
        _sessions_limit = per_host
        _sessions.clear()


def sessions_per_host() -> int:
    """The cap now in force (limit_sessions)."""
    return _sessions_limit


def host_sessions(name: str) -> threading.BoundedSemaphore:
    """The one semaphore of the host `name`, shared by every Node of that name."""
    with _sessions_guard:
        if name not in _sessions:
            _sessions[name] = threading.BoundedSemaphore(_sessions_limit)
        return _sessions[name]


def ensure_ansible_on_path() -> None:
    """testinfra runs `ansible-inventory`: make this venv's Ansible the one it finds."""
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")


@dataclass
class Output:
    rc: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return (self.stdout.strip() or self.stderr.strip())[:300]


@dataclass
class Node:
    """One inventory host and its cluster address, reached through testinfra."""

    name: str
    address: str
    inventory: str
    python: str = "python3"
    roles: frozenset[str] = field(default_factory=frozenset)
    settings: dict[str, Any] = field(default_factory=dict)  # its evaluated oq_* values

    @cached_property
    def host(self) -> Any:
        import testinfra

        ensure_ansible_on_path()
        return testinfra.get_host(f"ansible://{self.name}", ansible_inventory=self.inventory)

    @cached_property
    def login(self) -> str:
        return self.run("id -un").stdout.strip()

    def run(self, command: str, *args: object) -> Output:
        """`command` on the node, waiting while the node has SESSIONS_PER_HOST running."""
        host = self.host  # connect (read the inventory) outside the session slot
        with host_sessions(self.name):
            result = host.run(command, *(str(arg) for arg in args))
        return Output(result.rc, result.stdout, result.stderr)

    def run_as(self, user: str, command: str, *args: object) -> Output:
        """`command` as `user`: directly, with runuser when we are root, else sudo -n."""
        if self.login == user:
            return self.run(command, *args)
        quoted = shlex.quote(self.host.backend.get_command(command, *(str(a) for a in args)))
        if self.login == "root":
            return self.run(f"runuser -u {shlex.quote(user)} -- sh -c {quoted}")
        return self.run(f"sudo -n -u {shlex.quote(user)} -- sh -c {quoted}")

    def run_as_root(self, command: str, *args: object) -> Output:
        if self.login == "root":
            return self.run(command, *args)
        quoted = shlex.quote(self.host.backend.get_command(command, *(str(a) for a in args)))
        return self.run(f"sudo -n -- sh -c {quoted}")

    def probe(self, address: str, ports: list[int], timeout: float = 3.0) -> dict[int, str]:
        """Connect from this node to address:port for each port: open, refused or timeout."""
        out = self.run(f"{self.python} -c %s %s %s " + " ".join(["%s"] * len(ports)),
                       PROBE, address, timeout, *ports)
        if out.rc != 0:
            return {port: f"error: {out.text}" for port in ports}
        return {int(port): state for port, state in json.loads(out.stdout).items()}
