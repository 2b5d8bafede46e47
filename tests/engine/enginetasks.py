"""Tasks used by the engine tests; importable by the workers through PYTHONPATH (conftest)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from oqzmq.monitor import Monitor


def square(x: int, monitor: Monitor) -> int:
    with monitor("squaring"):
        return x * x


def chunks(n: int, size: int, monitor: Monitor):
    """Yield n arrays of ``size`` float64 each, filled with their index."""
    for i in range(n):
        yield i, np.full(size, float(i))


def fail(x: int, monitor: Monitor) -> int:
    if x == 3:
        raise ValueError(f"bad input {x}")
    return x


def pid_then_sleep(path: str, seconds: float, monitor: Monitor) -> int:
    """Write this worker's pid to ``path`` then sleep (to be killed mid-task)."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def touch(path: str, monitor: Monitor) -> str:
    Path(path).touch()
    return path


def sleep_first_time(marker: str, seconds: float, value: int, monitor: Monitor) -> int:
    """The first run writes its pid to ``marker`` and sleeps (to be killed or frozen); a re-run
    (the marker exists) returns at once."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        time.sleep(seconds)
    return value


def partials_then_hang(marker: str, n: int, monitor: Monitor):
    """Yield n large partial results (sent at once, not batched); the first run stops after
    3 of them, writes its pid to ``marker`` and hangs (to be killed)."""
    for i in range(n):
        if i == 3 and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            time.sleep(120)
        yield i, np.full(40_000, float(i))


def wait_for_file(path: str, value: int, monitor: Monitor) -> int:
    """Return ``value`` once ``path`` exists (at most 120 s)."""
    deadline = time.monotonic() + 120
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def hog(total_mb: int, step_mb: int, pause: float, monitor: Monitor) -> int:
    """Allocate (and touch) ``total_mb`` MB, ``step_mb`` at a time, ``pause`` s apart."""
    held = []
    for _ in range(total_mb // step_mb):
        held.append(np.ones(step_mb << 17))  # 8-byte floats: step_mb MB
        time.sleep(pause)
    return sum(a.nbytes for a in held) >> 20


def zeros_mb(mb: int, monitor: Monitor) -> np.ndarray:
    """An array of ``mb`` MB (calloc'd: cheap until touched)."""
    return np.zeros(mb << 17)


def echo_when(value: str, go: str, monitor: Monitor) -> str:
    """Return ``value`` once the file ``go`` exists (at once if ``go`` is empty)."""
    deadline = time.monotonic() + 120
    while go and not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return value
