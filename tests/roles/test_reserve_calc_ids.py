"""roles/oq_services/files/reserve-calc-ids: the two flavors' calculation ids never collide."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from rolefacts import ROLES

SCRIPT = ROLES / "oq_services" / "files" / "reserve-calc-ids"
# the schemas' id columns, as each engine creates them
SCHEMAS = {"calc": "CREATE TABLE calc (id INTEGER PRIMARY KEY AUTOINCREMENT, x)",
           "job": "CREATE TABLE job (id INTEGER PRIMARY KEY AUTOINCREMENT, x)"}


def reserve(db: Path, table: str, shared: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(db), table, str(shared)],
                          capture_output=True, text=True)


def make_db(path: Path, table: str, rows: int = 0) -> Path:
    with sqlite3.connect(path) as db:
        db.execute(SCHEMAS[table])
        db.executemany(f"INSERT INTO {table} (x) VALUES (?)", [(n,) for n in range(rows)])
    return path


def next_id(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        db.execute(f"INSERT INTO {table} (x) VALUES (0)")
        return int(db.execute(f"SELECT MAX(id) FROM {table}").fetchone()[0])


def datastores(shared: Path, **per_user: list[int]) -> Path:
    for user, ids in per_user.items():
        oqdata = shared / user / "oqdata"
        oqdata.mkdir(parents=True)
        for calc in ids:
            (oqdata / f"calc_{calc}.hdf5").touch()
    return shared


@pytest.mark.parametrize("table", ["calc", "job"])
def test_next_id_goes_above_every_users_datastore(tmp_path: Path, table: str) -> None:
    db = make_db(tmp_path / "db.sqlite3", table, rows=2)
    shared = datastores(tmp_path / "shared", alice=[1, 7], openquake=[3, 12])
    first = reserve(db, table, shared)
    assert first.returncode == 0 and first.stdout.startswith("reserved: next id 13"), first
    again = reserve(db, table, shared)
    assert again.stdout.strip() == "ok: next id 13"  # a re-run changes nothing
    assert next_id(db, table) == 13


def test_never_lowers_the_counter(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db.sqlite3", "job", rows=20)
    shared = datastores(tmp_path / "shared", openquake=[5])
    assert reserve(db, "job", shared).stdout.strip() == "ok: next id 21"
    assert next_id(db, "job") == 21


def test_a_fresh_database_without_rows_starts_above_the_datastores(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db.sqlite3", "job")
    shared = datastores(tmp_path / "shared", openquake=[4])
    assert reserve(db, "job", shared).returncode == 0
    assert next_id(db, "job") == 5


def test_a_missing_database_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    result = reserve(tmp_path / "none.sqlite3", "job", datastores(tmp_path / "s", u=[1]))
    assert result.returncode == 1 and "reserve-calc-ids:" in result.stderr
    assert not (tmp_path / "none.sqlite3").exists()
