"""Small built-in tasks (importable on every node, so they need no shared code)."""

from __future__ import annotations

import os
import socket

import numpy as np

from oqzmq.monitor import Monitor


def hostinfo(monitor: Monitor) -> tuple[str, int]:
    """Where this task ran: (hostname, pid). ``oqz workers debug`` runs it on every host."""
    with monitor("hostinfo"):
        return socket.gethostname(), os.getpid()


def echo(value: object, monitor: Monitor) -> object:
    """Return the argument unchanged (round-trip checks, benchmarks)."""
    return value


def filled(n_floats: int, value: float, monitor: Monitor) -> np.ndarray:
    """An array of ``n_floats`` float64 equal to ``value`` (``oqz workers bench``'s large
    results: what travels back is the array, as out-of-band frames)."""
    with monitor("filled"):
        return np.full(n_floats, float(value))
