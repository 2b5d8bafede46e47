"""The webui application: a read-only JSON API and two HTML pages, fed by the dbserver.

JSON API (the reference engine's paths):
    /v1/calc/list                 calculations, newest first (?limit=100&offset=0&user=NAME);
                                  the header X-Total-Count gives the total
    /v1/calc/ID/status            one calculation
    /v1/calc/ID/log               its log records (?after_id=N to follow a running log)
    /v1/calc/ID/log/START:STOP    the reference engine's form: [[time, level, process, message]]
                                  for records START to STOP (a Python slice; STOP may be empty)
    /v1/calc/ID/traceback         its traceback as a list of lines ([] when none)
    /v1/calc/ID/tasks             its task timings (operation, host, seconds, memory, bytes)
    /v1/workers/status            [[host, running, total], ...] like `oqz workers status`
HTML: ``/`` (the list) and ``/calc/ID`` (log, traceback, task timing plot and table).

With a :class:`~oqzmq.webui.login.Login` (multi_user), everything but the login page and the
static files needs a session: ``/accounts/login/`` (the reference engine's path) checks the
password, ``/accounts/logout/`` ends the session; the JSON API answers 401 without one, the
pages redirect to the login. The dbserver is then asked as the user who logged in (with that
user's key), so its own filter applies: a user sees only their calculations, admins all.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from oqzmq.dbserver import DbClient, DbServerError
from oqzmq.webui.login import COOKIE, MAX_PASSWORD, Login
from oqzmq.webui.plot import task_chart

HERE = Path(__file__).parent
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_TASK_ROWS = 2_000  # rows of the task table on a page; the JSON API has them all

WorkersStatus = Callable[[], Sequence[Sequence[Any]]]
ClientFor = Callable[[str], DbClient]  # the dbserver client acting as a logged-in user
LOGIN_PATH, LOGOUT_PATH = "/accounts/login/", "/accounts/logout/"


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def public_calc(calc: dict[str, Any]) -> dict[str, Any]:
    """A calculation as the API shows it (the reference's field names where they exist)."""
    return {
        "id": calc["id"],
        "owner": calc["user_name"],
        "description": calc["description"],
        "calculation_mode": calc["calculation_mode"],
        "status": calc["status"],
        "is_running": calc["status"] in {"created", "submitted", "executing"},
        "abort_requested": calc["abort_requested"],
        "host": calc["host"],
        "pid": calc["pid"],
        "created": iso(calc["created"]),
        "start_time": iso(calc["start_time"]),
        "stop_time": iso(calc["stop_time"]),
        "duration": calc["duration"],
        "has_traceback": calc["has_traceback"],
        "datastore": calc["datastore"],
    }


def _int_param(request: Request, name: str, default: int, maximum: int = MAX_LIMIT) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, got {raw!r}") from None
    if not 0 <= value <= maximum:
        raise HTTPException(400, f"{name} must be between 0 and {maximum}, got {value}")
    return value


def _calc_id(request: Request) -> int:
    return int(request.path_params["calc_id"])


class WebUI:
    """The endpoints, holding one dbserver client (thread-safe) for all requests."""

    def __init__(self, client: DbClient, workers_status: WorkersStatus | None = None,
                 login: Login | None = None, client_for: ClientFor | None = None) -> None:
        self.client = client
        self.workers_status = workers_status
        self.login = login
        self.client_for = client_for
        self._clients: dict[str, DbClient] = {}
        self._clients_lock = threading.Lock()
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.templates.env.filters["duration"] = format_duration
        self.templates.env.filters["when"] = format_when
        self.templates.env.filters["stamp"] = format_stamp

    def client_of(self, request: Request) -> DbClient:
        """The client of this request: as its logged-in user, or the webui's own."""
        user = request.scope.get("oqz_user")
        if self.login is None or not isinstance(user, str):
            return self.client
        with self._clients_lock:
            if user not in self._clients:
                assert self.client_for is not None
                self._clients[user] = self.client_for(user)
            return self._clients[user]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def call(self, request: Request, cmd: str, **args: Any) -> Any:
        try:
            return self.client_of(request).call(cmd, **args)
        except DbServerError as exc:
            text = str(exc)
            status = 404 if "there is no calculation" in text else 503
            status = 403 if "belongs to" in text else status
            raise HTTPException(status, text) from exc

    def list_calcs(self, request: Request) -> tuple[list[dict[str, Any]], int]:
        answer = self.call(
            request, "list_calcs",
            limit=_int_param(request, "limit", DEFAULT_LIMIT),
            offset=_int_param(request, "offset", 0, maximum=2**62),
            owner=request.query_params.get("user") or None,
        )
        return [public_calc(c) for c in answer["calcs"]], int(answer["total"])

    # JSON API

    def api_list(self, request: Request) -> Response:
        calcs, total = self.list_calcs(request)
        return JSONResponse(calcs, headers={"X-Total-Count": str(total)})

    def api_status(self, request: Request) -> Response:
        return JSONResponse(public_calc(self.call(request, "get_calc", calc_id=_calc_id(request))))

    def api_log(self, request: Request) -> Response:
        after_id = _int_param(request, "after_id", 0, maximum=2**62)
        return JSONResponse(
            self.call(request, "get_logs", calc_id=_calc_id(request), after_id=after_id))

    def api_log_slice(self, request: Request) -> Response:
        start_text, _, stop_text = str(request.path_params["span"]).partition(":")
        try:
            span = slice(int(start_text or 0), int(stop_text) if stop_text else None)
        except ValueError:
            raise HTTPException(400, "use /log/START:STOP with integers, e.g. /log/0:100") from None
        records = self.call(request, "get_logs", calc_id=_calc_id(request))[span]
        return JSONResponse(
            [[format_stamp(r["timestamp"]), r["level"], r["process"], r["message"]]
             for r in records]
        )

    def api_traceback(self, request: Request) -> Response:
        text = self.call(request, "get_traceback", calc_id=_calc_id(request)) or ""
        return JSONResponse(text.splitlines())

    def api_tasks(self, request: Request) -> Response:
        return JSONResponse(self.call(request, "get_tasks", calc_id=_calc_id(request)))

    def api_workers(self, request: Request) -> Response:
        if self.workers_status is None:
            raise HTTPException(503, "this webui was started without access to the workerpools")
        try:
            rows = self.workers_status()
        except Exception as exc:  # any failure to reach the pools is reported, not a 500
            raise HTTPException(503, f"cannot ask the workerpools: {exc}") from exc
        return JSONResponse([list(row) for row in rows])

    # HTML pages

    def page_list(self, request: Request) -> Response:
        calcs, total = self.list_calcs(request)
        return self.templates.TemplateResponse(
            request, "list.html",
            {"calcs": calcs, "total": total, "now": _now(),
             "user": request.scope.get("oqz_user")},
        )

    def page_calc(self, request: Request) -> Response:
        calc_id = _calc_id(request)
        calc = public_calc(self.call(request, "get_calc", calc_id=calc_id))
        records = self.call(request, "get_logs", calc_id=calc_id)
        tasks = self.call(request, "get_tasks", calc_id=calc_id)
        traceback = (self.call(request, "get_traceback", calc_id=calc_id)
                     if calc["has_traceback"] else "")
        context = {
            "calc": calc,
            "records": records,
            "tasks": tasks[:MAX_TASK_ROWS],
            "total_tasks": len(tasks),
            "chart": task_chart(tasks),
            "traceback": traceback,
            "now": _now(),
            "user": request.scope.get("oqz_user"),
        }
        return self.templates.TemplateResponse(request, "calc.html", context)


    # login (multi_user)

    def login_page(self, request: Request, error: str = "", status: int = 200,
                   name: str = "") -> Response:
        context = {"now": _now(), "error": error, "name": name,
                   "next": _safe_next(request.query_params.get("next"))}
        return self.templates.TemplateResponse(request, "login.html", context,
                                               status_code=status)

    async def page_login(self, request: Request) -> Response:
        if self.login is None:
            return RedirectResponse("/", status_code=303)
        if request.method == "GET":
            return self.login_page(request)
        body = await request.body()
        if len(body) > 4 * MAX_PASSWORD:
            raise HTTPException(413, "the login form is too large")
        form = parse_qs(body.decode("utf-8", "replace"))
        name = (form.get("username") or [""])[0].strip()
        password = (form.get("password") or [""])[0]
        login = self.login
        ok = await run_in_threadpool(login.check, name, password)
        if not ok:
            return self.login_page(request, "Wrong user name or password.", 401, name)
        target = _safe_next((form.get("next") or [""])[0])
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, login.issue(name), max_age=login.seconds, httponly=True,
                            samesite="strict", path="/")
        return response

    async def page_logout(self, request: Request) -> Response:
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def guard(self, endpoint: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Any]]:
        """``endpoint`` for logged-in users only (when there is a login)."""

        async def guarded(request: Request) -> Response:
            if self.login is not None:
                user = self.login.user(request.cookies.get(COOKIE))
                if user is None:
                    if request.url.path.startswith("/v1/"):
                        return JSONResponse({"error": "log in first: POST username and "
                                             f"password to {LOGIN_PATH}"}, status_code=401,
                                            headers={"WWW-Authenticate": "Cookie"})
                    target = request.url.path + (f"?{request.url.query}"
                                                 if request.url.query else "")
                    return RedirectResponse(f"{LOGIN_PATH}?next={quote(target)}",
                                            status_code=303)
                request.scope["oqz_user"] = user
            return await run_in_threadpool(endpoint, request)

        return guarded


def _safe_next(target: str | None) -> str:
    """Where to go after the login: a path of this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_when(iso_text: str | None) -> str:
    if not iso_text:
        return "-"
    return iso_text.replace("T", " ").replace("+00:00", " UTC")


def format_stamp(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/v1/"):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    body = (
        f"<!doctype html><title>oqz webui: error {exc.status_code}</title>"
        f"<h1>Error {exc.status_code}</h1><p>{html.escape(str(exc.detail))}</p>"
        '<p><a href="/">All calculations</a></p>'
    )
    return Response(body, status_code=exc.status_code, media_type="text/html")


SECURITY_HEADERS = {
    # scripts and styles only from this server (the legend's colours are inline styles)
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(client: DbClient, workers_status: WorkersStatus | None = None,
               login: Login | None = None, client_for: ClientFor | None = None) -> Starlette:
    """The app; with ``login`` (multi_user) a session is needed and ``client_for(user)``
    gives the dbserver client acting as that user."""
    if login is not None and client_for is None:
        raise ValueError("a webui with a login needs client_for (the dbserver as the user)")
    ui = WebUI(client, workers_status, login, client_for)
    calc = "/v1/calc/{calc_id:int}"
    guard = ui.guard
    routes = [
        Route("/", guard(ui.page_list), name="list"),
        Route("/calc/{calc_id:int}", guard(ui.page_calc), name="calc"),
        Route("/v1/calc/list", guard(ui.api_list)),
        Route(f"{calc}/status", guard(ui.api_status)),
        Route(f"{calc}/log", guard(ui.api_log)),
        Route(f"{calc}/log/{{span}}", guard(ui.api_log_slice)),
        Route(f"{calc}/traceback", guard(ui.api_traceback)),
        Route(f"{calc}/tasks", guard(ui.api_tasks)),
        Route("/v1/workers/status", guard(ui.api_workers)),
        Route(LOGIN_PATH, ui.page_login, methods=["GET", "POST"], name="login"),
        Route(LOGOUT_PATH, ui.page_logout, methods=["POST"], name="logout"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        middleware=[Middleware(SecurityHeaders)],
    )
    app.state.webui = ui
    return app
