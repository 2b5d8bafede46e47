"""Run the webui in the foreground (systemd ``Type=notify``), until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import uvicorn

from oqzmq.config import Config
from oqzmq.dbserver import DbClient
from oqzmq.sdnotify import notify
from oqzmq.webui.app import WorkersStatus, create_app

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


def serve(
    config: Config,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers_status: WorkersStatus | None = None,
) -> bool:
    """Serve until a stop signal; False when the server could not start (port taken...)."""
    client = DbClient(config, timeout=5.0, user=None)
    app = create_app(client, workers_status)
    server = NotifyingServer(
        uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                       timeout_graceful_shutdown=5)
    )
    log.info("webui on http://%s:%d, reading %s", host, port, client.where)
    try:
        server.run()
    finally:
        client.close()
    return server.started
