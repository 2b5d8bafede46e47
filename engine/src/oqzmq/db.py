"""The calculation database: one SQLite file in WAL mode.

It holds the long-lived metadata of every calculation (owner, description,
status, times, host and pid of the controlling process), its log records, its
traceback and the timings of its tasks. Bulk results live in the datastore,
never here. The dbserver is the normal writer; with ``OQ_DATABASE=local`` a
process may open the same file directly, which WAL mode and the busy timeout
make safe.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oqzmq.errors import UserError

STATUSES = ("created", "submitted", "executing", "complete", "failed", "aborted")
TERMINAL = frozenset({"complete", "failed", "aborted"})
ACTIVE = frozenset({"created", "submitted", "executing"})
_NEXT_STATUSES: dict[str, frozenset[str]] = {
    "created": frozenset({"submitted", "executing", "failed", "aborted"}),
    "submitted": frozenset({"executing", "failed", "aborted"}),
    "executing": frozenset({"complete", "failed", "aborted"}),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calc (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    calculation_mode TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'created' CHECK (status IN
        ('created', 'submitted', 'executing', 'complete', 'failed', 'aborted')),
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    datastore TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    start_time REAL,
    stop_time REAL,
    abort_requested INTEGER NOT NULL DEFAULT 0,
    traceback TEXT
);
CREATE INDEX IF NOT EXISTS calc_user ON calc (user_name, id);
CREATE INDEX IF NOT EXISTS calc_status ON calc (status, id);
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY,
    calc_id INTEGER NOT NULL REFERENCES calc (id) ON DELETE CASCADE,
    timestamp REAL NOT NULL,
    level TEXT NOT NULL,
    process TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_calc ON log (calc_id, id);
CREATE TABLE IF NOT EXISTS task (
    calc_id INTEGER NOT NULL REFERENCES calc (id) ON DELETE CASCADE,
    task_no INTEGER NOT NULL,
    name TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    duration REAL NOT NULL,
    nbytes INTEGER NOT NULL DEFAULT 0,
    memory_mb REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (calc_id, name, task_no)
);
"""


class DbError(UserError):
    """A request the database cannot honour; the message is meant for the user."""


class UnknownCalc(DbError):
    def __init__(self, calc_id: int) -> None:
        super().__init__(f"there is no calculation {calc_id}: `oqz list` shows the existing ones")
        self.calc_id = calc_id


class StatusError(DbError):
    """A status change that the lifecycle does not allow (e.g. complete -> executing)."""


@dataclass(frozen=True)
class Calc:
    id: int
    user_name: str
    description: str
    calculation_mode: str
    status: str
    host: str
    pid: int
    datastore: str
    created: float
    start_time: float | None
    stop_time: float | None
    abort_requested: bool
    traceback: str | None

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    def duration(self, now: float | None = None) -> float | None:
        """Seconds spent executing: up to now while running, None before it starts."""
        if self.start_time is None:
            return None
        end = self.stop_time if self.stop_time is not None else (now or time.time())
        return max(0.0, end - self.start_time)

    def to_json(self) -> dict[str, Any]:
        # by hand, not dataclasses.asdict: lists of thousands of calculations go through here
        data = {name: getattr(self, name) for name in _CALC_JSON_FIELDS}
        data["duration"] = self.duration()
        data["has_traceback"] = bool(self.traceback)
        return data


@dataclass(frozen=True)
class LogRecord:
    id: int
    calc_id: int
    timestamp: float
    level: str
    process: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TaskTiming:
    task_no: int
    name: str
    host: str
    duration: float
    nbytes: int = 0
    memory_mb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_CALC_COLUMNS = ", ".join(Calc.__dataclass_fields__)
_CALC_JSON_FIELDS = tuple(name for name in Calc.__dataclass_fields__ if name != "traceback")


def _calc_from_row(row: Sequence[Any]) -> Calc:
    values = list(row)
    values[11] = bool(values[11])  # abort_requested is stored as 0/1
    return Calc(*values)


class CalcDB:
    """Access to the calculation database: use one instance from one thread at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = _connect(self.path)
        self._migrate()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> CalcDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DbError(
                f"{self.path} has schema version {version}, newer than this engine's "
                f"{SCHEMA_VERSION}: upgrade oq-zmq-engine or point [dbserver] file elsewhere"
            )
        with self._conn:
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # calculations

    def create_calc(
        self,
        user_name: str,
        description: str = "",
        calculation_mode: str = "",
        host: str = "",
        pid: int = 0,
    ) -> Calc:
        if not user_name:
            raise DbError("a calculation needs an owner: user_name is empty")
        with self._conn:
            cursor = self._conn.execute(
                "INSERT INTO calc (user_name, description, calculation_mode, host, pid, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (user_name, description, calculation_mode, host, pid, time.time()),
            )
        return self.get_calc(_lastrowid(cursor))

    def get_calc(self, calc_id: int) -> Calc:
        row = self._conn.execute(
            f"SELECT {_CALC_COLUMNS} FROM calc WHERE id = ?", (calc_id,)
        ).fetchone()
        if row is None:
            raise UnknownCalc(calc_id)
        return _calc_from_row(row)

    def list_calcs(
        self, user_name: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Calc]:
        """Newest first; all users' calculations when user_name is None."""
        where, params = _user_filter(user_name)
        rows = self._conn.execute(
            f"SELECT {_CALC_COLUMNS} FROM calc {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()
        return [_calc_from_row(row) for row in rows]

    def count_calcs(self, user_name: str | None = None) -> int:
        where, params = _user_filter(user_name)
        return int(self._conn.execute(f"SELECT count(*) FROM calc {where}", params).fetchone()[0])

    def active_calcs(self) -> list[Calc]:
        """Calculations not yet finished, oldest first (the serialize_jobs queue)."""
        rows = self._conn.execute(
            f"SELECT {_CALC_COLUMNS} FROM calc WHERE status IN "
            "('created', 'submitted', 'executing') ORDER BY id"
        ).fetchall()
        return [_calc_from_row(row) for row in rows]

    def set_status(self, calc_id: int, status: str) -> Calc:
        """Move a calculation along created -> [submitted ->] executing -> final."""
        if status not in STATUSES:
            raise StatusError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
        calc = self.get_calc(calc_id)
        if status == calc.status:
            return calc
        if status not in _NEXT_STATUSES.get(calc.status, frozenset()):
            raise StatusError(
                f"calculation {calc_id} is {calc.status}: it cannot become {status}"
            )
        now = time.time()
        start = now if status == "executing" else calc.start_time
        stop = now if status in TERMINAL else None
        with self._conn:
            self._conn.execute(
                "UPDATE calc SET status = ?, start_time = ?, stop_time = ? WHERE id = ?",
                (status, start, stop, calc_id),
            )
        return self.get_calc(calc_id)

    def request_abort(self, calc_id: int) -> Calc:
        calc = self.get_calc(calc_id)
        if not calc.is_active:
            raise StatusError(f"calculation {calc_id} is {calc.status}: there is nothing to abort")
        with self._conn:
            self._conn.execute("UPDATE calc SET abort_requested = 1 WHERE id = ?", (calc_id,))
        return self.get_calc(calc_id)

    def set_traceback(self, calc_id: int, traceback: str) -> None:
        self.get_calc(calc_id)
        with self._conn:
            self._conn.execute("UPDATE calc SET traceback = ? WHERE id = ?", (traceback, calc_id))

    def set_datastore(self, calc_id: int, datastore: str) -> None:
        self.get_calc(calc_id)
        with self._conn:
            self._conn.execute("UPDATE calc SET datastore = ? WHERE id = ?", (datastore, calc_id))

    # logs

    def add_logs(self, calc_id: int, records: Iterable[Sequence[Any]]) -> int:
        """Append (timestamp, level, process, message) records; returns how many."""
        self.get_calc(calc_id)
        rows = [_log_row(calc_id, record) for record in records]
        with self._conn:
            self._conn.executemany(
                "INSERT INTO log (calc_id, timestamp, level, process, message)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def get_logs(self, calc_id: int, after_id: int = 0, limit: int = 10_000) -> list[LogRecord]:
        """Records in order; pass the last id seen as after_id to follow a running log."""
        self.get_calc(calc_id)
        rows = self._conn.execute(
            "SELECT id, calc_id, timestamp, level, process, message FROM log"
            " WHERE calc_id = ? AND id > ? ORDER BY id LIMIT ?",
            (calc_id, after_id, limit),
        ).fetchall()
        return [LogRecord(*row) for row in rows]

    # task timings

    def add_tasks(self, calc_id: int, tasks: Iterable[TaskTiming]) -> int:
        self.get_calc(calc_id)
        rows = [
            (calc_id, t.task_no, t.name, t.host, t.duration, t.nbytes, t.memory_mb)
            for t in tasks
        ]
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO task"
                " (calc_id, task_no, name, host, duration, nbytes, memory_mb)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def get_tasks(self, calc_id: int) -> list[TaskTiming]:
        self.get_calc(calc_id)
        rows = self._conn.execute(
            "SELECT task_no, name, host, duration, nbytes, memory_mb FROM task"
            " WHERE calc_id = ? ORDER BY name, task_no",
            (calc_id,),
        ).fetchall()
        return [TaskTiming(*row) for row in rows]


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(path)
        conn = sqlite3.connect(
            path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level="DEFERRED",
            check_same_thread=False,  # handed between threads, never used by two at once
        )
        conn.execute("PRAGMA journal_mode = WAL")
    except (OSError, sqlite3.Error) as exc:
        raise DbError(
            f"cannot open the calculation database {path}: {exc}; check [dbserver] file in "
            "openquake.cfg and that this user may write its directory"
        ) from exc
    conn.execute("PRAGMA foreign_keys = ON")
    # NORMAL in WAL mode: never corrupts; a power cut may lose the last commits only
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _create_private(path: Path) -> None:
    """Create the file readable by its owner and group only: it holds every user's logs.
    SQLite gives the -wal and -shm files the same permissions."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))


def _lastrowid(cursor: sqlite3.Cursor) -> int:
    if cursor.lastrowid is None:  # pragma: no cover - sqlite always sets it after INSERT
        raise DbError("the database did not return the new calculation's id")
    return cursor.lastrowid


def _user_filter(user_name: str | None) -> tuple[str, tuple[str, ...]]:
    if user_name is None:
        return "", ()
    return "WHERE user_name = ?", (user_name,)


def _log_row(calc_id: int, record: Sequence[Any]) -> tuple[int, float, str, str, str]:
    try:
        timestamp, level, process, message = record
    except (TypeError, ValueError) as exc:
        raise DbError(
            f"a log record must be [timestamp, level, process, message], got {record!r}"
        ) from exc
    level = str(level).upper()
    if level not in LOG_LEVELS:
        raise DbError(f"unknown log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    return calc_id, float(timestamp), level, str(process), str(message)
