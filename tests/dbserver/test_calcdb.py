"""The SQLite calculation store: lifecycle, logs, tasks, persistence."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from oqzmq.db import CalcDB, DbError, StatusError, TaskTiming, UnknownCalc


@pytest.fixture
def db(tmp_path: Path):
    with CalcDB(tmp_path / "db.sqlite3") as calcdb:
        yield calcdb


def test_the_file_is_in_wal_mode(db: CalcDB) -> None:
    conn = sqlite3.connect(db.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_new_calculation_is_created_and_owned(db: CalcDB) -> None:
    calc = db.create_calc("alice", "demo run", "demo", host="master", pid=42)
    assert calc.id == 1
    assert (calc.user_name, calc.status, calc.host, calc.pid) == ("alice", "created", "master", 42)
    assert calc.start_time is None and calc.duration() is None


def test_a_calculation_needs_an_owner(db: CalcDB) -> None:
    with pytest.raises(DbError, match="owner"):
        db.create_calc("")


def test_the_lifecycle_records_start_and_stop(db: CalcDB) -> None:
    calc = db.create_calc("alice")
    executing = db.set_status(calc.id, "executing")
    assert executing.start_time is not None and executing.stop_time is None
    complete = db.set_status(calc.id, "complete")
    assert complete.stop_time is not None and complete.stop_time >= executing.start_time
    assert complete.duration() == pytest.approx(complete.stop_time - complete.start_time)


@pytest.mark.parametrize(
    ("path", "forbidden"),
    [
        (["executing", "complete"], "executing"),
        (["failed"], "complete"),
        (["aborted"], "executing"),
    ],
)
def test_finished_calculations_cannot_come_back(
    db: CalcDB, path: list[str], forbidden: str
) -> None:
    calc = db.create_calc("alice")
    for status in path:
        db.set_status(calc.id, status)
    with pytest.raises(StatusError, match=f"cannot become {forbidden}"):
        db.set_status(calc.id, forbidden)


def test_a_calculation_cannot_complete_without_executing(db: CalcDB) -> None:
    calc = db.create_calc("alice")
    with pytest.raises(StatusError, match="created: it cannot become complete"):
        db.set_status(calc.id, "complete")


def test_an_unknown_status_is_named(db: CalcDB) -> None:
    calc = db.create_calc("alice")
    with pytest.raises(StatusError, match="unknown status 'done'"):
        db.set_status(calc.id, "done")


def test_an_unknown_calculation_is_named(db: CalcDB) -> None:
    with pytest.raises(UnknownCalc, match="there is no calculation 99"):
        db.get_calc(99)
    with pytest.raises(UnknownCalc):
        db.add_logs(99, [(0.0, "INFO", "p", "m")])


def test_listing_filters_by_owner_newest_first(db: CalcDB) -> None:
    for user in ["alice", "bob", "alice", "carol"]:
        db.create_calc(user)
    assert [c.id for c in db.list_calcs("alice")] == [3, 1]
    assert [c.id for c in db.list_calcs()] == [4, 3, 2, 1]
    assert [c.id for c in db.list_calcs(limit=2, offset=1)] == [3, 2]
    assert db.count_calcs("alice") == 2 and db.count_calcs() == 4


def test_logs_are_appended_and_followed(db: CalcDB) -> None:
    calc = db.create_calc("alice")
    db.add_logs(calc.id, [(1.0, "info", "MainProcess", "first"), (2.0, "WARNING", "w", "second")])
    records = db.get_logs(calc.id)
    assert [(r.level, r.message) for r in records] == [("INFO", "first"), ("WARNING", "second")]
    db.add_logs(calc.id, [(3.0, "ERROR", "w", "third")])
    assert [r.message for r in db.get_logs(calc.id, after_id=records[-1].id)] == ["third"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ((1.0, "LOUD", "p", "m"), "unknown log level 'LOUD'"),
        ((1.0, "INFO"), "must be \\[timestamp, level, process, message\\]"),
    ],
)
def test_bad_log_records_are_refused_whole(db: CalcDB, record: tuple, message: str) -> None:
    calc = db.create_calc("alice")
    with pytest.raises(DbError, match=message):
        db.add_logs(calc.id, [(0.5, "INFO", "p", "good"), record])
    assert db.get_logs(calc.id) == []


def test_abort_is_requested_only_for_active_calculations(db: CalcDB) -> None:
    calc = db.create_calc("alice")
    assert db.request_abort(calc.id).abort_requested
    db.set_status(calc.id, "aborted")
    with pytest.raises(StatusError, match="nothing to abort"):
        db.request_abort(calc.id)


def test_task_timings_and_traceback_are_kept(db: CalcDB) -> None:
    calc = db.create_calc("alice")
    db.add_tasks(calc.id, [TaskTiming(0, "hazard", "w1", 1.5, 800, 12.0)])
    db.set_traceback(calc.id, "Traceback ...\nValueError: boom")
    assert db.get_tasks(calc.id) == [TaskTiming(0, "hazard", "w1", 1.5, 800, 12.0)]
    assert db.get_calc(calc.id).traceback.endswith("boom")
    assert db.get_calc(calc.id).to_json()["has_traceback"] is True


def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "db.sqlite3"
    with CalcDB(path) as db:
        calc = db.create_calc("alice", "kept")
        db.add_logs(calc.id, [(1.0, "INFO", "p", "hello")])
    with CalcDB(path) as db:
        assert db.get_calc(calc.id).description == "kept"
        assert db.get_logs(calc.id)[0].message == "hello"
        assert db.create_calc("bob").id == calc.id + 1


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    sqlite3.connect(path).execute("PRAGMA user_version = 99")
    with pytest.raises(DbError, match="schema version 99"):
        CalcDB(path)


def test_an_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DbError, match=r"cannot open the calculation database .*\[dbserver\] file"):
        CalcDB(blocker / "db.sqlite3")


def test_concurrent_writers_do_not_lose_calculations(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    CalcDB(path).close()

    def create_many(user: str) -> None:
        with CalcDB(path) as db:
            for _ in range(50):
                calc = db.create_calc(user)
                db.add_logs(calc.id, [(1.0, "INFO", user, "x")])

    threads = [threading.Thread(target=create_many, args=(f"u{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with CalcDB(path) as db:
        assert db.count_calcs() == 200
        assert {db.count_calcs(f"u{i}") for i in range(4)} == {50}


def test_the_database_is_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with CalcDB(path) as db:
        db.create_calc("alice")
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert name.stat().st_mode & 0o007 == 0, name
