"""Task timings reach the dbserver from the calculation's datastore (Monitor tables)."""

from __future__ import annotations

from pathlib import Path

from oqzmq.config import Config
from oqzmq.dbserver import DbClient
from oqzmq.logs import calculation
from oqzmq.monitor import Monitor, TaskRecord


def test_task_timings_are_taken_from_the_datastore(
    dbserver, config: Config, tmp_path: Path
) -> None:
    datastore = tmp_path / "calc.hdf5"
    monitor = Monitor("demo", datastore)
    for task_no in range(3):
        monitor.add_task(TaskRecord(task_no, "compute", f"w{task_no}", 100, 0.5, 40.0, 1024, 2))
    monitor.flush()
    with calculation(config) as calc:
        calc.set_datastore(datastore)
    client = DbClient(config)
    tasks = client.call("get_tasks", calc_id=calc.id)
    assert [(t["task_no"], t["host"], t["duration"]) for t in tasks] == [
        (0, "w0", 0.5), (1, "w1", 0.5), (2, "w2", 0.5)
    ]
    assert client.call("get_calc", calc_id=calc.id)["datastore"] == str(datastore)
