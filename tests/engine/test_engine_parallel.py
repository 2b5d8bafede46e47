"""Starmap in the three modes, on several loopback workerpools: results, partial results,
concurrency, errors, dead workers and dead pools."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from enginecluster import Cluster
from enginetasks import chunks, fail, pid_then_sleep, square
from oqzmq import launcher, zap
from oqzmq.config import Config
from oqzmq.errors import PortsExhausted, TaskError, WorkerLost
from oqzmq.monitor import Monitor
from oqzmq.parallel import Starmap
from oqzmq.protocol import InspectQuery
from test_engine_replay import _wait_for

MODES = ("no", "processpool", "zmq")


@pytest.mark.parametrize("mode", MODES)
def test_same_results_in_every_mode(config: Config, mode: str) -> None:
    monitor = Monitor("squares")
    results = Starmap(square, [(i,) for i in range(20)], monitor, distribute=mode)
    assert sorted(results) == [i * i for i in range(20)]
    assert len(monitor.tasks) == 20
    assert monitor.stats["squaring"].counts == 20
    assert monitor.stats["square"].nresults == 20


def test_zmq_mode_uses_every_pool_and_records_hosts(config: Config) -> None:
    monitor = Monitor("squares")
    assert len(list(Starmap(square, [(i,) for i in range(30)], monitor))) == 30
    assert {t.host for t in monitor.tasks} == {"127.0.0.2", "127.0.0.3"}


@pytest.mark.parametrize("mode", MODES)
def test_generator_tasks_yield_partial_results(config: Config, mode: str) -> None:
    monitor = Monitor("chunks")
    smap = Starmap(chunks, monitor=monitor, distribute=mode)
    smap.submit(5, 100_000)
    smap.submit(3, 10)
    received = list(smap)
    assert len(received) == 8
    assert sorted(int(a[0]) for i, a in received if len(a) == 100_000) == [0, 1, 2, 3, 4]
    assert all((a == i).all() for i, a in received)
    assert monitor.stats["chunks"].nresults == 8
    assert monitor.stats["chunks"].bytes > 5 * 800_000


def test_two_starmaps_alive_at_once(config: Config) -> None:
    first = Starmap(square, distribute="zmq")
    second = Starmap(chunks, distribute="zmq")
    for i in range(10):
        first.submit(i)
        second.submit(2, 4)
    assert first.endpoint != second.endpoint
    assert len(list(second)) == 20
    assert sorted(first) == [i * i for i in range(10)]


def test_receiver_ports_running_out_is_an_error_not_a_hang(config: Config) -> None:
    alive = []
    try:
        for _ in config.receiver_ports:
            smap = Starmap(square, distribute="zmq")
            smap.submit(1)
            alive.append(smap)
        refused = Starmap(square, distribute="zmq")
        with pytest.raises(PortsExhausted, match=r"all receiver ports .* are in use"):
            refused.submit(1)
        assert refused._receiver is not None and refused._receiver.closed  # nothing leaked
    finally:
        for smap in alive:
            list(smap)


@pytest.mark.parametrize("mode", ["processpool", "zmq"])
def test_starmaps_share_one_context_and_leave_nothing_behind(config: Config, mode: str) -> None:
    """One zmq context and ZAP handler serve every Starmap of a process; each Starmap's
    sockets, handshake monitors and ZAP domains go when it is shut down (they piled up).
    processpool's endpoints are private ipc ones (zap.bind): no ZAP domain at all."""
    assert sorted(Starmap(square, [(i,) for i in range(4)], distribute=mode)) == [0, 1, 4, 9]
    first = Starmap(square, distribute=mode)
    first.submit(1)
    list(first)
    _wait_for(lambda: not _zap_domains(first._context), 5, "the ZAP domain of a Starmap to go")
    zap_threads = _zap_threads()
    for _ in range(30):
        assert sorted(Starmap(square, [(i,) for i in range(4)], distribute=mode)) == [0, 1, 4, 9]
    smap = Starmap(square, distribute=mode)
    smap.submit(2)
    assert smap._context is first._context
    live = len(_zap_domains(smap._context))  # zmq: the live receiver's (and some going)
    assert live >= 1 if mode == "zmq" else live == 0
    assert list(smap) == [4]
    assert smap._receiver is not None and smap._receiver.closed
    assert all(pool.sock.closed for pool in smap._pools)
    _wait_for(lambda: not _zap_domains(smap._context), 5, "the ZAP domains of 32 Starmaps to go")
    assert _zap_threads() == zap_threads


def _zap_domains(context: zmq.Context) -> dict[bytes, tuple[bytes, str]]:
    handler = zap._HANDLERS.get(context)
    return handler.domains if handler is not None else {}


def _zap_threads() -> int:
    return [thread.name for thread in threading.enumerate()].count("oqzmq-zap")


def test_a_cancel_sent_just_before_the_process_exits_still_frees_the_pool(
    config: Config, tmp_path: Path
) -> None:
    """Closed Starmaps no longer terminate a context of their own (which waited for their last
    messages): the Cancel of a Starmap shut down right before its process ends must still
    reach the pool, which frees the busy worker at once rather than when the lease expires
    (LEASE_TIMEOUT, 15 s). (On loopback it leaves before the exit even without the flush at
    exit, `_flush_starmap_context`, which bounds the wait where it would not.)"""
    pidfile = tmp_path / "pid"
    script = (
        "import time\n"
        "from pathlib import Path\n"
        "from enginetasks import pid_then_sleep\n"
        "from oqzmq.parallel import Starmap\n"
        "smap = Starmap(pid_then_sleep, distribute='zmq', task_retries=0)\n"
        f"smap.submit_to('127.0.0.3', {str(pidfile)!r}, 60)\n"
        f"while not Path({str(pidfile)!r}).exists() or not Path({str(pidfile)!r}).read_text():\n"
        "    time.sleep(0.05)\n"
        "smap.shutdown()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    master = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    exited = time.monotonic()
    assert master.returncode == 0, master.stderr
    worker = int(pidfile.read_text())
    while _alive(worker) and time.monotonic() - exited < 10:
        time.sleep(0.05)
    assert not _alive(worker), "the pool never got the Cancel: its worker still runs the task"
    assert time.monotonic() - exited < 5
    assert sorted(Starmap(square, [(2,), (3,)], distribute="zmq")) == [4, 9]  # pool still serves


@pytest.mark.parametrize("mode", MODES)
def test_task_error_names_task_and_host_with_traceback(config: Config, mode: str) -> None:
    with pytest.raises(TaskError) as info:
        list(Starmap(fail, [(i,) for i in range(6)], distribute=mode))
    text = str(info.value)
    assert "task fail#3 failed on host" in text
    assert "ValueError: bad input 3" in text
    if mode == "zmq":
        assert "127.0.0." in text


@pytest.fixture
def master_only_module() -> Iterator[types.ModuleType]:
    """A module that exists in this process only: the workers cannot import it."""
    module = types.ModuleType("only_on_the_master")
    exec("def job(x, monitor):\n    return x\n\nclass Arg:\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_tasks_the_workers_cannot_unpickle_fail_saying_why(
    config: Config, master_only_module: types.ModuleType
) -> None:
    with pytest.raises(TaskError, match=r"cannot unpickle the task on host 127\.0\.0\."):
        list(Starmap(master_only_module.job, [(1,), (2,)], distribute="zmq"))
    with pytest.raises(TaskError, match="its function and arguments must be importable"):
        list(Starmap(square, [(master_only_module.Arg(),)], distribute="zmq"))
    assert sorted(Starmap(square, [(2,), (3,)], distribute="zmq")) == [4, 9]


def test_sigkilled_worker_ends_the_calculation_quickly(config: Config, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    smap = Starmap(pid_then_sleep, distribute="zmq", task_retries=0)
    smap.submit_to("127.0.0.3", str(pidfile), 60)
    start = time.monotonic()
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() - start < 20, "task never started"
        time.sleep(0.05)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(WorkerLost) as info:
        list(smap)
    assert time.monotonic() - killed < 5
    assert "pid_then_sleep#0 failed on host 127.0.0.3" in str(info.value)
    assert "killed by SIGKILL" in str(info.value)
    # the pool replaced the dead worker and still computes
    assert sorted(Starmap(square, [(2,), (3,)], distribute="zmq")) == [4, 9]


def test_tasks_sent_to_a_worker_that_dies_run_on_its_replacement(
    config: Config, tmp_path: Path
) -> None:
    """A task of another calculation, queued on the worker process behind the one running
    when it was killed, goes back to the pool's queue and runs on the new process."""
    pidfile = tmp_path / "pid"
    doomed = Starmap(pid_then_sleep, distribute="zmq", task_retries=0)
    doomed.submit_to("127.0.0.3", str(pidfile), 60)  # the only worker process of that pool
    start = time.monotonic()
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() - start < 20, "task never started"
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    other = Starmap(square, distribute="zmq")
    other.submit_to("127.0.0.3", 7)
    other.submit_to("127.0.0.3", 8)
    while len(held_by(config, "127.0.0.3", pid)) < 2:  # one sent ahead to the busy process
        assert time.monotonic() - start < 20, "the pool never sent the tasks to the worker"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    assert sorted(other) == [49, 64]
    with pytest.raises(WorkerLost, match=r"pid_then_sleep#0 failed on host 127\.0\.0\.3"):
        list(doomed)


def held_by(config: Config, host: str, pid: int) -> list[str]:
    """The task keys a worker process holds (running and sent ahead), from `inspect`."""
    reply = launcher.query_pools(config, InspectQuery(), hosts=[host])[host]
    assert reply is not None, f"the pool on {host} does not answer"
    return reply.running.get(pid, [])


def test_silent_pool_ends_the_calculation_without_retries(cluster: Cluster,
                                                          config: Config) -> None:
    """A pool that stops answering (host frozen) turns its tasks into an error when they may
    not be re-run (test_engine_faults: they are, by default)."""
    pid = cluster.pool_pid("127.0.0.3")
    smap = Starmap(square, distribute="zmq", pool_timeout=1.5, task_retries=0)
    smap.submit(1)  # goes to 127.0.0.2 (2 processes, least loaded)
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(4):
            smap.submit_to("127.0.0.3", i)
        started = time.monotonic()
        with pytest.raises(WorkerLost, match=r"workerpool on host 127\.0\.0\.3 .* silent"):
            list(smap)
        assert time.monotonic() - started < 5
    finally:
        os.kill(pid, signal.SIGCONT)


def test_large_arrays_arrive_intact(config: Config) -> None:
    smap = Starmap(chunks, [(2, 2_000_000)], distribute="zmq")
    arrays = dict(smap)
    assert set(arrays) == {0, 1}
    np.testing.assert_array_equal(arrays[1], np.ones(2_000_000))


def test_private_pool_dies_with_its_master(tmp_path: Path) -> None:
    """processpool mode: a SIGKILLed master leaves no workerpool or worker behind."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from oqzmq.parallel import LocalPool, Starmap\n"
        "from enginetasks import square\n"
        "assert list(Starmap(square, [(2,)], distribute='processpool')) == [4]\n"
        "print(LocalPool.get().process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    master = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert master.stdout is not None
    pool_pid = int(master.stdout.readline())
    children = _children(pool_pid)
    assert children, "the pool has no worker processes"
    master.kill()
    master.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in [pool_pid, *children]):
        assert time.monotonic() < deadline, "the private pool outlived its master"
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
