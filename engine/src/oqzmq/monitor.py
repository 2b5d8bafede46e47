"""Performance monitoring: wall time, memory, bytes returned and counts, per task and per block.

Every task receives a :class:`Monitor` as its last argument; ``with monitor('read sources'):``
measures a named block. The worker sends the task's measurements back with its last message;
the master's Monitor accumulates them and :meth:`Monitor.flush` writes two tables into the
calculation's HDF5 datastore:

``performance``  one row per operation (the task function and every named block):
                 operation, time_sec (summed), memory_mb (peak RSS seen), counts, bytes, nresults
``task_info``    one row per task: task_no, operation, host, pid, time_sec, memory_mb, bytes,
                 nresults
``task_retries`` one row per re-run of a task (see :mod:`oqzmq.parallel`): task_no,
                 operation, from_host (where it was lost), to_host, attempt (1 = first re-run),
                 reason (why it was lost: the worker killed, out of memory, the pool silent);
                 attempt 0: not a re-run but a task still queued on from_host, never
                 started, dealt to to_host, a workerpool that rejoined the calculation

``memory_mb`` is the peak resident memory of the process that ran the block (``ru_maxrss``):
what a sysadmin needs to size worker RAM.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import h5py
import numpy as np

PERFORMANCE_DTYPE = np.dtype(
    [("operation", "S80"), ("time_sec", "f8"), ("memory_mb", "f8"), ("counts", "i8"),
     ("bytes", "i8"), ("nresults", "i8")]
)
TASK_INFO_DTYPE = np.dtype(
    [("task_no", "i8"), ("operation", "S80"), ("host", "S64"), ("pid", "i8"),
     ("time_sec", "f8"), ("memory_mb", "f8"), ("bytes", "i8"), ("nresults", "i8")]
)
TASK_RETRIES_DTYPE = np.dtype(
    [("task_no", "i8"), ("operation", "S80"), ("from_host", "S64"), ("to_host", "S64"),
     ("attempt", "i8"), ("reason", "S400")]
)


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class OperationStats:
    """Accumulated measurements of one operation."""

    time_sec: float = 0.0
    memory_mb: float = 0.0
    counts: int = 0
    bytes: int = 0
    nresults: int = 0

    def add(self, other: OperationStats) -> None:
        self.time_sec += other.time_sec
        self.memory_mb = max(self.memory_mb, other.memory_mb)
        self.counts += other.counts
        self.bytes += other.bytes
        self.nresults += other.nresults


class TaskRecord(NamedTuple):
    """What one task cost and where it ran."""

    task_no: int
    operation: str
    host: str
    pid: int
    time_sec: float
    memory_mb: float
    bytes: int
    nresults: int


class TaskRetry(NamedTuple):
    """A task lost on ``from_host`` (``reason``) and run again on ``to_host``."""

    task_no: int
    operation: str
    from_host: str
    to_host: str
    attempt: int
    reason: str


@dataclass
class Monitor:
    """Measures blocks and tasks; the master's instance also collects the workers' figures.

    ``hdf5path`` is the datastore to write into (None: keep in memory only). Pickling a
    Monitor (it travels with every task) sends only its name: the worker fills a fresh one.
    """

    operation: str = "total"
    hdf5path: str | Path | None = None
    stats: dict[str, OperationStats] = field(default_factory=dict)
    tasks: list[TaskRecord] = field(default_factory=list)
    retries: list[TaskRetry] = field(default_factory=list)
    _flushed_tasks: int = 0
    _flushed_retries: int = 0

    def __call__(self, operation: str) -> Block:
        """A context manager measuring the named block into this monitor."""
        return Block(self, operation)

    def record(self, operation: str, stats: OperationStats) -> None:
        self.stats.setdefault(operation, OperationStats()).add(stats)

    def merge(self, stats: dict[str, OperationStats]) -> None:
        for operation, value in stats.items():
            self.record(operation, value)

    def add_task(self, record: TaskRecord) -> None:
        self.tasks.append(record)
        stats = self.stats.get(record.operation)
        if stats is None:
            stats = self.stats[record.operation] = OperationStats()
        stats.time_sec += record.time_sec  # in place: this runs once per task on the master
        stats.memory_mb = max(stats.memory_mb, record.memory_mb)
        stats.counts += 1
        stats.bytes += record.bytes
        stats.nresults += record.nresults

    def add_retry(self, retry: TaskRetry) -> None:
        self.retries.append(retry)

    def child(self) -> Monitor:
        """A fresh monitor for one task, carrying only the name."""
        return Monitor(self.operation)

    def __getstate__(self) -> dict[str, Any]:
        return {"operation": self.operation}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["operation"])  # type: ignore[misc]

    def performance_table(self) -> np.ndarray:
        rows = [(op.encode()[:80], s.time_sec, s.memory_mb, s.counts, s.bytes, s.nresults)
                for op, s in sorted(self.stats.items())]
        return np.array(rows, dtype=PERFORMANCE_DTYPE)

    def flush(self) -> None:
        """Write the performance table and the new task rows into the datastore."""
        if self.hdf5path is None:
            return
        new_rows = np.array(
            [(t.task_no, t.operation.encode()[:80], t.host.encode()[:64], t.pid, t.time_sec,
              t.memory_mb, t.bytes, t.nresults) for t in self.tasks[self._flushed_tasks:]],
            dtype=TASK_INFO_DTYPE,
        )
        retries = np.array(
            [(r.task_no, r.operation.encode()[:80], r.from_host.encode()[:64],
              r.to_host.encode()[:64], r.attempt, r.reason.encode()[:400])
             for r in self.retries[self._flushed_retries:]], dtype=TASK_RETRIES_DTYPE)
        with h5py.File(self.hdf5path, "a") as h5:
            if "performance" in h5:
                del h5["performance"]
            h5.create_dataset("performance", data=self.performance_table())
            _append(h5, "task_info", new_rows)
            if len(retries) or "task_retries" in h5:
                _append(h5, "task_retries", retries)
        self._flushed_tasks = len(self.tasks)
        self._flushed_retries = len(self.retries)


def _append(h5: h5py.File, name: str, rows: np.ndarray) -> None:
    if name not in h5:
        h5.create_dataset(name, data=rows, maxshape=(None,), chunks=True)
        return
    table = h5[name]
    start = table.shape[0]
    table.resize((start + len(rows),))
    table[start:] = rows


class Block:
    """``with monitor('name'):`` - adds wall time, peak memory and one count to ``name``."""

    def __init__(self, monitor: Monitor, operation: str) -> None:
        self.monitor = monitor
        self.operation = operation
        self._start = 0.0

    def __enter__(self) -> Block:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._start
        self.monitor.record(self.operation, OperationStats(elapsed, peak_memory_mb(), 1))


def read_performance(hdf5path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The (performance, task_info) tables of a datastore."""
    with h5py.File(hdf5path, "r") as h5:
        if "performance" not in h5:
            raise KeyError(f"{hdf5path} has no performance table (did the calculation run?)")
        task_info = h5["task_info"][()] if "task_info" in h5 else np.zeros(0, TASK_INFO_DTYPE)
        return h5["performance"][()], task_info
