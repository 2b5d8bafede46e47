"""Helpers of the real-kernel checks: run Python on a node, a throwaway TCP listener."""

from __future__ import annotations

import shlex
from typing import Any

LISTENER_UNIT = "oqcluster-kernel-probe-{port}"


def python(host: Any, code: str, user: str | None = None) -> Any:
    """Run a Python snippet on `host` (as `user` when given); the testinfra result."""
    command = f"python3 -c {shlex.quote(code)}"
    if user:
        command = f"runuser -u {shlex.quote(user)} -- {command}"
    return host.run(command)


class Listener:
    """A throwaway TCP listener on `port` of `host` (a transient unit, 120 s at most)."""

    def __init__(self, host: Any, port: int) -> None:
        self.host, self.port = host, port
        self.unit = LISTENER_UNIT.format(port=port)

    def __enter__(self) -> Listener:
        code = (
            "import socket\ns=socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('', {self.port}))\ns.listen()\n"
            "while True:\n c, _ = s.accept()\n c.close()\n"
        )
        started = self.host.run(
            "systemd-run --unit=%s --collect -p RuntimeMaxSec=120 python3 -c %s", self.unit, code
        )
        assert started.rc == 0, f"cannot start a listener on port {self.port}: {started.stderr}"
        for _ in range(40):
            if self.host.socket(f"tcp://0.0.0.0:{self.port}").is_listening:
                return self
            self.host.run("sleep 0.25")
        raise AssertionError(f"the probe listener on port {self.port} did not start")

    def __exit__(self, *exc: object) -> None:
        self.host.run("systemctl stop %s", self.unit)
