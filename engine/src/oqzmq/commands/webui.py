"""``oqz webui start``: the optional web interface (JSON API + HTML pages), port 8800."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from oqzmq.commands import add_service
from oqzmq.config import Config, load_config
from oqzmq.errors import UserError

INSTALL_HINT = "pip install 'oq-zmq-engine[webui]' (it adds starlette, uvicorn and jinja2)"


def register(subparsers: argparse._SubParsersAction) -> None:
    _, start = add_service(
        subparsers,
        "webui",
        help="run the web interface (calculation list, logs, task timings; JSON API)",
        description="A read-only web interface on the dbserver's records. Bind it to the "
        "cluster network only. With multi_user it asks for a login (passwords set by "
        "`oqz users password USER`) and shows each user only their calculations.",
    )
    start.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    start.add_argument("--port", type=int, default=8800, help="port (8800)")
    start.set_defaults(handler=run_start)


def run_start(args: argparse.Namespace) -> int:
    try:
        from oqzmq.webui.server import serve
    except ImportError as exc:
        raise UserError(f"the webui needs {exc.name}: {INSTALL_HINT}") from exc
    config = load_config()
    started = serve(config, args.host, args.port, workers_status_source(config))
    return 0 if started else 1


def workers_status_source(config: Config) -> Callable[[], list[tuple[str, int | None, int | None]]]:
    """What ``/v1/workers/status`` answers: (host, running, total) per workerpool of
    ``[zworkers] host_cores``, None for a pool that does not answer (as `oqz workers status`)."""

    def workers_status() -> list[tuple[str, int | None, int | None]]:
        if not config.host_cores:
            return []
        from oqzmq import launcher
        from oqzmq.protocol import StatusQuery

        replies = launcher.query_pools(config, StatusQuery(), timeout=3.0)
        return [
            (host, reply.running, reply.total) if reply else (host, None, None)
            for host, reply in replies.items()
        ]

    return workers_status
