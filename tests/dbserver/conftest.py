"""Fixtures: a private openquake.cfg and a dbserver running in a thread on a free port."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from oqzmq.config import Config, load_config
from oqzmq.dbserver import DbServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(
    directory: Path, authkey: str | None = None, multi_user: bool = False, port: int | None = None
) -> Path:
    path = directory / "openquake.cfg"
    path.write_text(
        "[distribution]\noq_distribute = no\n\n"
        "[dbserver]\n"
        f"multi_user = {'true' if multi_user else 'false'}\n"
        f"file = {directory / 'db' / 'db.sqlite3'}\n"
        "listen = 127.0.0.1\nhost = 127.0.0.1\n"
        f"port = {port or free_port()}\n"
        f"authkey = {authkey or secrets.token_urlsafe(24)}\n"
    )
    return path


@pytest.fixture
def unused_port():
    """A function returning a TCP port free on 127.0.0.1 right now."""
    return free_port


@pytest.fixture
def make_config(tmp_path: Path):
    """Write another openquake.cfg (own directory) and return its path."""
    counter = iter(range(1, 1000))

    def make(**kwargs: object) -> Path:
        directory = tmp_path / f"cfg{next(counter)}"
        directory.mkdir()
        return write_config(directory, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def cfg_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_config(tmp_path)
    monkeypatch.setenv("OQ_CONFIG_FILE", str(path))
    monkeypatch.delenv("OQ_DATABASE", raising=False)
    return path


@pytest.fixture
def config(cfg_path: Path) -> Config:
    return load_config(cfg_path)


class RunningServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.server = DbServer(config)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the dbserver thread did not stop"


@pytest.fixture
def dbserver(config: Config) -> Iterator[RunningServer]:
    running = RunningServer(config)
    yield running
    running.stop()
