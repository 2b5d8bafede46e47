"""Identity at the dbserver (issue 20): the user name counts only with that user's key.

The attack: a cluster user (holding the cluster authkey, as every member of group openquake
does) sets LOGNAME/USER to another account, or sends another account's name, to see, abort or
stop what is not theirs. Each refusal here has its positive twin (the right user with its key,
an admin).

The tests that run `oqz` as another OS account (nobody) need root; the others run anywhere.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from dbserverthread import RunningServer
from freeports import free_port
from oqzmq import zap
from oqzmq.auth import Signer
from oqzmq.config import Config, load_config
from oqzmq.dbserver import DbClient, DbServerError, channels, db_file
from oqzmq.identity import derive_key, format_key, os_user, read_secret, secret_path

ENGINE_SRC = Path(__file__).resolve().parents[2] / "engine" / "src"
NOBODY = 65534


def write_config(directory: Path, multi_user: bool = True, admins: str = "openquake, root") -> Path:
    path = directory / "openquake.cfg"
    path.write_text(
        "[distribution]\noq_distribute = no\n\n[dbserver]\n"
        f"multi_user = {'true' if multi_user else 'false'}\n"
        f"admins = {admins}\n"
        f"file = {directory / 'db' / 'db.sqlite3'}\n"
        f"listen = 127.0.0.1\nhost = 127.0.0.1\nport = {free_port()}\n"
        f"authkey = {secrets.token_urlsafe(24)}\n"
    )
    return path


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    """A multi_user dbserver on loopback with calculations of alice and of openquake."""
    monkeypatch.delenv("OQ_DATABASE", raising=False)
    monkeypatch.delenv("OQ_USER_KEY_FILE", raising=False)
    config = load_config(write_config(tmp_path))
    server = RunningServer(config)
    with DbClient(config, user="alice") as alice, DbClient(config, user="openquake") as admin:
        alice.call("create_calc", description="alice's")
        admin.call("create_calc", description="openquake's")
    yield config
    server.stop()


def key_file(config: Config, user: str, tmp_path: Path, key: bytes | None = None) -> Path:
    secret = read_secret(secret_path(db_file(config)))
    assert secret is not None
    path = tmp_path / f"{user}.key"
    path.write_text(format_key(user, key if key is not None else derive_key(secret, user)))
    return path


def test_the_client_takes_its_name_from_the_os_not_logname(monkeypatch) -> None:
    monkeypatch.setenv("LOGNAME", "openquake")
    monkeypatch.setenv("USER", "openquake")
    assert os_user() == pwd.getpwuid(os.getuid()).pw_name
    assert os_user() != "openquake" or os.getuid() == pwd.getpwnam("openquake").pw_uid


def test_the_right_key_sees_and_aborts_its_own_and_an_admin_sees_all(
    world: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OQ_USER_KEY_FILE", str(key_file(world, "alice", tmp_path)))
    with DbClient(world, user="alice") as alice:
        listed = alice.call("list_calcs")["calcs"]
        assert [c["user_name"] for c in listed] == ["alice"]
        assert alice.call("request_abort", calc_id=listed[0]["id"])["abort_requested"]
    monkeypatch.delenv("OQ_USER_KEY_FILE")
    with DbClient(world, user="openquake") as admin:  # derived: this process reads the secret
        owners = {c["user_name"] for c in admin.call("list_calcs")["calcs"]}
    assert owners == {"alice", "openquake"}


def test_another_users_name_with_ones_own_key_is_refused(
    world: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_key = (tmp_path / "alice.key")
    key_file(world, "alice", tmp_path)
    secret = read_secret(secret_path(db_file(world)))
    assert secret is not None
    # alice claims to be openquake, signing with her own key (the file says "openquake")
    forged = tmp_path / "forged.key"
    forged.write_text(format_key("openquake", derive_key(secret, "alice")))
    monkeypatch.setenv("OQ_USER_KEY_FILE", str(forged))
    with DbClient(world, user="openquake") as client, pytest.raises(
        DbServerError, match=r"cannot verify that this request comes from user 'openquake'.*"
        r"sudo oqz users key openquake"
    ):
        client.call("list_calcs")
    assert alice_key.exists()


def test_a_wrong_key_is_refused_with_the_fix(
    world: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OQ_USER_KEY_FILE", str(key_file(world, "alice", tmp_path, bytes(32))))
    with DbClient(world, user="alice") as client:
        with pytest.raises(DbServerError, match="user key sent with it is missing or wrong"):
            client.call("list_calcs")
        with pytest.raises(DbServerError, match="cannot verify"):
            client.call("request_abort", calc_id=1)


def test_a_key_file_of_another_user_is_refused_by_the_client(
    world: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OQ_USER_KEY_FILE", str(key_file(world, "bob", tmp_path)))
    with DbClient(world, user="alice") as client, pytest.raises(
        DbServerError, match="is the key of user 'bob', but this process runs as 'alice'"
    ):
        client.call("list_calcs")


def test_an_old_client_is_told_to_upgrade_and_served_without_multi_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OQ_DATABASE", raising=False)
    for multi_user in (True, False):
        directory = tmp_path / str(multi_user)
        directory.mkdir()
        config = load_config(write_config(directory, multi_user=multi_user))
        server = RunningServer(config)
        try:
            request_channel, _ = channels(config)
            endpoint = f"tcp://127.0.0.1:{config.db_port}"
            sock = zap.client(zmq.Context.instance().socket(zmq.DEALER), config.authkey,
                              endpoint)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            old = {"id": 1, "cmd": "list_calcs", "user": "openquake", "args": {}}
            sock.send_multipart(Signer(config.authkey, request_channel).sign(
                [json.dumps(old).encode()]))
            assert sock.poll(5000)
            reply = json.loads(sock.recv_multipart()[-1])
            sock.close()
        finally:
            server.stop()
        if multi_user:
            assert not reply["ok"]
            assert "needs requests of version 2" in reply["error"]
            assert "re-run site.yml" in reply["error"]
        else:
            assert reply["ok"], reply


# --- the attack as it happens on a cluster: another OS account running oqz (root only) -----


@pytest.fixture
def shared_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Config, Path]]:
    """Like world, in a directory the account nobody can read (tmp_path is 0700)."""
    if os.geteuid() != 0:
        pytest.skip("runs oqz as the account nobody: needs root")
    directory = Path(tempfile.mkdtemp(prefix="oqz-identity-", dir="/var/tmp"))
    directory.chmod(0o755)
    monkeypatch.delenv("OQ_DATABASE", raising=False)
    monkeypatch.delenv("OQ_USER_KEY_FILE", raising=False)
    path = write_config(directory)
    path.chmod(0o644)
    config = load_config(path)
    server = RunningServer(config)
    try:
        with DbClient(config, user="nobody") as mine, DbClient(config, user="openquake") as admin:
            mine.call("create_calc", description="nobody's")
            admin.call("create_calc", description="openquake's")
        users = directory / "users"
        users.mkdir(mode=0o755)
        key = users / "nobody.key"
        key.write_text(format_key("nobody", derive_key(
            read_secret(secret_path(db_file(config))) or b"", "nobody")))
        os.chown(key, NOBODY, NOBODY)
        key.chmod(0o600)
        yield config, key
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# The interpreter lives under /root (0700 here): start as root, import everything `oqz` needs,
# then drop to nobody for good (real, effective and saved ids, no groups) before it runs.
AS_NOBODY = f"""
import encodings.idna, os, sys
import oqzmq.cli, oqzmq.commands.calcs, oqzmq.commands.dbserver, oqzmq.dbserver, oqzmq.identity
parser = oqzmq.cli.build_parser()
os.setgroups([])
os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
sys.exit(oqzmq.cli.main(sys.argv[1:]))
"""


def oqz_as_nobody(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ENGINE_SRC),
           "OQ_CONFIG_FILE": str(config.path), "LOGNAME": "openquake", "USER": "openquake",
           "HOME": "/nonexistent"}
    return subprocess.run([sys.executable, "-c", AS_NOBODY, *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_logname_openquake_sees_only_its_own_cannot_abort_others_nor_stop(
    shared_world: tuple[Config, Path],
) -> None:
    config, _key = shared_world
    listed = oqz_as_nobody(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    calcs = json.loads(listed.stdout)["calcs"]
    assert [c["user_name"] for c in calcs] == ["nobody"]  # positive twin: its own is there
    with DbClient(config, user="openquake") as admin:
        everything = admin.call("list_calcs")["calcs"]
    assert {c["user_name"] for c in everything} == {"nobody", "openquake"}
    theirs = next(c["id"] for c in everything if c["user_name"] == "openquake")
    aborted = oqz_as_nobody(config, "abort", str(theirs), "--wait", "1")
    assert aborted.returncode == 2
    assert f"calculation {theirs} belongs to openquake" in aborted.stderr
    stopped = oqz_as_nobody(config, "dbserver", "stop")
    assert stopped.returncode == 2
    assert "may stop the dbserver" in stopped.stderr
    with DbClient(config, user="openquake") as admin:
        assert not admin.call("get_calc", calc_id=theirs)["abort_requested"]
        assert admin.call("ping")["pid"] == os.getpid()  # still serving
    mine = next(c["id"] for c in calcs)
    own = oqz_as_nobody(config, "abort", str(mine), "--wait", "1")
    assert "belongs to" not in own.stderr  # its own: the abort is accepted
    with DbClient(config, user="openquake") as admin:
        assert admin.call("get_calc", calc_id=mine)["abort_requested"]


def test_without_a_key_file_the_error_says_how_to_get_one(
    shared_world: tuple[Config, Path],
) -> None:
    config, key = shared_world
    key.unlink()
    listed = oqz_as_nobody(config, "list")
    assert listed.returncode == 2
    assert "user nobody has no dbserver key" in listed.stderr
    assert "sudo oqz users key nobody" in listed.stderr


def test_admins_come_from_the_config(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, admins="carol,  dave root"))
    assert config.admins == ("carol", "dave", "root")
    assert Config().admins == ("openquake", "root")


def test_oqz_users_key_writes_a_key_only_its_user_reads(
    world: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from oqzmq.cli import main

    monkeypatch.setenv("OQ_CONFIG_FILE", str(world.path))
    me = os_user()
    assert main(["users", "key", me]) == 0
    assert world.path is not None
    path = world.path.parent / "users" / f"{me}.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_uid == pwd.getpwnam(me).pw_uid
    assert main(["users", "key", me, "--stdout"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == path.read_text().strip()
    monkeypatch.setenv("OQ_USER_KEY_FILE", str(path))
    with DbClient(world) as client:  # the OS user with the written key file
        assert client.call("list_calcs")["total"] >= 0
    assert main(["users", "key", "no-such-account-here"]) == 2
    assert "no account named 'no-such-account-here'" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
def test_the_users_directory_is_made_for_the_group_of_openquake_cfg(tmp_path: Path) -> None:
    """`oqz users password/key` make a missing users/ directory root:<group of
    openquake.cfg> 0750: made root:root, it hid the key of the service account itself."""
    from oqzmq.commands.users import _key_directory

    cfg = tmp_path / "openquake.cfg"
    cfg.write_text("[dbserver]\n")
    os.chown(cfg, 0, 4242)

    directory = _key_directory(cfg)

    info = directory.stat()
    assert (directory, info.st_uid, info.st_gid, info.st_mode & 0o777) == (
        tmp_path / "users", 0, 4242, 0o750)
