"""Monitor blocks, the HDF5 performance tables, datastore paths and ids."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
from oqzmq.config import Config
from oqzmq.datastore import calc_path, find_calculation, new_calculation, oqdata_dir
from oqzmq.errors import UserError
from oqzmq.monitor import Monitor, TaskRecord, read_performance
from oqzmq.parallel import Starmap


def test_blocks_accumulate_time_counts_and_memory() -> None:
    monitor = Monitor("calc")
    for _ in range(3):
        with monitor("read sources"):
            sum(range(10_000))
    stats = monitor.stats["read sources"]
    assert stats.counts == 3
    assert stats.time_sec > 0
    assert stats.memory_mb > 1


def test_flush_writes_and_appends_tables(tmp_path: Path) -> None:
    path = tmp_path / "calc_1.hdf5"
    monitor = Monitor("calc", path)
    monitor.add_task(TaskRecord(0, "task", "w1", 10, 0.5, 100.0, 1000, 2))
    monitor.flush()
    monitor.add_task(TaskRecord(1, "task", "w2", 11, 1.5, 120.0, 3000, 1))
    monitor.flush()
    performance, task_info = read_performance(path)
    assert [h.decode() for h in task_info["host"]] == ["w1", "w2"]
    (row,) = performance[performance["operation"] == b"task"]
    assert (row["counts"], row["bytes"], row["nresults"]) == (2, 4000, 3)
    assert row["time_sec"] == pytest.approx(2.0)
    assert row["memory_mb"] == 120.0


def test_monitor_travels_without_its_data() -> None:
    import pickle

    monitor = Monitor("calc", "/somewhere.hdf5")
    with monitor("block"):
        pass
    copy = pickle.loads(pickle.dumps(monitor))
    assert copy.operation == "calc" and copy.stats == {} and copy.hdf5path is None


def test_datastore_ids_and_paths(tmp_path: Path) -> None:
    config = Config(shared_dir=str(tmp_path))
    first, path = new_calculation(config)
    second, _ = new_calculation(config)
    assert (first, second) == (1, 2)
    assert path == calc_path(config, 1) == oqdata_dir(config) / "calc_1.hdf5"
    assert path.parent.parent.parent == tmp_path  # <shared_dir>/<user>/oqdata
    with h5py.File(path) as h5:
        assert h5.attrs["calc_id"] == 1
    assert find_calculation(config, None) == calc_path(config, 2)
    with pytest.raises(UserError, match="already exists"):
        new_calculation(config, 2)


def test_oq_distribute_reaches_the_starmap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OQ_CONFIG_FILE", raising=False)
    monkeypatch.setenv("OQ_DISTRIBUTE", "no")
    smap = Starmap(sum, [([1, 2],)])
    assert smap.distribute == "no"


@pytest.mark.parametrize("mode", ["no", "processpool"])
def test_empty_starmap_iterates_to_nothing(mode: str) -> None:
    assert list(Starmap(sum, (), distribute=mode)) == []
