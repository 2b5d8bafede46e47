"""Memory faults (issue #21): the kernel's OOM killer in a real memory cgroup, and the
``[memory] soft_mem_limit`` / ``hard_mem_limit`` of openquake.cfg on the workerpool and on
the master.

The cgroup tests run a workerpool of its own (127.0.0.4, one worker process) inside a child
of this process's memory cgroup with a small limit (cgroup v1 or v2, as root); they skip,
saying why, where no such cgroup can be made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from enginecluster import write_config
from enginetasks import hog, sleep_first_time
from freeports import free_port_block
from oqzmq import launcher
from oqzmq.config import Config, load_config
from oqzmq.errors import WorkerLost
from oqzmq.memory import memory_cgroup, oom_kills
from oqzmq.monitor import Monitor
from oqzmq.parallel import Starmap
from oqzmq.protocol import Ping

HOST = "127.0.0.4"
MB = 1 << 20


def _child_cgroup(name: str, limit_mb: int) -> Path:
    parent = memory_cgroup()
    if parent is None or os.geteuid() != 0:
        pytest.skip("needs root and a memory cgroup to make a child of")
    child = parent / name
    try:
        child.mkdir()
        if (parent / "memory.events").exists():  # v2
            (child / "memory.max").write_text(str(limit_mb * MB))
            (child / "memory.swap.max").write_text("0")
        else:
            (child / "memory.limit_in_bytes").write_text(str(limit_mb * MB))
    except OSError as exc:
        with contextlib.suppress(OSError):
            child.rmdir()
        pytest.skip(f"cannot make a memory cgroup with a limit under {parent}: {exc}")
    return child


@pytest.fixture
def cgroup_pool(tmp_path: Path) -> Iterator[Callable[..., tuple[Config, Path]]]:
    """start(limit_mb, soft, hard) -> (config, cgroup): a workerpool confined to a cgroup."""
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(limit_mb: int, soft: int = 90, hard: int = 99) -> tuple[Config, Path]:
        cgroup = _child_cgroup(f"oqz-test-{os.getpid()}-{len(started)}", limit_mb)
        port = free_port_block(3, ("127.0.0.1", HOST))
        path = write_config(tmp_path / "openquake.cfg", port, f"{port + 1}-{port + 2}",
                            f"{HOST} 1", tmp_path / "shared")
        with path.open("a") as cfg:
            cfg.write(f"\n[memory]\nsoft_mem_limit = {soft}\nhard_mem_limit = {hard}\n")
        config = load_config(path)
        procs = cgroup / "cgroup.procs"
        pool = subprocess.Popen(
            [sys.executable, "-m", "oqzmq.workerpool", "--host", HOST, "--cores", "1"],
            env={**os.environ, "OQ_CONFIG_FILE": str(path)},
            preexec_fn=lambda: procs.write_text(str(os.getpid())),
        )
        started.append((pool, cgroup))
        assert launcher.query_pools(config, Ping(), timeout=60)[HOST], "pool did not start"
        return config, cgroup

    yield start
    for pool, cgroup in started:
        pool.terminate()
        pool.wait(20)
        deadline = time.monotonic() + 20
        while True:
            try:
                cgroup.rmdir()
                break
            except OSError:  # its last processes are still exiting
                assert time.monotonic() < deadline, f"{cgroup} stays busy"
                time.sleep(0.2)


def report(what: str, seconds: float) -> None:
    print(f"\n[fault timing] {what}: {seconds:.2f} s")


def test_an_oom_killed_task_is_reported_out_of_memory_and_not_retried(
    cgroup_pool: Callable[..., tuple[Config, Path]]
) -> None:
    config, cgroup = cgroup_pool(400, hard=100)  # 100: only the kernel acts
    kills = oom_kills(cgroup)
    monitor = Monitor("oom")
    started = time.monotonic()
    with pytest.raises(WorkerLost) as info:
        list(Starmap(hog, [(1000, 100, 0.0)], monitor, config=config))
    report("worker OOM-killed -> task reported out of memory (allocation included)",
           time.monotonic() - started)
    assert time.monotonic() - started < 30
    assert oom_kills(cgroup) > kills
    text = str(info.value)
    assert f"hog#0 failed on host {HOST}" in text
    assert "killed by SIGKILL: out of memory" in text and str(cgroup) in text
    assert "[memory] oom_retries = 0" in text
    assert monitor.retries == []


def test_oom_retries_re_run_an_oom_killed_task(
    cgroup_pool: Callable[..., tuple[Config, Path]]
) -> None:
    config, _ = cgroup_pool(400, hard=100)
    monitor = Monitor("oom")
    config = dataclasses.replace(config, oom_retries=1)
    with pytest.raises(WorkerLost, match=r"re-run 1 time\(s\); \[memory\] oom_retries = 1"):
        list(Starmap(hog, [(1000, 100, 0.0)], monitor, config=config))
    [retry] = monitor.retries
    assert "out of memory" in retry.reason


def test_above_the_hard_limit_the_pool_stops_the_task_before_the_oom_killer(
    cgroup_pool: Callable[..., tuple[Config, Path]]
) -> None:
    config, cgroup = cgroup_pool(500, hard=50)
    kills = oom_kills(cgroup)
    started = time.monotonic()
    with pytest.raises(WorkerLost) as info:
        list(Starmap(hog, [(450, 10, 0.05)], config=config))
    report("pool above hard_mem_limit -> task stopped (allocation included)",
           time.monotonic() - started)
    assert oom_kills(cgroup) == kills, "the kernel's OOM killer was first"
    text = str(info.value)
    assert "MemoryError: using more memory than allowed by configuration" in text
    assert f"on host {HOST}" in text and "hard_mem_limit = 50%" in text
    assert f"cgroup {cgroup}" in text and " MB" in text


def test_above_the_soft_limit_the_pool_warns_the_master(
    cgroup_pool: Callable[..., tuple[Config, Path]], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, _ = cgroup_pool(500, soft=1)
    with caplog.at_level(logging.WARNING):
        assert list(Starmap(sleep_first_time, [(str(tmp_path / "m"), 2.5, 1)],
                            config=config)) == [1]
    warnings = [r.message for r in caplog.records if r.message.startswith(f"host {HOST}: ")]
    assert len(warnings) == 1, caplog.text  # once per host, not with every heartbeat
    assert "above [memory] soft_mem_limit = 1%" in warnings[0]
    assert "of the memory in use" in warnings[0]


def test_the_master_stops_above_its_hard_limit_and_warns_above_its_soft_limit(
    config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As the real engine's check_mem_usage: on the master, while results arrive."""
    strict = dataclasses.replace(config, hard_mem_limit=1)
    with pytest.raises(MemoryError, match=r"on host \S+: \d+% of the memory in use \(.* MB"):
        list(Starmap(sleep_first_time, [(str(tmp_path / "a"), 2, 1)], config=strict))
    lenient = dataclasses.replace(config, soft_mem_limit=1, hard_mem_limit=100)
    with caplog.at_level(logging.WARNING):
        assert list(Starmap(sleep_first_time, [(str(tmp_path / "b"), 0, 1)],
                            config=lenient)) == [1]
    assert "above [memory] soft_mem_limit = 1%" in caplog.text
