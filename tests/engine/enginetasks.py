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


def zeros_mb(mb: int, monitor: Monitor) -> np.ndarray:
    """An array of ``mb`` MB (calloc'd: cheap until touched)."""
    return np.zeros(mb << 17)
