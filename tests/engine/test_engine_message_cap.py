"""[zworkers] max_message_mb: results, arguments and peers' messages over the cap (64 MB here)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from enginecluster import MAX_MESSAGE_MB, Cluster
from enginetasks import chunks, square, zeros_mb
from oqzmq import protocol
from oqzmq.config import Config
from oqzmq.errors import TaskError, UserError
from oqzmq.parallel import Starmap

POOL = "127.0.0.2"


def test_a_result_over_the_cap_fails_and_says_to_yield_it_in_parts(config: Config) -> None:
    with pytest.raises(TaskError, match=r"(?s)zeros_mb#0.*65\.0 MB, over the 64 MB cap of "
                                        r"\[zworkers\] max_message_mb: yield the result in parts"):
        list(Starmap(zeros_mb, [(MAX_MESSAGE_MB + 1,)], distribute="zmq"))


def test_a_generator_task_yields_more_than_the_cap_in_parts(config: Config) -> None:
    part = (MAX_MESSAGE_MB // 2 + 8) << 17  # two parts of 40 MB: 80 MB in all
    results = dict(Starmap(chunks, [(2, part)], distribute="zmq"))
    assert sorted(results) == [0, 1]
    assert all(array.size == part and array[-1] == i for i, array in results.items())


def test_arguments_over_the_cap_are_refused_at_submit(config: Config) -> None:
    smap = Starmap(square, distribute="zmq")
    with pytest.raises(UserError, match=r"arguments of task square#0 take 65\.0 MB, over the "
                                        r"64 MB cap"):
        smap.submit(np.zeros((MAX_MESSAGE_MB + 1) << 17))
    smap.submit(3)  # the Starmap goes on, numbered as if the refused task never was
    assert list(smap) == [9]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_workerpool_never_buffers_a_frame_over_the_cap(cluster: Cluster,
                                                         config: Config) -> None:
    pid = cluster.pool_pid(POOL)
    before = peak_rss_mb(pid)
    context = zmq.Context()
    attacker = context.socket(zmq.DEALER)
    attacker.connect(f"tcp://{POOL}:{config.ctrl_port}")
    try:
        attacker.send(bytes(3 * MAX_MESSAGE_MB << 20), copy=False)  # 192 MB, unsigned
        time.sleep(1.5)
    finally:
        attacker.close(0)
        context.term()
    assert peak_rss_mb(pid) - before < MAX_MESSAGE_MB, "the pool buffered the huge frame"
    assert list(Starmap(square, [(4,)], distribute="zmq")) == [16]  # and still serves


def test_every_socket_of_a_starmap_carries_the_cap(config: Config) -> None:
    smap = Starmap(square, [(2,)], distribute="zmq")
    cap = (MAX_MESSAGE_MB << 20) + protocol.HEADROOM
    sockets = [smap._receiver, *(pool.sock for pool in smap._pools)]
    assert [s.getsockopt(zmq.MAXMSGSIZE) for s in sockets if s is not None] == [cap] * 3
    assert list(smap) == [4]
