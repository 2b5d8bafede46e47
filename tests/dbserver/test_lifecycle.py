"""A calculation's lifecycle through the dbserver: logs, final status, abort, serialize_jobs."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from dataclasses import replace

import pytest
from dbserverthread import RunningServer
from oqzmq import logs
from oqzmq.auth import MAX_CLOCK_SKEW
from oqzmq.config import Config
from oqzmq.dbserver import DbClient, DbServerError
from oqzmq.logs import CalculationAborted, calculation

log = logging.getLogger("test.lifecycle")


@pytest.fixture(autouse=True)
def _info_logging() -> None:
    logging.getLogger().setLevel(logging.INFO)


@pytest.fixture
def client(dbserver, config: Config):
    with DbClient(config) as db_client:
        yield db_client


def test_a_successful_calculation_is_complete_with_its_logs(config: Config, client) -> None:
    with calculation(config, description="demo", calculation_mode="demo") as calc:
        assert client.call("get_calc", calc_id=calc.id)["status"] == "executing"
        log.info("computing hazard curves")
    record = client.call("get_calc", calc_id=calc.id)
    messages = [r["message"] for r in client.call("get_logs", calc_id=calc.id)]
    assert record["status"] == "complete" and record["description"] == "demo"
    assert record["stop_time"] >= record["start_time"]
    assert "computing hazard curves" in messages
    assert messages[-1] == f"calculation {calc.id} complete"


def test_a_failing_calculation_keeps_its_traceback(config: Config, client) -> None:
    with pytest.raises(ValueError, match="bad site model"), calculation(config) as calc:
        raise ValueError("bad site model")
    assert client.call("get_calc", calc_id=calc.id)["status"] == "failed"
    traceback = client.call("get_traceback", calc_id=calc.id)
    assert "ValueError: bad site model" in traceback and "test_lifecycle.py" in traceback
    errors = [r for r in client.call("get_logs", calc_id=calc.id) if r["level"] == "ERROR"]
    assert errors and "bad site model" in errors[0]["message"]


@pytest.mark.parametrize("inherited_sigint", ["python's handler", "ignored"])
def test_an_abort_request_interrupts_the_running_calculation(
    config: Config, client, inherited_sigint: str
) -> None:
    # `oqz run ... &` from a script starts with SIGINT ignored: abort must work all the same
    previous = signal.getsignal(signal.SIGINT)
    if inherited_sigint == "ignored":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _abort_a_running_calculation(config, client)
        assert signal.getsignal(signal.SIGINT) == (
            signal.SIG_IGN if inherited_sigint == "ignored" else previous
        ), "the calculation did not restore the SIGINT handler it found"
    finally:
        signal.signal(signal.SIGINT, previous)


def _abort_a_running_calculation(config: Config, client) -> None:
    started = time.monotonic()
    with (
        pytest.raises(CalculationAborted, match=r"aborted by `oqz abort`"),
        calculation(config) as calc,
    ):
        client.call("request_abort", calc_id=calc.id)
        while time.monotonic() - started < 10:
            time.sleep(0.05)  # stands for a Starmap waiting on results
    assert time.monotonic() - started < 3
    assert client.call("get_calc", calc_id=calc.id)["status"] == "aborted"


def test_a_second_calculation_waits_for_the_first_with_serialize_jobs(
    config: Config, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "WAIT_SECONDS", 0.05)
    first = client.call("create_calc", description="first")
    client.call("set_status", calc_id=first["id"], status="executing")
    entered = threading.Event()

    def second() -> None:
        with calculation(config, description="second"):
            entered.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.5)
    assert not entered.is_set()
    waiting = client.call("list_calcs")["calcs"][0]
    assert (waiting["description"], waiting["status"]) == ("second", "submitted")
    client.call("set_status", calc_id=first["id"], status="complete")
    thread.join(5)
    assert entered.is_set()
    assert client.call("get_calc", calc_id=waiting["id"])["status"] == "complete"


def test_an_abort_while_waiting_for_its_turn_ends_it_aborted(
    config: Config, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "WAIT_SECONDS", 0.05)
    first = client.call("create_calc")
    client.call("set_status", calc_id=first["id"], status="executing")
    aborter = threading.Timer(0.5, lambda: client.call("request_abort", calc_id=first["id"] + 1))
    aborter.start()
    with pytest.raises(CalculationAborted, match="aborted by `oqz abort`"), calculation(config):
        pytest.fail("it must not start while the first one executes")
    aborter.join()
    assert client.call("get_calc", calc_id=first["id"] + 1)["status"] == "aborted"


def test_a_ctrl_c_without_abort_request_ends_it_aborted(config: Config, client) -> None:
    with pytest.raises(KeyboardInterrupt), calculation(config) as calc:
        raise KeyboardInterrupt
    assert client.call("get_calc", calc_id=calc.id)["status"] == "aborted"


def test_without_serialize_jobs_calculations_run_side_by_side(config: Config, client) -> None:
    first = client.call("create_calc")
    client.call("set_status", calc_id=first["id"], status="executing")
    with calculation(replace(config, serialize_jobs=0)) as calc:
        assert client.call("get_calc", calc_id=calc.id)["status"] == "executing"


def test_no_dbserver_means_a_clear_error_before_anything_runs(config: Config) -> None:
    with (
        pytest.raises(DbServerError, match="oqz dbserver start"),
        calculation(config, client=DbClient(config, timeout=0.3)),
    ):
        pytest.fail("the calculation must not start without its record")


def test_a_dbserver_restart_during_a_calculation_loses_nothing(config: Config) -> None:
    from oqzmq.dbserver import DbServer

    first = DbServer(config)
    thread = threading.Thread(target=first.serve_forever, daemon=True)
    thread.start()
    restarted: list[DbServer] = []

    def restart_later() -> None:
        time.sleep(1.5)
        server = DbServer(config)
        restarted.append(server)
        server.serve_forever()

    with calculation(config, client=DbClient(config, timeout=MAX_CLOCK_SKEW + 2)) as calc:
        log.info("before the restart")
        time.sleep(0.7)  # shipped
        first.stop()
        thread.join(10)
        threading.Thread(target=restart_later, daemon=True).start()
        log.info("while the dbserver is down")
    try:
        with DbClient(config) as client:
            record = client.call("get_calc", calc_id=calc.id)
            messages = [r["message"] for r in client.call("get_logs", calc_id=calc.id)]
    finally:
        restarted[0].stop()
    assert record["status"] == "complete"
    assert "before the restart" in messages and "while the dbserver is down" in messages
    assert messages.count("while the dbserver is down") == 1


def test_a_connection_cut_inside_the_handshake_is_not_a_refusal(config: Config) -> None:
    """A dbserver going down or coming up can end a connection inside the zmq handshake
    (libzmq: EVENT_HANDSHAKE_FAILED_NO_DETAIL). That is no refusal: the client connects again
    and is answered once the dbserver runs (the webui's long-lived client hit this)."""
    cutter = socket.create_server((config.db_host, config.db_port))
    stop = threading.Event()

    def cut_every_connection() -> None:
        cutter.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = cutter.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            conn.close()  # RST inside the handshake

    thread = threading.Thread(target=cut_every_connection, daemon=True)
    thread.start()
    answers: list[object] = []
    client = DbClient(config, timeout=8.0)
    asking = threading.Thread(target=lambda: answers.append(client.call("list_calcs")))
    asking.start()
    time.sleep(1.0)
    stop.set()
    thread.join(5)
    cutter.close()
    server = RunningServer(config)
    try:
        asking.join(15)
    finally:
        server.stop()
        client.close()
    assert answers and answers[0] == {"total": 0, "calcs": []}, answers


def test_a_burst_of_log_records_is_shipped_in_batches(config: Config, client) -> None:
    with calculation(config) as calc:
        for number in range(5_000):
            log.info("record %d", number)
    messages = [r["message"] for r in client.call("get_logs", calc_id=calc.id)]
    assert [m for m in messages if m.startswith("record ")] == [
        f"record {n}" for n in range(5_000)
    ]


def test_a_calculation_whose_process_died_does_not_block_the_queue(
    config: Config, client
) -> None:
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stuck = client.call("create_calc", host=socket.gethostname(), pid=dead.pid)
    client.call("set_status", calc_id=stuck["id"], status="executing")
    with calculation(config) as calc:  # serialize_jobs = 1: it would wait forever
        pass
    assert client.call("get_calc", calc_id=calc.id)["status"] == "complete"
    assert client.call("get_calc", calc_id=stuck["id"])["status"] == "failed"
    assert f"process {dead.pid}" in client.call("get_traceback", calc_id=stuck["id"])


def test_records_beyond_the_buffer_during_an_outage_are_counted_in_the_log(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oqzmq.dbserver import DbServer

    monkeypatch.setattr(logs, "MAX_BUFFERED", 50)
    servers = [DbServer(config)]
    threading.Thread(target=servers[0].serve_forever, daemon=True).start()
    with calculation(config, client=DbClient(config, timeout=MAX_CLOCK_SKEW + 2)) as calc:
        time.sleep(0.7)  # shipped: the calculation is executing
        servers[0].stop()
        time.sleep(0.5)
        for number in range(80):
            log.info("outage record %d", number)
        servers.append(DbServer(config))
        threading.Thread(target=servers[1].serve_forever, daemon=True).start()
    try:
        with DbClient(config) as client:
            messages = [r["message"] for r in client.call("get_logs", calc_id=calc.id)]
    finally:
        servers[1].stop()
    kept = [m for m in messages if m.startswith("outage record")]
    assert kept == [f"outage record {n}" for n in range(len(kept))]
    [warning] = [m for m in messages if "log records were dropped: more than 50" in m]
    assert len(kept) < 80 and int(warning.split()[0]) >= 80 - len(kept)  # and the server's
