"""Calculations that survive faults (issue #21), on the loopback workerpools of conftest:
worker processes SIGKILLed, pools frozen with SIGSTOP (a host gone), and coming back.

Each test prints the time from the fault to its outcome (``pytest -s``): the figures of the
README's "Faults" section. The bounds asserted are generous (the machine is shared).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from enginecluster import Cluster
from enginetasks import partials_then_hang, sleep_first_time, square, wait_for_file
from oqzmq import launcher
from oqzmq.config import Config
from oqzmq.errors import WorkerLost
from oqzmq.monitor import Monitor
from oqzmq.parallel import Starmap
from oqzmq.protocol import StatusQuery
from oqzmq.workerpool import LEASE_TIMEOUT, RESTART_EXIT


def wait_for_pid(path: Path, timeout: float = 30) -> int:
    """The pid a task wrote to ``path`` once it started."""
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"no task started (no {path})"
        time.sleep(0.05)
    return int(path.read_text())


def report(what: str, seconds: float) -> None:
    print(f"\n[fault timing] {what}: {seconds:.2f} s")


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_killed_worker_is_reported_killed_when_no_retry_is_allowed(
    config: Config, tmp_path: Path
) -> None:
    smap = Starmap(sleep_first_time, distribute="zmq", task_retries=0)
    smap.submit_to("127.0.0.3", str(tmp_path / "pid"), 60, 1)
    os.kill(wait_for_pid(tmp_path / "pid"), signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(WorkerLost) as info:
        list(smap)
    report("worker SIGKILL -> task reported killed (no retry)", time.monotonic() - killed)
    assert time.monotonic() - killed < 10
    text = str(info.value)
    assert "sleep_first_time#0 failed on host 127.0.0.3" in text
    assert "was killed by SIGKILL" in text and "out of memory" not in text
    assert "[distribution] task_retries = 0" in text


def test_the_task_of_a_killed_worker_is_re_run_and_the_move_recorded(
    config: Config, tmp_path: Path
) -> None:
    monitor = Monitor("rerun", tmp_path / "calc.hdf5")
    smap = Starmap(sleep_first_time, monitor=monitor, distribute="zmq")
    smap.submit_to("127.0.0.3", str(tmp_path / "pid"), 60, 7)
    smap.submit(str(tmp_path / "other"), 0, 8)
    os.kill(wait_for_pid(tmp_path / "pid"), signal.SIGKILL)
    killed = time.monotonic()
    assert sorted(smap) == [7, 8]
    report("worker SIGKILL -> task re-run and done", time.monotonic() - killed)
    [retry] = monitor.retries
    assert (retry.task_no, retry.from_host, retry.attempt) == (0, "127.0.0.3", 1)
    assert retry.to_host == "127.0.0.2"  # another pool, when there is one
    assert "was killed by SIGKILL" in retry.reason
    import h5py

    with h5py.File(tmp_path / "calc.hdf5") as h5:
        row = h5["task_retries"][0]
    assert (row["task_no"], row["from_host"], row["to_host"]) == (0, b"127.0.0.3", b"127.0.0.2")
    assert b"killed by SIGKILL" in row["reason"]


def test_a_re_run_generator_task_delivers_each_partial_result_once(
    config: Config, tmp_path: Path
) -> None:
    smap = Starmap(partials_then_hang, distribute="zmq")
    smap.submit_to("127.0.0.3", str(tmp_path / "pid"), 6)
    results = iter(smap)
    first = [next(results)[0] for _ in range(3)]
    os.kill(wait_for_pid(tmp_path / "pid"), signal.SIGKILL)
    rest = [index for index, _ in results]
    assert first + rest == [0, 1, 2, 3, 4, 5]


def test_the_tasks_of_a_frozen_pool_move_to_the_others_and_it_rejoins(
    cluster: Cluster, config: Config, tmp_path: Path
) -> None:
    """Host 127.0.0.3 freezes (SIGSTOP) with 4 tasks: they run on 127.0.0.2; once the host
    thaws, its pool rejoins the calculation and takes new tasks."""
    gate, ready = tmp_path / "gate", tmp_path / "ready"
    ready.touch()
    monitor = Monitor("frozen")
    smap = Starmap(wait_for_file, monitor=monitor, distribute="zmq", pool_timeout=4)
    smap.submit_to("127.0.0.2", str(ready), 0)  # the Starmap meets its pools
    pid = cluster.pool_pid("127.0.0.3")
    with frozen(pid):
        for value in range(1, 5):
            smap.submit_to("127.0.0.3", str(ready), value)
        paused = time.monotonic()
        results = iter(smap)
        done = sorted(next(results) for _ in range(5))
        report("pool SIGSTOP -> its 4 tasks done elsewhere (pool_timeout 4 s)",
               time.monotonic() - paused)
        smap.submit_to("127.0.0.2", str(gate), 5)  # keeps the calculation going
    assert done == [0, 1, 2, 3, 4]
    assert {(r.task_no, r.from_host, r.to_host) for r in monitor.retries} == {
        (n, "127.0.0.3", "127.0.0.2") for n in range(1, 5)}
    assert all("silent" in r.reason for r in monitor.retries)
    assert smap.live_hosts == ["127.0.0.2"]
    thawed = time.monotonic()
    threading.Thread(target=touch_on_rejoin, args=(smap, "127.0.0.3", gate), daemon=True).start()
    assert next(results) == 5  # the gate opens once the pool rejoined
    report("pool SIGCONT -> rejoined", time.monotonic() - thawed)
    assert "127.0.0.3" in smap.live_hosts
    smap.submit_to("127.0.0.3", str(ready), 6)
    assert list(results) == [6]
    assert monitor.tasks[-1].host == "127.0.0.3"


def test_with_no_pool_left_the_calculation_fails_with_the_reason(
    cluster: Cluster, config: Config, tmp_path: Path
) -> None:
    smap = Starmap(square, distribute="zmq", pool_timeout=4)
    smap.submit(0)  # the Starmap meets its pools
    pids = [cluster.pool_pid(host) for host in ("127.0.0.2", "127.0.0.3")]
    with frozen(pids[0]), frozen(pids[1]):
        for i in range(1, 7):
            smap.submit(i)
        paused = time.monotonic()
        with pytest.raises(WorkerLost) as info:
            list(smap)
        report("all pools SIGSTOP -> calculation failed (pool_timeout 4 s)",
               time.monotonic() - paused)
    assert time.monotonic() - paused < 30
    assert "no other workerpool is left" in str(info.value)
    assert sorted(Starmap(square, [(2,), (3,)], distribute="zmq")) == [4, 9]  # both thaw


DEMO = ["run", "demo", "--sources", "120", "--sites", "2000", "--tasks", "12"]


def run_demo(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "oqzmq.cli", *DEMO], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_demo_completes_with_the_same_curves_when_a_host_freezes_mid_run(
    cluster: Cluster, config: Config
) -> None:
    """The issue's scenario: `oqz run demo` with one worker host frozen while it computes;
    the default pool timeout (10 s)."""
    env = {**os.environ, "OQ_CONFIG_FILE": str(cluster.path), "OQ_DATABASE": "none"}
    env.pop("OQ_POOL_TIMEOUT", None)
    reference, _ = run_demo(env).communicate(timeout=300)
    demo = run_demo(env)
    deadline = time.monotonic() + 60
    while not busy(config, "127.0.0.3"):
        assert time.monotonic() < deadline, "127.0.0.3 never got a task"
        time.sleep(0.05)
    with frozen(cluster.pool_pid("127.0.0.3")):
        paused = time.monotonic()
        out, err = demo.communicate(timeout=300)
        report("host SIGSTOP mid-demo -> demo complete (default pool_timeout 10 s)",
               time.monotonic() - paused)
    assert demo.returncode == 0, err
    assert checksum(out) == checksum(reference)
    assert "re-running them on the other workerpools" in err
    assert "re-runs:    " in out
    datastore = next(line.split()[1] for line in out.splitlines()
                     if line.startswith("datastore:"))
    import h5py

    with h5py.File(datastore) as h5:
        moves = h5["task_retries"][()]
    assert len(moves) > 0 and set(moves["from_host"]) == {b"127.0.0.3"}
    assert all(b"silent" in reason for reason in moves["reason"])


def busy(config: Config, host: str) -> bool:
    reply = launcher.query_pools(config, StatusQuery(), hosts=[host])[host]
    return reply is not None and reply.running > 0


def checksum(output: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith("checksum:"))


def test_a_consumer_slower_than_the_pool_timeout_is_not_taken_for_silent_pools(
    config: Config,
) -> None:
    """Time spent by the caller between two results is not the pools' silence."""
    monitor = Monitor("slow")
    smap = Starmap(square, [(i,) for i in range(6)], monitor, distribute="zmq",
                   pool_timeout=3)
    results = []
    for result in smap:
        results.append(result)
        if len(results) == 1:
            time.sleep(4.5)  # the other results wait in the receiver meanwhile
    assert sorted(results) == [i * i for i in range(6)]
    assert monitor.retries == []


def test_a_pool_that_thaws_mid_calculation_takes_back_its_share_of_the_queued_tasks(
    cluster: Cluster, config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Host 127.0.0.3 freezes (SIGSTOP) with its part of 12 tasks: they move to 127.0.0.2,
    where most wait in the queue behind its 2 busy workers. The host thaws while they wait:
    its pool rejoins and 127.0.0.2 gives back its share of the tasks not started there
    (attempt 0 in task_retries), which then run on 127.0.0.3."""
    gate, ready = tmp_path / "gate", tmp_path / "ready"
    ready.touch()
    monitor = Monitor("rejoin", tmp_path / "calc.hdf5")
    smap = Starmap(wait_for_file, monitor=monitor, distribute="zmq", pool_timeout=4)
    smap.submit(str(ready), 0)  # the Starmap meets its pools
    pid = cluster.pool_pid("127.0.0.3")
    os.kill(pid, signal.SIGSTOP)
    try:
        for value in range(1, 13):
            smap.submit(str(gate), value)
        paused = time.monotonic()
        thaw = threading.Thread(target=thaw_when_dropped_open_when_dealt,
                                args=(smap, monitor, pid, gate), daemon=True)
        thaw.start()
        with caplog.at_level(logging.WARNING, logger="oqzmq.parallel"):
            assert sorted(smap) == list(range(13))
    finally:
        os.kill(pid, signal.SIGCONT)
    report("pool SIGSTOP -> SIGCONT after its drop -> all 13 tasks done",
           time.monotonic() - paused)
    lost = [r for r in monitor.retries if r.attempt == 1]
    dealt = [r for r in monitor.retries if r.attempt == 0]
    assert lost and {(r.from_host, r.to_host) for r in lost} == {("127.0.0.3", "127.0.0.2")}
    assert dealt and {(r.from_host, r.to_host) for r in dealt} == {("127.0.0.2", "127.0.0.3")}
    assert all("rejoined" in r.reason for r in dealt)
    hosts = {t.task_no: t.host for t in monitor.tasks}
    assert all(hosts[r.task_no] == "127.0.0.3" for r in dealt)  # they ran where dealt
    assert "answers again: it rejoins" in caplog.text
    assert f"task(s) of {smap.name} move from host 127.0.0.2 to 127.0.0.3" in caplog.text
    import h5py

    with h5py.File(tmp_path / "calc.hdf5") as h5:
        rows = h5["task_retries"][:]
    assert sorted(rows["attempt"][rows["to_host"] == b"127.0.0.3"]) == [0] * len(dealt)


def thaw_when_dropped_open_when_dealt(smap: Starmap, monitor: Monitor, pid: int,
                                      gate: Path) -> None:
    """SIGCONT once the Starmap dropped the frozen pool; open the gate once queued tasks
    were dealt to it (or after 60 s, so that the test ends and fails)."""
    deadline = time.monotonic() + 60
    while "127.0.0.3" in smap.live_hosts and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGCONT)
    while (not any(r.attempt == 0 for r in monitor.retries)
           and time.monotonic() < deadline):
        time.sleep(0.05)
    gate.touch()


def test_the_tasks_of_a_killed_pool_move_and_its_restarted_pool_rejoins(
    cluster: Cluster, config: Config, tmp_path: Path
) -> None:
    """The pool process of 127.0.0.3 is SIGKILLed (its workers follow it): its tasks run on
    127.0.0.2; a new pool started on that host joins the running calculation."""
    gate, ready = tmp_path / "gate", tmp_path / "ready"
    ready.touch()
    monitor = Monitor("killed pool")
    smap = Starmap(wait_for_file, monitor=monitor, distribute="zmq", pool_timeout=4)
    smap.submit_to("127.0.0.2", str(ready), 0)  # the Starmap meets its pools
    os.kill(cluster.pool_pid("127.0.0.3"), signal.SIGKILL)
    killed = time.monotonic()
    for value in range(1, 5):
        smap.submit_to("127.0.0.3", str(ready), value)
    results = iter(smap)
    assert sorted(next(results) for _ in range(5)) == [0, 1, 2, 3, 4]
    report("pool SIGKILL -> its 4 tasks done elsewhere (pool_timeout 4 s)",
           time.monotonic() - killed)
    assert {r.from_host for r in monitor.retries} == {"127.0.0.3"}
    smap.submit_to("127.0.0.2", str(gate), 5)  # keeps the calculation going
    threading.Thread(target=touch_on_rejoin, args=(smap, "127.0.0.3", gate), daemon=True).start()
    restarted = time.monotonic()
    assert all(r.ok for r in launcher.start_pools(config, "local", wait=60))
    assert next(results) == 5  # the gate opens once the new pool rejoined
    report("new pool started -> rejoined", time.monotonic() - restarted)
    smap.submit_to("127.0.0.3", str(ready), 6)
    assert list(results) == [6]
    assert monitor.tasks[-1].host == "127.0.0.3"


def touch_on_rejoin(smap: Starmap, host: str, gate: Path) -> None:
    deadline = time.monotonic() + 60
    while host not in smap.live_hosts and time.monotonic() < deadline:
        time.sleep(0.05)
    gate.touch()


def test_a_restart_request_waits_until_no_calculation_uses_the_pool(
    cluster: Cluster, config: Config, tmp_path: Path
) -> None:
    """SIGHUP (the unit's reload after site.yml changed the config or engine) while a task
    runs on 127.0.0.3: the pool serves the calculation to its end, then exits with
    RESTART_EXIT once no lease was renewed for LEASE_TIMEOUT s."""
    gate = tmp_path / "gate"
    smap = Starmap(wait_for_file, monitor=Monitor("restart when idle"), distribute="zmq")
    smap.submit_to("127.0.0.3", str(gate), 7)
    results = iter(smap)
    pid = cluster.pool_pid("127.0.0.3")
    time.sleep(1)  # the task is running
    os.kill(pid, signal.SIGHUP)
    time.sleep(3)
    assert exit_code(pid) is None and cluster.pool_pid("127.0.0.3") == pid, "restarted busy"
    gate.touch()
    assert list(results) == [7]
    finished = time.monotonic()
    deadline = finished + LEASE_TIMEOUT + 30
    while (code := exit_code(pid)) is None:
        assert time.monotonic() < deadline, "the idle pool did not restart"
        time.sleep(0.1)
    report("calculation ended -> idle pool exits to restart", time.monotonic() - finished)
    assert code == RESTART_EXIT
    assert "restarting for the new settings" in cluster.log("127.0.0.3")
    assert all(r.ok for r in launcher.start_pools(config, "local", wait=60))


def exit_code(pid: int) -> int | None:
    """The exit code of the pool ``pid`` (a child of this process: the fixture's launcher
    started it), None while it runs."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None
