"""Small built-in tasks (importable on every node, so they need no shared code)."""

from __future__ import annotations

import os
import socket

from oqzmq.monitor import Monitor


def hostinfo(monitor: Monitor) -> tuple[str, int]:
    """Where this task ran: (hostname, pid). ``oqz workers debug`` runs it on every host."""
    with monitor("hostinfo"):
        return socket.gethostname(), os.getpid()


def echo(value: object, monitor: Monitor) -> object:
    """Return the argument unchanged (round-trip checks, benchmarks)."""
    return value
