"""Run the webui in the foreground (systemd ``Type=notify``), until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import uvicorn

from oqzmq.config import Config
from oqzmq.dbserver import DbClient, db_file
from oqzmq.errors import UserError
from oqzmq.identity import derive_key, read_secret, secret_path
from oqzmq.sdnotify import notify
from oqzmq.webui.app import ClientFor, WorkersStatus, create_app
from oqzmq.webui.login import Login, passwd_path, session_key

log = logging.getLogger("oqzmq.webui")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8800


class NotifyingServer(uvicorn.Server):
    """uvicorn's server, telling systemd once the socket is bound and when stopping."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            notify("READY=1")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            # uvicorn re-raises captured signals after the graceful shutdown; a stop asked by
            # systemd should end with status 0 like the dbserver, not as killed by SIGTERM
            self._captured_signals.remove(sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        notify("STOPPING=1")
        await super().shutdown(sockets)


def login_for(config: Config) -> tuple[Login, ClientFor] | None:
    """multi_user: the login (password file beside openquake.cfg, sessions signed under a
    key derived from the dbserver's user secret) and the dbserver client acting as a logged-in
    user (with that user's key, derived from the same secret). None without multi_user."""
    if not config.multi_user:
        return None
    path = secret_path(db_file(config))
    secret = read_secret(path)
    if secret is None:
        raise UserError(f"multi_user: the webui needs the dbserver's user secret {path} "
                        "(to sign sessions and ask as the user who logged in): run the webui "
                        "as the dbserver's account, after the dbserver started once")

    def client_for(user: str) -> DbClient:
        return DbClient(config, timeout=5.0, user=user, user_key=derive_key(secret, user))

    return Login(passwd_path(config.path), session_key(secret)), client_for


def serve(
    config: Config,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers_status: WorkersStatus | None = None,
) -> bool:
    """Serve until a stop signal; False when the server could not start (port taken...)."""
    login = login_for(config)
    client = DbClient(config, timeout=5.0, user=None)
    app = create_app(client, workers_status, *(login or (None, None)))
    server = NotifyingServer(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                       timeout_graceful_shutdown=5)
    )
    log.info("webui on http://%s:%d, reading %s, login %s", host, port, client.where,
             f"required (passwords in {login[0].passwd})" if login else "off (not multi_user)")
    try:
        server.run()
    finally:
        app.state.webui.close()
        client.close()
    return server.started
