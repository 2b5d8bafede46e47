"""verify opens at most SESSIONS_PER_HOST commands at once on a host (sshd's MaxSessions).

At 16 workers verify's checks ran 30 and more commands at once on the master, all through
its one multiplexed ssh connection, and sshd refused the sessions past its MaxSessions (10).
These tests count the commands running at once on fake hosts.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from oqcluster.nodetests import test_cluster_config as config_checks
from oqcluster.nodetests import test_cluster_nfs as nfs_checks
from oqcluster.nodetests import test_cluster_ports as port_checks
from oqcluster.nodetests import test_cluster_ssh as ssh_checks
from oqcluster.verify import remote
from oqcluster.verify.context import Context
from oqcluster.verify.remote import Node


class CountingHosts:
    """testinfra hosts whose run() takes a moment and counts the runs at once per host."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.total_running = 0
        self.most_in_total = 0

    def host(self, name: str) -> Any:
        def run(command: str, *args: str) -> Any:
            with self.lock:
                self.running[name] += 1
                self.total_running += 1
                self.most[name] = max(self.most[name], self.running[name])
                self.most_in_total = max(self.most_in_total, self.total_running)
            time.sleep(0.02)
            with self.lock:
                self.running[name] -= 1
                self.total_running -= 1
            if args and args[0] == remote.PROBE:  # Node.probe: every port open
                return SimpleNamespace(rc=0, stdout=json.dumps(dict.fromkeys(args[3:], "open")),
                                       stderr="")
            return SimpleNamespace(rc=0, stdout="", stderr="")

        backend = SimpleNamespace(get_command=lambda command, *args: command % args)
        return SimpleNamespace(run=run, backend=backend)


def node(name: str, hosts: CountingHosts, login: str = "deploy") -> Node:
    made = Node(name=name, address=f"10.0.0.{len(name)}", inventory="unused")
    made.__dict__["host"] = hosts.host(name)  # the cached_property, without testinfra
    made.__dict__["login"] = login
    return made


@pytest.fixture(autouse=True)
def fresh_limit() -> Iterator[None]:
    remote.limit_sessions(remote.SESSIONS_PER_HOST)
    yield
    remote.limit_sessions(remote.SESSIONS_PER_HOST)


def hammer(nodes: list[Node], threads: int) -> None:
    def work(index: int) -> None:
        nodes[index % len(nodes)].run("true")

    started = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()


def test_the_cap_stays_below_sshds_default_max_sessions_with_margin() -> None:
    assert 1 <= remote.SESSIONS_PER_HOST <= 10 - 3


def test_one_host_never_runs_more_than_the_cap_even_through_several_node_objects() -> None:
    hosts = CountingHosts()
    # the master appears as master and as a worker: two Node objects, one ssh connection
    same = [node("m", hosts), node("m", hosts)]

    hammer(same, threads=40)

    assert hosts.most["m"] == remote.SESSIONS_PER_HOST


def test_the_cap_is_per_host_not_for_the_whole_cluster() -> None:
    hosts = CountingHosts()
    nodes = [node(f"w{i}", hosts) for i in range(4)]

    hammer(nodes, threads=4 * 3 * remote.SESSIONS_PER_HOST)

    assert max(hosts.most.values()) <= remote.SESSIONS_PER_HOST
    assert hosts.most_in_total > remote.SESSIONS_PER_HOST


def test_limit_sessions_sets_the_cap_and_refuses_zero() -> None:
    remote.limit_sessions(2)
    hosts = CountingHosts()

    hammer([node("m", hosts)], threads=20)

    assert hosts.most["m"] == 2
    with pytest.raises(ValueError):
        remote.limit_sessions(0)


def test_sixteen_workers_checked_at_once_keep_the_master_under_the_cap() -> None:
    """The cross-node checks that run on the master once per worker (16 at once) and the
    ones that run on every node, all at the same time (more than the cross-node tests'
    pytest run, which runs them one after the other, ever does)."""
    hosts = CountingHosts()
    master = node("master", hosts)
    workers = [node(f"worker{i:02d}", hosts) for i in range(1, 17)]
    settings = {"oq_user": "openquake", "oq_ctrl_port": 1909, "oq_shared_dir": "/oq_shared"}
    ctx = Context("unused", None, master, workers, settings, frozenset(),  # type: ignore[arg-type]
                  None)  # type: ignore[arg-type]
    calls = [ssh_checks.ssh_master_to_workers, port_checks.workerpools_reachable,
             config_checks.config_agrees, nfs_checks.shared_dir_visible]

    results: dict[str, list[Any]] = {}

    def run(check: Any) -> None:
        results[check.__name__] = list(check(ctx))

    threads = [threading.Thread(target=run, args=(check,)) for check in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == sorted(check.__name__ for check in calls)  # none raised
    assert hosts.most["master"] == remote.SESSIONS_PER_HOST  # reached, never passed
    assert max(hosts.most.values()) <= remote.SESSIONS_PER_HOST
