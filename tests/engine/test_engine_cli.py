"""The oqz commands this engine owns: workers, run demo, show performance."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import h5py
import pytest
from enginecluster import HOSTS, write_config
from freeports import free_port_block
from oqzmq.cli import main
from oqzmq.config import Config, load_config
from oqzmq.demo import run_demo
from oqzmq.monitor import read_performance


def test_workers_status_inspect_debug(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workers", "status"]) == 0
    out = capsys.readouterr().out
    assert f"{HOSTS[0]:<20} {0:>7} {2:>5}" in out
    assert f"{HOSTS[1]:<20} {0:>7} {1:>5}" in out
    assert main(["workers", "inspect"]) == 0
    assert "idle" in capsys.readouterr().out
    assert main(["workers", "debug"]) == 0
    out = capsys.readouterr().out
    assert "[local] " in out and "-m oqzmq.workerpool --host 127.0.0.3" in out
    assert "task 0 -> workerpool 127.0.0.2: ok" in out
    assert "task 1 -> workerpool 127.0.0.3: ok" in out


def test_workers_status_json_says_per_host_what_the_table_says(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["workers", "status", "--json"]) == 0
    pools = json.loads(capsys.readouterr().out)["workerpools"]
    # running/queued: a task of an earlier test may still be finishing on a loaded machine
    busy = [(pool.pop("running"), pool.pop("queued")) for pool in pools]
    assert all(isinstance(n, int) and n >= 0 for pair in busy for n in pair), busy
    assert pools == [
        {"host": HOSTS[0], "answers": True, "total": 2, "why": None},
        {"host": HOSTS[1], "answers": True, "total": 1, "why": None},
    ]


def test_json_is_refused_where_no_json_is_printed(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["workers", "stop", "--json"]) == 2
    assert "--json goes with status or bench, not stop" in capsys.readouterr().err
    assert main(["workers", "status", "--json"]) == 0  # the pools were not stopped


def test_workers_bench_measures_results_from_every_pool(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["workers", "bench", "--tiny", "300", "--large", "6", "--large-mb", "2",
                 "--repeat", "2", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["repeat"] == 2
    assert sum(figures["tiny"]["tasks_per_host"].values()) == 300
    assert sum(figures["large"]["tasks_per_host"].values()) == 6
    assert set(figures["tiny"]["tasks_per_host"]) == set(HOSTS)
    assert figures["tiny"]["tasks_per_s"] > 0 and figures["large"]["mb_per_s"] > 0
    assert main(["workers", "bench", "--tiny", "10", "--large", "1", "--large-mb", "1",
                 "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny tasks:    10 in " in out and "large results: 1 x 1 MB in " in out


def test_workers_bench_refuses_a_zero_count(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["workers", "bench", "--repeat", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_workers_start_is_idempotent(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workers", "start"]) == 0
    assert capsys.readouterr().out.count("already running") == 2


def test_workers_report_hosts_that_are_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool that is not running is named with the reason; start reports ssh failures."""
    path = write_config(tmp_path / "oq.cfg", 9, "9", "127.0.0.9 1", tmp_path)
    monkeypatch.setenv("OQ_CONFIG_FILE", str(path))
    assert main(["workers", "status"]) == 1
    out = capsys.readouterr().out
    assert "127.0.0.9" in out and "not running: port 9 closed" in out
    assert main(["workers", "status", "--json"]) == 1
    [pool] = json.loads(capsys.readouterr().out)["workerpools"]
    assert pool["host"] == "127.0.0.9" and pool["answers"] is False
    assert pool["why"].startswith("port 9 closed") and pool["running"] is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh here: start must say so, not hang
    assert main(["workers", "start", "--launcher", "ssh", "--wait", "1"]) == 1
    assert "ssh is not installed" in capsys.readouterr().out


def test_demo_tasks_holding_memory_give_the_same_curves(config: Config) -> None:
    """``oqz run demo --task-memory-mb``: each task holds that much more, results unchanged."""
    reference = run_demo(config, "tiny", seed=7, distribute="no")
    result = run_demo(config, "tiny", seed=7, distribute="zmq", task_memory_mb=50)
    assert result.checksum == reference.checksum
    _, task_info = read_performance(result.path)
    assert len(task_info) == 4 and min(task_info["memory_mb"]) > 50


@pytest.mark.parametrize("mode", ["no", "processpool", "zmq"])
def test_demo_is_deterministic_in_every_mode(config: Config, mode: str) -> None:
    result = run_demo(config, "tiny", seed=7, distribute=mode)
    reference = run_demo(config, "tiny", seed=7, distribute="no")
    assert result.checksum == reference.checksum
    assert run_demo(config, "tiny", seed=8, distribute="no").checksum != reference.checksum
    with h5py.File(result.path) as h5:
        assert h5["hcurves"].shape == (50, 20)
        assert 0 < h5["hcurves"][()].max() < 1
    performance, task_info = read_performance(result.path)
    operations = {row.decode() for row in performance["operation"]}
    assert {"hazard_task", "exceedance", "ground motion", "distances"} <= operations
    assert len(task_info) == 4
    if mode == "zmq":
        assert set(result.tasks_per_host) <= set(HOSTS)
        assert {h.decode() for h in task_info["host"]} == set(result.tasks_per_host)


def test_run_demo_and_show_performance(
    config: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OQ_DATABASE", "none")  # no dbserver in the engine tests
    assert main(["run", "demo", "--size", "tiny", "--tasks", "3"]) == 0
    out = capsys.readouterr().out
    assert "distribute=zmq" in out and "tasks/host: 127.0.0." in out
    calc_id = int(out.split()[1])
    assert main(["show", "performance", str(calc_id)]) == 0
    out = capsys.readouterr().out
    assert "hazard_task" in out and "tasks per host: 127.0.0." in out


def test_run_demo_json_is_the_outcome_of_the_calculation(
    config: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OQ_DATABASE", "none")
    reference = run_demo(config, "tiny", seed=42, distribute="no", tasks=3)
    assert main(["run", "demo", "--size", "tiny", "--tasks", "3", "--json"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["status"] == "complete" and outcome["distribute"] == "zmq"
    assert outcome["checksum"] == reference.checksum  # the same seed (42) in another mode
    assert outcome["tasks"] == 3 == sum(outcome["tasks_per_host"].values())
    assert set(outcome["tasks_per_host"]) <= set(HOSTS) and outcome["reruns"] == 0
    assert Path(outcome["datastore"]).name == f"calc_{outcome['calc_id']}.hdf5"
    assert Path(outcome["datastore"]).is_file()


def test_bad_arguments_are_explained(
    config: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OQ_DATABASE", "none")
    assert main(["run", "nosuchcalc"]) == 2
    assert "unknown calculation 'nosuchcalc': available: demo" in capsys.readouterr().err
    assert main(["run", "demo", "--tasks", "0"]) == 2
    assert "--tasks must be at least 1" in capsys.readouterr().err
    assert main(["show", "performance", "999999"]) == 2
    assert "no datastore for calculation 999999" in capsys.readouterr().err


def test_zmq_mode_without_workers_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path / "oq.cfg", 9, "9", "", tmp_path)
    monkeypatch.setenv("OQ_CONFIG_FILE", str(path))
    monkeypatch.setenv("OQ_DATABASE", "none")
    assert load_config().host_cores == ()
    assert main(["run", "demo", "--size", "tiny"]) == 2
    assert "[zworkers] host_cores is empty" in capsys.readouterr().err


def test_workers_start_then_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The full life of a pool on its own host: start, status, stop, status says it is gone."""
    port = free_port_block(1, ("127.0.0.4",))
    path = write_config(tmp_path / "oq.cfg", port, str(port + 1), "127.0.0.4 1", tmp_path)
    monkeypatch.setenv("OQ_CONFIG_FILE", str(path))
    assert main(["workers", "start", "--wait", "30"]) == 0
    assert "started (1 worker processes)" in capsys.readouterr().out
    assert main(["workers", "status"]) == 0
    assert main(["workers", "stop"]) == 0
    assert "stopping" in capsys.readouterr().out
    deadline = time.monotonic() + 10
    while main(["workers", "status"]) != 1:
        assert time.monotonic() < deadline, "the pool did not stop"
        time.sleep(0.2)
    assert f"not running: port {port} closed" in capsys.readouterr().out
    (Path(tempfile.gettempdir()) / f"oqz-workerpool-127.0.0.4-{port}.log").unlink()
