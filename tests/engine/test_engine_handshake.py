"""Issue 20 item 3: a peer without the cluster key is refused at the zmq handshake (ZAP,
:mod:`oqzmq.zap`), before it can make a process buffer its data, on every engine socket
that listens: a workerpool's control port, the dbserver, a calculation's result receiver.

Each target is a real process on loopback. Attackers without the key (a plain zmq socket, and
one presenting a wrong token) each send two 512 MiB messages; the target's peak RSS (VmHWM)
must not grow (by more than 50 MB), the refusal is logged once, not per attempt, and a keyed
client is served by the same process right before and after. A key holder's message over the
cap (``max_message_mb`` = 64 here) is dropped by zmq as it arrives (MAXMSGSIZE): bounded too.
A keyed garbage message under the cap is the control: it is read, so VmHWM grows by its size,
which shows that the measure would see a buffered flood. The figures are printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import zmq
from enginecluster import AUTHKEY
from oqzmq import launcher, zap
from oqzmq.config import Config
from oqzmq.dbserver import ping
from oqzmq.protocol import Ping
from test_engine_identity import NOBODY
from test_engine_replay import HOST, Service, _wait_serving, dbserver, pool, replay_config

__all__ = ["dbserver", "pool", "replay_config"]  # fixtures shared with the replay tests

MiB = 1 << 20
FLOOD = 512 * MiB  # each attacker sends two of these
BOUND = 50 * MiB  # what the target's peak RSS may grow by
CONTROL = 48 * MiB  # a keyed message under the 64 MB cap: read, so VmHWM grows
REFUSED_NO_KEY = "presented no cluster key"
REFUSED_WRONG_KEY = "wrong cluster key"
ENDED_IN_HANDSHAKE = "ended before the zmq handshake completed"
FIGURES: list[str] = []


def vm_hwm(pid: int) -> int:
    """The peak resident set size of ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def _send_big(endpoint: str, socktype: int, authkey: str | None, size: int, count: int,
              settle: float = 3.0) -> None:
    """Connect (with ``authkey``'s credentials, or with none) and send ``count`` messages of
    ``size`` bytes; leave them ``settle`` seconds to arrive (or to be refused)."""
    context = zmq.Context()
    sock = context.socket(socktype)
    if authkey is not None:
        zap.client(sock, authkey, endpoint)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    payload = zmq.Frame(bytes(size))  # one buffer, sent without copies
    try:
        sock.connect(endpoint)
        for _ in range(count):
            try:
                sock.send(payload, copy=False)
            except zmq.Again:
                break  # no connection took it (the handshake failed): nothing to send to
        time.sleep(settle)
    finally:
        sock.close(0)
        context.term()


def _attack(name: str, pid: int, endpoint: str, socktype: int) -> dict[str, int]:
    """Every attack on one target; the growth of its VmHWM for each."""
    grown = {}
    for attack, authkey, size in (("no key", None, FLOOD),
                                  ("wrong key", "not-the-cluster-key", FLOOD),
                                  ("key, over the cap", AUTHKEY, FLOOD)):
        before = vm_hwm(pid)
        _send_big(endpoint, socktype, authkey, size, 2)
        grown[attack] = vm_hwm(pid) - before
        FIGURES.append(f"{name}: {attack}, 2 x {size // MiB} MiB: VmHWM {before / MiB:.0f} -> "
                       f"{(before + grown[attack]) / MiB:.0f} MiB")
        print(FIGURES[-1])
    return grown


def _control(name: str, pid: int, endpoint: str, socktype: int) -> int:
    before = vm_hwm(pid)
    _send_big(endpoint, socktype, AUTHKEY, CONTROL, 1, settle=2.0)
    grown = vm_hwm(pid) - before
    FIGURES.append(f"{name}: control, keyed unsigned {CONTROL // MiB} MiB under the cap: "
                   f"VmHWM {before / MiB:.0f} -> {(before + grown) / MiB:.0f} MiB")
    print(FIGURES[-1])
    return grown


def _assert_bounded(grown: dict[str, int]) -> None:
    for attack, growth in grown.items():
        assert growth < BOUND, f"{attack}: VmHWM grew by {growth / MiB:.0f} MiB"


def _assert_logged_once(log: str) -> None:
    assert log.count(REFUSED_WRONG_KEY) == 1, log
    # a keyless peer: whichever side notices the mechanism mismatch first, the target sees it
    # refused or sees the connection end during the handshake; each is logged once a minute
    keyless = [log.count(REFUSED_NO_KEY), log.count(ENDED_IN_HANDSHAKE)]
    assert sum(keyless) >= 1 and max(keyless) == 1, log


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if FIGURES:
        print("\npeak RSS (VmHWM) of the targets:\n  " + "\n  ".join(FIGURES))


def test_a_workerpool_refuses_keyless_peers_before_reading_their_data(
        pool: Service, replay_config: tuple[Path, Config]) -> None:
    _, config = replay_config
    pool.start()
    assert launcher.query_pools(config, Ping(), timeout=60)[HOST] is not None, pool.log()
    assert pool.process is not None
    endpoint = f"tcp://{HOST}:{config.ctrl_port}"
    # the probe of `oqcluster verify` (python -m oqzmq.zap): both twins
    assert zap.probe(endpoint, None) == "refused: no key"
    assert zap.probe(endpoint, "not-the-cluster-key") == "refused: wrong key"
    assert zap.probe(endpoint, AUTHKEY) == "accepted"

    _assert_bounded(_attack("workerpool", pool.process.pid, endpoint, zmq.DEALER))
    assert launcher.query_pools(config, Ping(), timeout=10)[HOST] is not None, pool.log()
    assert _control("workerpool", pool.process.pid, endpoint, zmq.DEALER) > CONTROL // 2
    _assert_logged_once(pool.log())
    assert launcher.query_pools(config, Ping(), timeout=10)[HOST] is not None, pool.log()
    # a master with another key: refused at the handshake, it does not hang (zmq would block
    # its sends for ever: no connection), the pool is reported silent
    started = time.monotonic()
    wrong = replace(config, authkey="not-the-cluster-key-but-long-enough")
    assert launcher.query_pools(wrong, Ping(), timeout=3)[HOST] is None
    assert time.monotonic() - started < 15


def test_the_dbserver_refuses_keyless_peers_before_reading_their_data(
        dbserver: Service, replay_config: tuple[Path, Config]) -> None:
    _, config = replay_config
    dbserver.start()
    _wait_serving(config)
    assert dbserver.process is not None
    endpoint = f"tcp://127.0.0.1:{config.db_port}"

    probed = subprocess.run([sys.executable, "-m", "oqzmq.zap", endpoint], capture_output=True,
                            text=True, timeout=60, check=False)
    assert probed.returncode == 0, probed
    assert json.loads(probed.stdout) == {endpoint: {"keyless": "refused: no key",
                                                    "keyed": "accepted"}}

    _assert_bounded(_attack("dbserver", dbserver.process.pid, endpoint, zmq.DEALER))
    assert ping(config, timeout=10)["version"]
    _assert_logged_once(dbserver.log())


RECEIVER = """
import sys
from enginetasks import echo_when
from oqzmq.parallel import Starmap

smap = Starmap(echo_when, [("before", ""), ("after", sys.argv[1])], distribute="zmq")
for result in smap:
    print(smap.endpoint, result, flush=True)
"""


def test_a_result_receiver_refuses_keyless_peers_before_reading_their_data(
        pool: Service, replay_config: tuple[Path, Config], tmp_path: Path) -> None:
    path, config = replay_config
    pool.start()
    assert launcher.query_pools(config, Ping(), timeout=60)[HOST] is not None, pool.log()
    go = tmp_path / "go"
    log = tmp_path / "master.log"
    master = subprocess.Popen([sys.executable, "-c", RECEIVER, str(go)], stdout=subprocess.PIPE,
                              stderr=log.open("wb"), text=True,
                              env={**os.environ, "OQ_CONFIG_FILE": str(path)})
    try:
        assert master.stdout is not None
        endpoint, first = master.stdout.readline().split()
        assert first == "before", log.read_text()

        _assert_bounded(_attack("result receiver", master.pid, endpoint, zmq.PUSH))
        go.touch()
        line = master.stdout.readline().split()
        assert line[1:] == ["after"], log.read_text()
        assert master.wait(30) == 0, log.read_text()
        _assert_logged_once(log.read_text())
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


# Connect to a unix socket as root (its owner here) or as the account nobody; print the outcome.
CONNECT_AS = f"""
import os, socket, sys
path, account = sys.argv[1:]
if account == "nobody":
    os.setgroups([])
    os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
    os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    try:
        sock.connect(path)
    except OSError as exc:
        print(type(exc).__name__)
    else:
        print("connected")
"""


def _connect_as(endpoint: str, account: str) -> str:
    return subprocess.run([sys.executable, "-c", CONNECT_AS, endpoint.removeprefix("ipc://"),
                           account], capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip()


def test_private_ipc_endpoints_let_no_other_user_connect(config: Config, tmp_path: Path) -> None:
    """processpool's sockets (its pool's control socket, the result receivers) skip the zmq
    handshake check: zap.bind puts them in a directory only their user may enter, so the kernel
    refuses everyone else at connect(2), before a byte is read. The owner gets through the same
    path in the same run, while the Starmap is alive, and the Starmap's result is unharmed."""
    if os.geteuid() != 0:
        pytest.skip("connects as the account nobody: needs root")
    from enginetasks import pid_then_sleep
    from oqzmq.parallel import LocalPool, Starmap

    smap = Starmap(pid_then_sleep, distribute="processpool")
    smap.submit(str(tmp_path / "pid"), 2.0)
    endpoints = [LocalPool.get().endpoint, smap.endpoint]
    assert all(zap.is_private(endpoint) for endpoint in endpoints), endpoints
    for endpoint in endpoints:
        assert _connect_as(endpoint, "root") == "connected", endpoint
        assert _connect_as(endpoint, "nobody") == "PermissionError", endpoint
    assert list(smap) == [int((tmp_path / "pid").read_text())]


def test_an_ipc_endpoint_is_bound_only_in_a_directory_of_its_own(tmp_path: Path) -> None:
    """A directory others may enter would let them past the missing handshake check: refused,
    with the fix, and nothing bound; the same directory, once 0700, is accepted."""
    directory = tmp_path / "sockets"
    directory.mkdir()
    directory.chmod(0o755)
    endpoint = f"ipc://{directory}/ctrl"
    context = zmq.Context()
    try:
        with pytest.raises(ValueError, match=r"mode 755.*directory of mode 0700"):
            zap.bind(context.socket(zmq.ROUTER), AUTHKEY, "the test's socket", endpoint)
        assert not (directory / "ctrl").exists()
        directory.chmod(0o700)
        sock = zap.bind(context.socket(zmq.ROUTER), AUTHKEY, "the test's socket", endpoint)
        assert (directory / "ctrl").is_socket()
        sock.close(0)
    finally:
        context.destroy(linger=0)
