"""Task functions of the engine benchmark (importable by every backend's workers)."""

from __future__ import annotations

from typing import Any

import numpy as np

LARGE_FLOATS = 6_250_000  # 50 MB of float64


def tiny(i: int, monitor: Any = None) -> int:
    return i


def large(i: int, monitor: Any = None) -> np.ndarray:
    return np.full(LARGE_FLOATS, float(i))


def hazard_list(first: int, sources: np.ndarray, sites: np.ndarray) -> list[Any]:
    """The demo task with its partial results collected (for pools without streaming)."""
    from oqzmq.demo import hazard_task
    from oqzmq.monitor import Monitor

    return list(hazard_task(first, sources, sites, Monitor("hazard")))


def tiny_star(i: int) -> int:
    return i


def large_star(i: int) -> np.ndarray:
    return large(i)
