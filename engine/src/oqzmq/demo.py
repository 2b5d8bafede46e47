"""The demo calculation: a small probabilistic seismic hazard analysis in numpy.

Synthetic point sources (Gutenberg-Richter magnitude distributions) around synthetic sites, a
simple ground-motion model (lognormal PGA, magnitude and distance scaling) and hazard curves
(probability of exceeding each intensity level in ``investigation_time`` years).

The sources are split into ``tasks`` blocks; each task yields a partial result (the annual
exceedance rates of a chunk of sources) per chunk, so one task returns many messages. The
master keeps the partial results by chunk and adds them in chunk order, which makes the
hazard curves bit-identical for a given seed in every distribution mode. The datastore gets
``hcurves``, ``sites``, ``imls``, and the monitor's ``performance`` and ``task_info`` tables
(the latter says which host ran each task).

``task_memory_mb`` (``oqz run demo --task-memory-mb N``) makes every task hold N MB more,
allocated and written while it computes: a way to try the workers' memory limits (a task
over a worker's cgroup cap, ``oq_memory_max_percent`` of openquake.slice, is killed by the
OOM killer and reported "out of memory"; over ``[memory] hard_mem_limit`` the workerpool
kills it first). It changes no result.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from oqzmq.config import Config
from oqzmq.datastore import new_calculation
from oqzmq.monitor import Monitor
from oqzmq.parallel import Starmap

SIZES = {  # sources, sites, tasks
    "tiny": (20, 50, 4),
    "small": (200, 500, 8),
    "medium": (800, 2000, 16),
    "large": (2000, 5000, 32),
}
MAGNITUDES = np.arange(5.0, 8.0, 0.1) + 0.05  # bin centres
IMLS = np.logspace(np.log10(0.005), np.log10(2.0), 20)  # PGA in g
SIGMA = 0.65
INVESTIGATION_TIME = 50.0
KM_PER_DEGREE = 111.19
CHUNK_VALUES = 1_500_000  # floats per chunk of (sources, magnitudes, sites, levels)

SOURCE_DTYPE = np.dtype([("lon", "f8"), ("lat", "f8"), ("depth", "f8"), ("a", "f8"),
                         ("b", "f8"), ("mmax", "f8")])


@dataclass(frozen=True)
class DemoResult:
    calc_id: int
    path: Path
    seconds: float
    checksum: str
    tasks_per_host: dict[str, int]
    max_poe: float
    moves: int = 0  # tasks re-run after a fault (the datastore's task_retries table)
    dealt: int = 0  # queued tasks dealt to a workerpool that rejoined (task_retries, attempt 0)


def make_model(seed: int, n_sources: int, n_sites: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic synthetic sources and sites (a 2x2 degree region)."""
    rng = np.random.default_rng(seed)
    sources = np.zeros(n_sources, SOURCE_DTYPE)
    sources["lon"] = rng.uniform(0, 2, n_sources)
    sources["lat"] = rng.uniform(0, 2, n_sources)
    sources["depth"] = rng.uniform(5, 20, n_sources)
    sources["a"] = rng.uniform(2.0, 3.5, n_sources) - np.log10(n_sources)
    sources["b"] = rng.normal(1.0, 0.05, n_sources)
    sources["mmax"] = rng.uniform(6.5, 8.0, n_sources)
    sites = np.column_stack([rng.uniform(0, 2, n_sites), rng.uniform(0, 2, n_sites)])
    return sources, sites


def occurrence_rates(sources: np.ndarray) -> np.ndarray:
    """Annual rate of each magnitude bin for each source (truncated Gutenberg-Richter)."""
    low, high = MAGNITUDES - 0.05, MAGNITUDES + 0.05
    a, b = sources["a"][:, None], sources["b"][:, None]
    rates = 10 ** (a - b * low) - 10 ** (a - b * high)
    return np.where(MAGNITUDES[None, :] <= sources["mmax"][:, None], rates, 0.0)


def erfc(x: np.ndarray) -> np.ndarray:
    """Complementary error function (Chebyshev fit, relative error < 1.2e-7)."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    value = t * np.exp(poly)
    return np.where(x >= 0, value, 2.0 - value)


def ground_motion(magnitudes: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Mean ln(PGA [g]) for (sources, magnitudes, sites): a generic attenuation law."""
    dm = magnitudes[None, :, None] - 6.0
    r = np.sqrt(distances[:, None, :] ** 2 + 36.0)
    return -1.5 + 1.2 * dm - 0.1 * dm**2 - (1.1 + 0.1 * dm) * np.log(r)


def hazard_task(
    first: int, sources: np.ndarray, sites: np.ndarray, monitor: Monitor
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index of the chunk's first source, exceedance rates per site and level)."""
    per_source = len(MAGNITUDES) * len(sites) * len(IMLS)
    chunk = max(1, CHUNK_VALUES // per_source)
    for start in range(0, len(sources), chunk):
        block = sources[start:start + chunk]
        with monitor("distances"):
            dx = (block["lon"][:, None] - sites[None, :, 0]) * KM_PER_DEGREE * np.cos(
                np.radians(block["lat"][:, None]))
            dy = (block["lat"][:, None] - sites[None, :, 1]) * KM_PER_DEGREE
            distances = np.sqrt(dx**2 + dy**2 + block["depth"][:, None] ** 2)
        with monitor("ground motion"):
            mean = ground_motion(MAGNITUDES, distances)
        with monitor("exceedance"):
            z = (np.log(IMLS)[None, None, None, :] - mean[..., None]) / (SIGMA * np.sqrt(2.0))
            poes = 0.5 * erfc(z)
            rates = np.einsum("sm,smki->ki", occurrence_rates(block), poes)
        yield first + start, rates


def hazard_task_holding(
    memory_mb: int, first: int, sources: np.ndarray, sites: np.ndarray, monitor: Monitor
) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`hazard_task` holding ``memory_mb`` MB more, written (resident) before it starts
    (see ``task_memory_mb`` in the module doc)."""
    ballast = np.ones(memory_mb << 17)  # 8-byte floats
    yield from hazard_task(first, sources, sites, monitor)
    del ballast


def run_demo(
    config: Config,
    size: str = "small",
    seed: int = 42,
    distribute: str | None = None,
    calc_id: int | None = None,
    sources: int | None = None,
    sites: int | None = None,
    tasks: int | None = None,
    task_memory_mb: int = 0,
) -> DemoResult:
    """Run the demo calculation, write its datastore, return a summary."""
    n_sources, n_sites, n_tasks = SIZES[size]
    n_sources, n_sites, n_tasks = sources or n_sources, sites or n_sites, tasks or n_tasks
    calc_id, path = new_calculation(config, calc_id)
    start = time.perf_counter()
    monitor = Monitor("demo", path)
    with monitor("building the model"):
        source_array, site_array = make_model(seed, n_sources, n_sites)
    blocks = np.array_split(np.arange(n_sources), min(n_tasks, n_sources))
    args = [(int(b[0]), source_array[b], site_array) for b in blocks]
    if task_memory_mb:
        func, args = hazard_task_holding, [(task_memory_mb, *a) for a in args]
    else:
        func = hazard_task
    smap = Starmap(func, args, monitor, distribute=distribute, config=config)
    partials = dict(smap)
    with monitor("combining"):
        rates = np.zeros((n_sites, len(IMLS)))
        for first in sorted(partials):
            rates += partials[first]
        hcurves = 1.0 - np.exp(-rates * INVESTIGATION_TIME)
    with h5py.File(path, "a") as h5:
        h5["hcurves"] = hcurves
        h5["sites"] = site_array
        h5["imls"] = IMLS
        h5.attrs.update(seed=seed, sources=n_sources, sites=n_sites, tasks=len(blocks),
                        distribute=smap.distribute)
    monitor.flush()
    return DemoResult(
        calc_id, path, time.perf_counter() - start,
        hashlib.sha256(hcurves.tobytes()).hexdigest()[:16],
        dict(Counter(t.host for t in monitor.tasks)), float(hcurves.max()),
        sum(r.attempt > 0 for r in monitor.retries), sum(r.attempt == 0 for r in monitor.retries),
    )
