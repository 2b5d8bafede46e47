"""The dbserver over zmq: authentication, errors, multi_user, persistence, concurrency."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import zmq
from oqzmq import zap
from oqzmq.auth import Signer
from oqzmq.config import Config, load_config
from oqzmq.dbserver import REFUSAL, DbClient, DbServer, DbServerError, channels, ping


def test_an_authenticated_ping_is_answered(dbserver, config: Config) -> None:
    answer = ping(config)
    assert answer["db"].endswith("db.sqlite3") and answer["multi_user"] is False


def test_a_full_lifecycle_goes_through_the_server(dbserver, config: Config) -> None:
    with DbClient(config) as client:
        calc = client.call("create_calc", description="demo", calculation_mode="demo", pid=7)
        client.call("set_status", calc_id=calc["id"], status="executing")
        reply = client.call("add_logs", calc_id=calc["id"], records=[[1.5, "INFO", "p", "hi"]])
        assert reply == {"added": 1, "abort_requested": False}
        client.call("set_status", calc_id=calc["id"], status="complete")
        listed = client.call("list_calcs")
        logs = client.call("get_logs", calc_id=calc["id"])
    assert listed["total"] == 1 and listed["calcs"][0]["status"] == "complete"
    assert [(r["level"], r["message"]) for r in logs] == [("INFO", "hi")]


def test_a_client_with_another_key_gets_a_clear_error(dbserver, config: Config) -> None:
    impostor = replace(config, authkey="a-different-but-long-enough-secret")
    with pytest.raises(DbServerError, match=r"refused our authentication.*authkey"):
        ping(impostor)


def test_a_stopped_dbserver_is_reported_at_once_with_the_fix(config: Config) -> None:
    started = time.monotonic()
    with pytest.raises(DbServerError, match=r"not running: nothing listens.*oqz dbserver start"):
        ping(config, timeout=5)
    assert time.monotonic() - started < 1


def test_a_hung_dbserver_is_reported_after_the_timeout(config: Config) -> None:
    # past the handshake (it holds the key), then silent
    silent = zap.serve(zmq.Context.instance().socket(zmq.ROUTER), config.authkey, "silent")
    silent.bind(f"tcp://127.0.0.1:{config.db_port}")
    try:
        with pytest.raises(DbServerError, match=r"did not answer within 0.3 s.*dbserver status"):
            ping(config, timeout=0.3)
    finally:
        silent.close(0)


def test_errors_of_the_database_come_back_as_messages(dbserver, config: Config) -> None:
    with DbClient(config) as client:
        with pytest.raises(DbServerError, match="there is no calculation 42"):
            client.call("get_calc", calc_id=42)
        with pytest.raises(DbServerError, match="unknown command 'drop_table'"):
            client.call("drop_table")
        with pytest.raises(DbServerError, match="bad arguments"):
            client.call("get_calc", calc_id="forty-two")
        assert client.call("ping")["user"] == client.user  # still serving


def _raw_socket(config: Config) -> zmq.Socket:
    # a peer that passes the handshake: these tests are about the messages
    endpoint = f"tcp://127.0.0.1:{config.db_port}"
    sock = zap.client(zmq.Context.instance().socket(zmq.DEALER), config.authkey, endpoint)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(endpoint)
    return sock


def _request(user: str = "mallory") -> bytes:
    return json.dumps({"id": 1, "cmd": "list_calcs", "user": user, "args": {}}).encode()


def test_unsigned_truncated_wrongly_signed_and_replayed_requests_are_refused(
    dbserver, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="oqzmq.dbserver")
    request_channel, _ = channels(config)
    signed = Signer(config.authkey, request_channel).sign([_request()])
    forged = Signer("not-the-cluster-key-at-all", request_channel).sign([_request()])
    tampered = [*signed[:2], _request(user="root")]
    sock = _raw_socket(config)
    try:
        sock.send_multipart(signed)
        assert sock.recv_multipart() != [REFUSAL]  # the genuine one is served once
        for attack in ([_request()], signed[:1], forged, tampered, signed):
            sock.send_multipart(attack)
            assert sock.recv_multipart() == [REFUSAL]
    finally:
        sock.close()
    reasons = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(reasons) == 5
    assert any("truncated" in r for r in reasons) and any("replayed" in r for r in reasons)
    assert ping(config)["version"]  # and it is still serving genuine clients


def test_a_signed_request_that_is_not_json_is_an_error_not_a_crash(
    dbserver, config: Config
) -> None:
    request_channel, _ = channels(config)
    signer = Signer(config.authkey, request_channel)
    sock = _raw_socket(config)
    try:
        for garbage in ([b"\x80not json"], [b"[1, 2]"], [b"{}", b"{}"]):
            sock.send_multipart(signer.sign(garbage))
            assert sock.recv_multipart() != [REFUSAL]
    finally:
        sock.close()
    assert ping(config)["version"]


def test_multi_user_hides_other_users_calculations(make_config) -> None:
    config = load_config(make_config(multi_user=True))
    server = DbServer(config)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        alice, bob = DbClient(config, user="alice"), DbClient(config, user="bob")
        admin = DbClient(config, user="openquake")
        calc = alice.call("create_calc", description="alice's")
        bob.call("create_calc", description="bob's")
        assert [c["description"] for c in alice.call("list_calcs")["calcs"]] == ["alice's"]
        assert admin.call("list_calcs")["total"] == 2
        with pytest.raises(DbServerError, match=f"calculation {calc['id']} belongs to alice"):
            bob.call("request_abort", calc_id=calc["id"])
        with pytest.raises(DbServerError, match="belongs to alice"):
            bob.call("get_logs", calc_id=calc["id"])
        for client in (alice, bob, admin):
            client.close()
    finally:
        server.stop()
        thread.join(10)


def test_calculations_survive_a_restart(config: Config) -> None:
    for expected_total in (1, 2):
        server = DbServer(config)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with DbClient(config) as client:
                client.call("create_calc", description="persisted")
                assert client.call("list_calcs")["total"] == expected_total
        finally:
            server.stop()
            thread.join(10)


def test_a_second_server_on_the_same_port_says_so(dbserver, config: Config) -> None:
    with pytest.raises(DbServerError, match=r"cannot listen on .* already running"):
        DbServer(config)


def test_concurrent_clients_are_all_served(dbserver, config: Config) -> None:
    errors: list[BaseException] = []

    def client_work() -> None:
        try:
            with DbClient(config) as client:
                for _ in range(20):
                    calc = client.call("create_calc")
                    client.call("add_logs", calc_id=calc["id"], records=[[1.0, "INFO", "p", "m"]])
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=client_work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with DbClient(config) as client:
        assert client.call("list_calcs", limit=1)["total"] == 80


def test_the_local_mode_uses_the_same_actions_without_a_server(
    config: Config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OQ_DATABASE", "local")
    with DbClient(config) as client:
        calc = client.call("create_calc", description="offline")
        assert client.call("get_calc", calc_id=calc["id"])["description"] == "offline"
        assert "OQ_DATABASE=local" in client.where
    assert (tmp_path / "db" / "db.sqlite3").exists()


def test_a_missing_authkey_is_a_config_error(config: Config) -> None:
    from oqzmq.config import ConfigError

    with pytest.raises(ConfigError, match="authkey is missing"):
        DbClient(replace(config, authkey=""))


def test_an_oversized_message_is_dropped_before_it_is_read(dbserver, config: Config) -> None:
    from oqzmq.dbserver import MAX_MESSAGE_BYTES

    sock = _raw_socket(config)
    sock.setsockopt(zmq.RCVTIMEO, 500)
    try:
        sock.send_multipart([b"x" * (MAX_MESSAGE_BYTES + 1)])
        with pytest.raises(zmq.Again):
            sock.recv_multipart()  # no refusal either: zmq closed the connection
    finally:
        sock.close()
    assert ping(config)["version"]
