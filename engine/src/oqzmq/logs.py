"""The lifecycle of one calculation as the dbserver sees it.

``oqz run`` wraps its work in :func:`calculation`::

    with calculation(config, description="demo", calculation_mode="demo") as calc:
        calc_id, path = new_calculation(config, calc.id)   # the dbserver's id names the datastore
        calc.set_datastore(path)
        ...run the Starmaps...

On entry the calculation is registered (status ``created``), waits in ``submitted`` while
``[distribution] serialize_jobs`` calculations are already executing (first come, first
served, as in the reference engine), then becomes ``executing``. While it runs, every log
record of the process goes to the dbserver in batches, and the reply to each batch says
whether ``oqz abort`` was asked for: then the main thread gets a SIGINT, so the Starmap in
progress unwinds through its cleanup (revoking its tasks, freeing its receiver port). On exit
the calculation is closed as ``complete``, ``failed`` (with its traceback) or ``aborted``,
and the task timings of its datastore are stored for the webui.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from oqzmq.config import Config
from oqzmq.dbserver import DbClient, DbServerError, DbServerUnreachable
from oqzmq.errors import UserError

log = logging.getLogger("oqzmq.calc")

FLUSH_SECONDS = 0.5
WAIT_SECONDS = 2.0
MAX_BUFFERED = 100_000
LOG_BATCH = 2_000  # records per message: well below the dbserver's message size limit
CLOSE_RETRY_SECONDS = 30.0  # a dbserver restarted by systemd is back well within this
TASK_CHUNK = 2_000


class CalculationAborted(UserError):
    """The calculation ended because `oqz abort` was asked (the CLI prints it, no traceback)."""


class Calculation:
    """A registered calculation: its id, its log stream and its final status."""

    def __init__(self, client: DbClient, record: dict[str, Any]) -> None:
        self.client = client
        self.id: int = record["id"]
        self.abort_requested = False
        self.datastore: Path | None = None
        self._closing = False
        self._abort_lock = threading.Lock()
        self._handler = DbLogHandler(self)

    def status(self) -> str:
        return str(self.client.call("get_calc", calc_id=self.id)["status"])

    def set_status(self, status: str) -> None:
        self.client.call("set_status", calc_id=self.id, status=status)

    def call_patiently(self, cmd: str, **args: Any) -> Any:
        """Call the dbserver, retrying while it is unreachable (e.g. being restarted):
        what a finished calculation must record is worth waiting a little for."""
        deadline = time.monotonic() + CLOSE_RETRY_SECONDS
        warned = False
        while True:
            try:
                return self.client.call(cmd, **args)
            except DbServerUnreachable as exc:
                if time.monotonic() >= deadline:
                    raise
                if not warned:
                    print(f"oqz: warning: {exc}; retrying for up to "
                          f"{CLOSE_RETRY_SECONDS:.0f} s", file=sys.stderr, flush=True)
                    warned = True
                time.sleep(1.0)

    def set_datastore(self, path: str | Path) -> None:
        self.datastore = Path(path)
        self.client.call("set_datastore", calc_id=self.id, datastore=str(path))

    def add_tasks(self, tasks: list[dict[str, Any]]) -> None:
        for start in range(0, len(tasks), TASK_CHUNK):
            chunk = tasks[start : start + TASK_CHUNK]
            self.call_patiently("add_tasks", calc_id=self.id, tasks=chunk)

    def note_abort(self) -> None:
        """Called when the dbserver says `oqz abort` was asked: interrupt the main thread once."""
        with self._abort_lock:
            if self.abort_requested or self._closing:
                return
            self.abort_requested = True
            log.warning("calculation %d: abort requested, stopping its tasks", self.id)
            # a real signal (not _thread.interrupt_main) also wakes a blocking zmq poll
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def begin_closing(self) -> None:
        """From now on an abort request no longer interrupts: the calculation is ending."""
        with self._abort_lock:
            self._closing = True

    def wait_for_turn(self, serialize_jobs: int) -> None:
        """Stay ``submitted`` while serialize_jobs older calculations are still active."""
        announced = False
        while blocking := self.client.call(
            "blocking_calcs", calc_id=self.id, serialize_jobs=serialize_jobs
        ):
            if not announced:
                self.set_status("submitted")
                log.info(
                    "calculation %d waits for calculations %s to finish ([distribution] "
                    "serialize_jobs = %d); `oqz abort ID` ends one stuck after a crash",
                    self.id, ", ".join(map(str, blocking)), serialize_jobs,
                )
                announced = True
            if self.client.call("get_calc", calc_id=self.id)["abort_requested"]:
                raise CalculationAborted(
                    f"calculation {self.id} aborted by `oqz abort` while it waited its turn"
                )
            time.sleep(WAIT_SECONDS)


class DbLogHandler(logging.Handler):
    """Buffers log records and ships them to the dbserver from a background thread."""

    def __init__(self, calc: Calculation) -> None:
        super().__init__(logging.INFO)
        self.calc = calc
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self._buffer: list[list[Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oqz-log-shipper", daemon=True)
        self._warned = False
        self._dropped = 0  # records that did not fit while the dbserver was unreachable

    def emit(self, record: logging.LogRecord) -> None:
        line = [record.created, record.levelname, self.process, self.format(record)]
        with self._lock:
            if len(self._buffer) < MAX_BUFFERED:
                self._buffer.append(line)
            else:
                self._dropped += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        """Ship what is buffered, in batches of LOG_BATCH (an empty call still asks whether
        an abort was requested)."""
        while True:
            with self._lock:
                batch, self._buffer = self._buffer[:LOG_BATCH], self._buffer[LOG_BATCH:]
                dropped, self._dropped = self._dropped, 0
            if dropped:  # say so in the log itself: a gap nobody is told about is a lie
                batch.append([time.time(), "WARNING", self.process,
                              f"{dropped} log records were dropped: more than {MAX_BUFFERED} "
                              "waited while the dbserver was unreachable"])
            if not self._ship(batch) or not self._buffer:
                return

    def _ship(self, batch: list[list[Any]]) -> bool:
        try:
            reply = self.calc.client.call("add_logs", calc_id=self.calc.id, records=batch)
        except DbServerError as exc:
            with self._lock:  # keep them for the next try: the dbserver may be restarting
                keep = batch[: max(0, MAX_BUFFERED - len(self._buffer))]
                self._dropped += len(batch) - len(keep)
                self._buffer[:0] = keep
            if not self._warned:
                self._warned = True
                print(f"oqz: warning: cannot ship logs: {exc}", file=sys.stderr, flush=True)
            return False
        self._warned = False
        if reply["abort_requested"]:
            self.calc.note_abort()
        return True


@contextmanager
def calculation(
    config: Config,
    description: str = "",
    calculation_mode: str = "",
    client: DbClient | None = None,
) -> Iterator[Calculation]:
    """Register a calculation, run the body as it, and close it with its final status."""
    client = client or DbClient(config)
    record = client.call(
        "create_calc",
        description=description,
        calculation_mode=calculation_mode,
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    calc = Calculation(client, record)
    root = logging.getLogger()
    root.addHandler(calc._handler)
    calc._handler.start()
    with _interruptible_by_abort():
        try:
            calc.wait_for_turn(config.serialize_jobs)
            calc.set_status("executing")
            log.info("calculation %d executing on %s", calc.id, socket.gethostname())
            yield calc
            calc.begin_closing()
        except BaseException as exc:
            calc.begin_closing()
            _close_failed(calc, exc)
            if calc.abort_requested and isinstance(exc, KeyboardInterrupt):
                raise CalculationAborted(f"calculation {calc.id} aborted by `oqz abort`") from exc
            raise
        else:
            _close(calc, "complete")
        finally:
            root.removeHandler(calc._handler)
            client.close()


@contextmanager
def _interruptible_by_abort() -> Iterator[None]:
    """Make sure the SIGINT of :meth:`Calculation.note_abort` raises KeyboardInterrupt.

    A process started in the background by a script (`oqz run job &`) inherits SIGINT
    ignored, and Python then installs no handler: the abort signal would be lost (or, with
    the default action, kill the process before it closes the calculation).
    """
    previous = signal.getsignal(signal.SIGINT)
    if callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _close(calc: Calculation, status: str) -> None:
    _store_task_timings(calc)
    log.info("calculation %d %s", calc.id, status)
    calc._handler.stop()
    calc.call_patiently("set_status", calc_id=calc.id, status=status)
    calc._handler.flush()  # what an outage of the dbserver held back


def _close_failed(calc: Calculation, exc: BaseException) -> None:
    if isinstance(exc, KeyboardInterrupt | SystemExit | CalculationAborted):
        reason = "abort requested" if calc.abort_requested else type(exc).__name__
        log.warning("calculation %d aborted (%s)", calc.id, reason)
        _close_quietly(calc, "aborted")
        return
    text = "".join(traceback.format_exception(exc))
    log.error("calculation %d failed: %s", calc.id, exc)
    try:
        calc.call_patiently("set_traceback", calc_id=calc.id, traceback=text)
    except DbServerError as db_exc:
        print(f"oqz: warning: cannot store the traceback: {db_exc}", file=sys.stderr,
              flush=True)
    _close_quietly(calc, "failed")


def _close_quietly(calc: Calculation, status: str) -> None:
    """Close after an error without hiding that error behind a dbserver problem."""
    try:
        _close(calc, status)
    except DbServerError as exc:
        print(f"oqz: warning: calculation {calc.id} not marked {status}: {exc}",
              file=sys.stderr, flush=True)


def _store_task_timings(calc: Calculation) -> None:
    if calc.datastore is None or not calc.datastore.is_file():
        return
    try:
        from oqzmq.monitor import read_performance

        _, task_info = read_performance(calc.datastore)
    except (KeyError, OSError) as exc:
        log.info("no task timings stored for calculation %d: %s", calc.id, exc)
        return
    tasks = [
        {
            "task_no": int(row["task_no"]),
            "name": row["operation"].decode(),
            "host": row["host"].decode(),
            "duration": float(row["time_sec"]),
            "nbytes": int(row["bytes"]),
            "memory_mb": float(row["memory_mb"]),
        }
        for row in task_info
    ]
    if tasks:
        per_host = Counter(task["host"] for task in tasks)
        log.info(
            "calculation %d: %d tasks, %.1f s of task time, on %s",
            calc.id, len(tasks), sum(task["duration"] for task in tasks),
            ", ".join(f"{host} ({count})" for host, count in sorted(per_host.items())),
        )
    calc.add_tasks(tasks)
