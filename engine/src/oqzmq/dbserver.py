"""The dbserver: the master's single gateway to the calculation database.

Protocol: a zmq ROUTER socket on ``[dbserver] listen``:``port``. Every request and every
reply is one JSON frame signed with :mod:`oqzmq.auth` (a MAC keyed from ``[dbserver]
authkey``, with replay protection); nothing is unpickled, and a message that fails
authentication is logged and answered only with a fixed, unsigned refusal so that a client
holding the wrong key gets a clear error instead of a timeout. An authentic request refused for
its timestamp (sent before this dbserver started, or from a clock too far ahead: see "Replays"
in :mod:`oqzmq.auth`) is answered with a signed reply naming the refused message's header
(``"refused"``) and whether it may be signed again (``"retry"``): the client does so at once,
so its first request after a restart costs at most ``MAX_CLOCK_SKEW`` seconds more.

Request (version 2), two frames under the cluster MAC: the JSON object
``{"v": 2, "id": N, "cmd": "list_calcs", "user": "alice", "args": {...}}`` and the user MAC
(:mod:`oqzmq.identity`: HMAC-SHA256 under alice's own key over the cluster MAC's header and
the JSON frame). Version 1 (one JSON frame, no "v", no user MAC) is still served when
multi_user is off, and refused with the fix (upgrade the client) when it is on.
Reply: ``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false, "error": "..."}``.

With ``OQ_DATABASE=local`` the client runs the same actions in-process on the SQLite file
(single machine, no server), like the reference engine's ``OQ_DATABASE=local``.

``multi_user``: users see and change only their own calculations; the users of ``[dbserver]
admins`` see all. The user name a request states counts only if the request carries that
user's MAC (the key only that user, root and the dbserver's account can read): setting
LOGNAME/USER changes nothing. See :mod:`oqzmq.identity` and engine/README.md "Identity".
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from oqzmq import __version__, zap
from oqzmq.auth import MAX_CLOCK_SKEW, AuthError, Signer, StampError, Verifier
from oqzmq.config import Config
from oqzmq.db import Calc, CalcDB, DbError, TaskTiming
from oqzmq.errors import UserError
from oqzmq.identity import (
    REQUEST_VERSION,
    UserKeyError,
    derive_key,
    load_or_create_secret,
    load_user_key,
    os_user,
    request_mac,
    secret_path,
)

log = logging.getLogger("oqzmq.dbserver")

DEFAULT_DB_FILE = "~/oqdata/db.sqlite3"
REFUSAL = b"oqzmq-dbserver: authentication failed"
START_HINT = "start it with `oqz dbserver start` (or `systemctl start openquake-dbserver`)"
MAX_LIST = 10_000
# zmq drops larger messages before we see them: an unauthenticated peer cannot make the
# dbserver buffer gigabytes. Clients send logs in batches far below this.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RETRY_SECONDS = 0.05  # a request refused as stamped too early is signed and sent again
SWEEP_SECONDS = 2.0  # how often active calculations whose process is gone are marked failed
# A calculation running on another host ships its logs every 0.5 s: this long without a word
# from it, its process is taken for dead (its pid cannot be checked from here).
REMOTE_SILENCE = float(os.environ.get("OQ_CALC_SILENCE", "120"))


def message_cap(config: Config) -> int:
    """The dbserver's cap: [zworkers] max_message_mb, but never over MAX_MESSAGE_BYTES."""
    return min(MAX_MESSAGE_BYTES, config.max_message_bytes)


class DbServerError(UserError):
    """The dbserver is unreachable, refused us, or could not honour a request."""


class DbServerUnreachable(DbServerError):
    """Nothing answers at the dbserver's address (down, restarting, network): worth a retry."""


def db_file(config: Config) -> Path:
    """The SQLite file of ``[dbserver] file`` (the reference engine's default when unset)."""
    return Path(config.db_file or DEFAULT_DB_FILE).expanduser()


def channels(config: Config) -> tuple[str, str]:
    """MAC channels of requests and replies. By port, not address: listen may be 0.0.0.0."""
    return f"dbserver:{config.db_port}", f"dbserver-reply:{config.db_port}"


def current_user() -> str:
    """This process's account, from the OS (never LOGNAME/USER)."""
    return os_user()


# actions: what the dbserver can do, independent of the transport


class Forbidden(DbError):
    """A user asked for another user's calculation in a multi_user cluster."""


@dataclass
class Actions:
    """Runs one request against the database, enforcing multi_user ownership."""

    db: CalcDB
    multi_user: bool = False
    on_stop: Callable[[], None] | None = None
    server_user: str = ""
    admins: tuple[str, ...] = ("openquake", "root")
    heard: dict[int, float] = field(default_factory=dict)  # calc id -> its process last spoke

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        request_id = request.get("id")
        try:
            cmd, user, args = _parse_request(request)
            action = getattr(self, f"do_{cmd}", None)
            if action is None:
                raise DbError(f"unknown command {cmd!r}: this dbserver is oqz {__version__}")
            result = action(user, **args)
        except (TypeError, ValueError) as exc:
            return {"id": request_id, "ok": False, "error": f"bad arguments: {exc}"}
        except DbError as exc:
            return {"id": request_id, "ok": False, "error": str(exc)}
        except sqlite3.Error as exc:
            log.exception("database error on %r", request.get("cmd"))
            return {"id": request_id, "ok": False, "error": f"database error: {exc}"}
        return {"id": request_id, "ok": True, "result": result}

    def _sees_all(self, user: str) -> bool:
        return not self.multi_user or user in self.admins

    def _owned(self, user: str, calc_id: int) -> Calc:
        calc = self.db.get_calc(int(calc_id))
        if not self._sees_all(user) and calc.user_name != user:
            raise Forbidden(
                f"calculation {calc.id} belongs to {calc.user_name}: in a multi_user cluster "
                "you can only see and change your own calculations"
            )
        return calc

    def do_ping(self, user: str) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "db": str(self.db.path),
            "multi_user": self.multi_user,
            "user": user,
        }

    def do_stop(self, user: str) -> str:
        if user not in {"root", self.server_user} or self.on_stop is None:
            raise Forbidden(f"only root or {self.server_user or 'its owner'} may stop the dbserver")
        self.on_stop()
        return "stopping"

    def do_create_calc(
        self,
        user: str,
        description: str = "",
        calculation_mode: str = "",
        host: str = "",
        pid: int = 0,
    ) -> dict[str, Any]:
        calc = self.db.create_calc(user, description, calculation_mode, host, int(pid))
        return calc.to_json()

    def do_get_calc(self, user: str, calc_id: int) -> dict[str, Any]:
        return self._owned(user, calc_id).to_json()

    def do_list_calcs(
        self, user: str, limit: int = 100, offset: int = 0, owner: str | None = None
    ) -> dict[str, Any]:
        if not self._sees_all(user):
            owner = user
        limit = max(0, min(int(limit), MAX_LIST))
        calcs = self.db.list_calcs(owner, limit, int(offset))
        return {"total": self.db.count_calcs(owner), "calcs": [c.to_json() for c in calcs]}

    def do_set_status(self, user: str, calc_id: int, status: str) -> dict[str, Any]:
        self._owned(user, calc_id)
        return self.db.set_status(int(calc_id), status).to_json()

    def do_request_abort(self, user: str, calc_id: int) -> dict[str, Any]:
        self._owned(user, calc_id)
        return self.db.request_abort(int(calc_id)).to_json()

    def do_add_logs(self, user: str, calc_id: int, records: list[list[Any]]) -> dict[str, Any]:
        calc = self._owned(user, calc_id)
        self.heard[calc.id] = time.monotonic()
        added = self.db.add_logs(calc.id, records)
        # the reply doubles as the abort channel of the running calculation
        return {"added": added, "abort_requested": self.db.get_calc(calc.id).abort_requested}

    def do_get_logs(
        self, user: str, calc_id: int, after_id: int = 0, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        calc = self._owned(user, calc_id)
        limit = max(0, min(int(limit), MAX_LIST))
        return [r.to_json() for r in self.db.get_logs(calc.id, int(after_id), limit)]

    def do_set_traceback(self, user: str, calc_id: int, traceback: str) -> None:
        self.db.set_traceback(self._owned(user, calc_id).id, str(traceback))

    def do_get_traceback(self, user: str, calc_id: int) -> str | None:
        return self._owned(user, calc_id).traceback

    def do_set_datastore(self, user: str, calc_id: int, datastore: str) -> None:
        self.db.set_datastore(self._owned(user, calc_id).id, str(datastore))

    def do_add_tasks(self, user: str, calc_id: int, tasks: list[dict[str, Any]]) -> int:
        calc = self._owned(user, calc_id)
        try:
            timings = [TaskTiming(**task) for task in tasks]
        except TypeError as exc:
            fields = ", ".join(TaskTiming.__dataclass_fields__)
            raise DbError(f"a task timing has the fields {fields}: {exc}") from exc
        return self.db.add_tasks(calc.id, timings)

    def do_get_tasks(self, user: str, calc_id: int) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.db.get_tasks(self._owned(user, calc_id).id)]

    def do_blocking_calcs(self, user: str, calc_id: int, serialize_jobs: int) -> list[int]:
        """Ids of the older active calculations that calc_id must wait for (serialize_jobs)."""
        calc = self._owned(user, calc_id)
        self.heard[calc.id] = time.monotonic()
        if int(serialize_jobs) <= 0:
            return []
        older = [c for c in self.db.active_calcs() if c.id < calc.id]
        older = [c.id for c in older if not self._failed_if_dead(c)]
        # at most serialize_jobs calculations run at once, first come first served
        return older if len(older) >= int(serialize_jobs) else []

    def sweep_dead(self) -> None:
        """Mark failed the active calculations whose process is gone: on this host its pid
        is checked, on another host REMOTE_SILENCE s without a word from it is death."""
        now = time.monotonic()
        for calc in self.db.active_calcs():
            if not calc.host:  # recorded by a client that did not say where it runs
                continue
            if calc.host == socket.gethostname():
                self._failed_if_dead(calc)
            elif now - self.heard.setdefault(calc.id, now) > REMOTE_SILENCE:
                self._mark_failed(calc, (
                    f"the process {calc.pid} running calculation {calc.id} on {calc.host} has "
                    f"not contacted the dbserver for {REMOTE_SILENCE:.0f} s (killed, out of "
                    "memory, host down): marked failed by the dbserver"))

    def _failed_if_dead(self, calc: Calc) -> bool:
        """Mark failed an active calculation whose process on this host is gone (killed,
        crashed): it would otherwise hold the serialize_jobs queue forever."""
        if calc.host != socket.gethostname() or calc.pid <= 0 or pid_alive(calc.pid):
            return False
        self._mark_failed(calc, (
            f"the process {calc.pid} running calculation {calc.id} on {calc.host} is gone "
            "(killed, out of memory or crashed): marked failed by the dbserver"))
        return True

    def _mark_failed(self, calc: Calc, reason: str) -> None:
        log.warning("%s", reason)
        # in the calculation's own log too, where `oqz show log` and the webui look first
        self.db.add_logs(calc.id, [(time.time(), "CRITICAL", "dbserver", reason)])
        self.db.set_traceback(calc.id, reason)
        self.db.set_status(calc.id, "failed")
        self.heard.pop(calc.id, None)


def pid_alive(pid: int) -> bool:
    """Whether process pid exists on this host (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _parse_request(request: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    cmd, user, args = request.get("cmd"), request.get("user"), request.get("args", {})
    if not isinstance(cmd, str) or not isinstance(user, str) or not isinstance(args, dict):
        raise DbError('a request needs "cmd" (string), "user" (string) and "args" (object)')
    if not user:
        raise DbError("the request does not name its user")
    return cmd, user, args


# the server


class DbServer:
    """Serves :class:`Actions` on a ROUTER socket until :meth:`stop` (or SIGTERM/SIGINT)."""

    POLL_MS = 200

    def __init__(self, config: Config, db_path: Path | None = None, *,
                 skew: float = MAX_CLOCK_SKEW) -> None:
        """``skew``: see :class:`oqzmq.auth.Verifier` (the first ``skew`` seconds after the
        bind are refused); tests that are not about replays give it a smaller one."""
        authkey = config.require_authkey()
        self.config = config
        self.address = f"tcp://{config.db_listen}:{config.db_port}"
        request_channel, reply_channel = channels(config)
        self._signer = Signer(authkey, reply_channel)
        self._stopping = threading.Event()
        self._db = CalcDB(db_path or db_file(config))
        # multi_user: the secret every user's key derives from (created on first start)
        self._secret = (load_or_create_secret(secret_path(self._db.path))
                        if config.multi_user else b"")
        self.actions = Actions(self._db, config.multi_user, self.stop, current_user(),
                               admins=config.admins)
        self._context = zmq.Context()
        self._socket = self._bind()
        # created once the port is ours: the previous dbserver is gone (see oqzmq.auth)
        self._verifier = Verifier(authkey, request_channel, service=True, skew=skew)

    def _bind(self) -> zmq.Socket:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, message_cap(self.config))
        try:
            zap.bind(sock, self.config.require_authkey(), f"the dbserver {self.address}",
                     self.address)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._context.term()
            self._db.close()
            raise DbServerError(
                f"cannot listen on {self.address}: {exc.strerror}. Is a dbserver already "
                "running (`oqz dbserver status`)? Otherwise check [dbserver] listen/port in "
                f"{self.config.source}"
            ) from exc
        return sock

    def stop(self) -> None:
        self._stopping.set()

    def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        # requests stamped before this instant are refused (a replay from before a restart)
        self._stopping.wait(max(0.0, self._verifier.not_before - time.time()))
        log.info("dbserver %s listening on %s, database %s (multi_user=%s)",
                 __version__, self.address, self._db.path, self.config.multi_user)
        if ready is not None:
            ready()
        last_sweep = time.monotonic()
        try:
            while not self._stopping.is_set():
                if self._socket.poll(self.POLL_MS):
                    self._serve_one(self._socket.recv_multipart(copy=False))
                if time.monotonic() - last_sweep >= SWEEP_SECONDS:
                    last_sweep = time.monotonic()
                    self._sweep()
        finally:
            self.close()
            log.info("dbserver stopped")

    def _sweep(self) -> None:
        try:
            self.actions.sweep_dead()
        except (DbError, sqlite3.Error):
            log.exception("cannot check the active calculations")

    def close(self) -> None:
        self._socket.close(linger=1000)
        self._context.term()
        self._db.close()

    def _serve_one(self, message: list[zmq.Frame]) -> None:
        identity, frames = message[0], message[1:]
        try:
            payload = self._verifier.verify(frames)
        except AuthError as exc:
            peer = _peer_address(message[-1])
            log.warning("refused a message from %s: %s", peer, exc)
            refusal = self._stamp_refusal(exc) if isinstance(exc, StampError) else [REFUSAL]
            self._socket.send_multipart([identity, *refusal])
            return
        reply = self._reply_to(bytes(frames[1]), payload)
        self._socket.send_multipart([identity, *self._signer.sign([reply])])

    def _stamp_refusal(self, exc: StampError) -> list[Any]:
        """A signed answer to an authentic request refused for its timestamp, tied to that
        message (``refused``: its header), so its client knows whether to sign it again."""
        try:
            request = json.loads(bytes(exc.frames[0]))
            request_id = request.get("id") if isinstance(request, dict) else None
        except (ValueError, IndexError):
            request_id = None
        response = {"id": request_id, "ok": False, "retry": exc.retry,
                    "refused": exc.header.hex(), "error": f"refused our request: {exc}"}
        return self._signer.sign([json.dumps(response).encode()])

    def _reply_to(self, header: bytes, payload: list[memoryview]) -> bytes:
        try:
            request = json.loads(bytes(payload[0])) if payload else None
        except ValueError:
            request = None
        if not isinstance(request, dict):
            response = {"id": None, "ok": False, "error": BAD_REQUEST}
        else:
            error = self._identity_error(request, header, payload)
            response = ({"id": request.get("id"), "ok": False, "error": error} if error
                        else self.actions.handle(request))
        return json.dumps(response).encode()

    def _identity_error(self, request: dict[str, Any], header: bytes,
                        payload: list[memoryview]) -> str | None:
        """Why the request is refused (wrong version, user MAC missing or wrong), or None."""
        version = request.get("v", 1)
        if version == 1 and len(payload) == 1:
            if not self.config.multi_user:
                return None  # as before per-user keys: the name is the client's word
            return (f"this dbserver (oqz {__version__}, multi_user) needs requests of version "
                    f"{REQUEST_VERSION}, which carry the user's own key; the client is an older "
                    "oq-zmq-engine: install the same release on this host (re-run site.yml)")
        if version != REQUEST_VERSION or len(payload) != 2:
            return (f"unknown request version {version!r} with {len(payload)} frame(s): this "
                    f"dbserver is oqz {__version__} (version {REQUEST_VERSION}); install the "
                    "same oq-zmq-engine release on every host")
        user = request.get("user")
        if not self.config.multi_user or request.get("cmd") == "ping":
            return None  # ping acts as nobody: `oqz dbserver status` works without a key
        if not isinstance(user, str) or not user:
            return "the request does not name its user"
        expected = request_mac(derive_key(self._secret, user), header, payload[0])
        if not hmac.compare_digest(expected, bytes(payload[1])):
            log.warning("refused a request as user %r: its user MAC does not match", user)
            return (f"the dbserver cannot verify that this request comes from user {user!r}: "
                    "the user key sent with it is missing or wrong (another user's, another "
                    "cluster's, or issued before the dbserver's secret was replaced). Ask an "
                    f"administrator for a new key: `sudo oqz users key {user}` on the master")
        return None


BAD_REQUEST = "a request is one JSON object frame"


def _peer_address(frame: zmq.Frame) -> str:
    try:
        return frame.get("Peer-Address")
    except (zmq.ZMQError, AttributeError):
        return "an unknown peer"


def serve(config: Config, db_path: Path | None = None) -> None:
    """Run the dbserver in the foreground until SIGTERM or SIGINT: what systemd starts."""
    from oqzmq.sdnotify import notify

    server = DbServer(config, db_path)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        notify("STOPPING=1")
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve_forever(ready=lambda: notify("READY=1"))


# the client


class DbClient:
    """Calls the dbserver (or, with ``OQ_DATABASE=local``, the database directly).

    Thread-safe: calls are serialised, which also keeps the signed counters in order.
    """

    def __init__(
        self, config: Config, timeout: float = 10.0, user: str | None = None,
        user_key: bytes | None = None,
    ) -> None:
        self.config = config
        self.timeout = timeout
        # the OS account, never LOGNAME/USER; an explicit user (tests, tools) needs that
        # user's key file or the dbserver's secret, or its key given (the webui derives the
        # key of the user who logged in)
        self.user = user or current_user()
        self._user_key: bytes | None = user_key
        self.address = f"tcp://{config.db_host}:{config.db_port}"
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._local: Actions | None = None
        self._socket: zmq.Socket | None = None
        self._handshake: zmq.Socket  # the monitor of _socket (zap.watch_handshake)
        if os.environ.get("OQ_DATABASE") == "local":
            self._local = Actions(CalcDB(db_file(config)), config.multi_user,
                                  admins=config.admins)
            return
        authkey = self._authkey = config.require_authkey()
        request_channel, reply_channel = channels(config)
        self._signer = Signer(authkey, request_channel)
        self._verifier = Verifier(authkey, reply_channel)
        self._context = zmq.Context.instance()

    @property
    def where(self) -> str:
        if self._local is not None:
            return f"the local database {self._local.db.path} (OQ_DATABASE=local)"
        return f"the dbserver at {self.address}"

    def call(self, cmd: str, **args: Any) -> Any:
        request = {"v": REQUEST_VERSION, "id": next(self._ids), "cmd": cmd, "user": self.user,
                   "args": args}
        with self._lock:
            if self._local is not None:
                response = self._local.handle(request)
            else:
                response = self._exchange(request)
        if not response.get("ok"):
            error = response.get("error")
            if error == BAD_REQUEST:
                error = (f"it does not understand requests of version {REQUEST_VERSION} (per-user "
                         "keys): it is an older oq-zmq-engine than this client; install the "
                         "same release on the master and restart the dbserver (re-run site.yml)")
            raise DbServerError(f"{self.where}: {error}")
        return response.get("result")

    def _key(self, cmd: str) -> bytes | None:
        """This user's key when the dbserver checks it (multi_user), loaded once."""
        if not self.config.multi_user or cmd == "ping":
            return None
        if self._user_key is None:
            try:
                self._user_key = load_user_key(self.config.path, db_file(self.config), self.user)
            except UserKeyError as exc:
                raise DbServerError(f"{self.where}: {exc}") from None
        return self._user_key

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None
            if self._local is not None:
                self._local.db.close()

    def __enter__(self) -> DbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connected(self) -> zmq.Socket:
        if self._socket is None:
            self._probe()
            sock = zap.client(self._context.socket(zmq.DEALER), self._authkey, self.address)
            self._handshake = zap.watch_handshake(sock)
            sock.setsockopt(zmq.LINGER, 0)
            # no connection to send on (refused at the handshake: see _send): do not block
            sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout * 1000)))
            sock.setsockopt(zmq.MAXMSGSIZE, message_cap(self.config))
            sock.connect(self.address)
            self._socket = sock
        return self._socket

    def _probe(self) -> None:
        """Fail at once when nothing listens: zmq itself would only wait for the timeout."""
        try:
            with socket.create_connection(
                (self.config.db_host, self.config.db_port), timeout=min(self.timeout, 3.0)
            ):
                pass
        except ConnectionRefusedError:
            raise DbServerUnreachable(
                f"the dbserver is not running: nothing listens on {self.address}; "
                f"{START_HINT}. Its address comes from [dbserver] host/port in "
                f"{self.config.source}"
            ) from None
        except OSError:
            pass  # unreachable or slow network: the request's own timeout reports it

    def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        key = self._key(request["cmd"])
        sock = self._connected()
        body = json.dumps(request).encode()
        sent = self._send(sock, body, key)
        deadline = time.monotonic() + self.timeout
        refusal: dict[str, Any] | None = None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._handshake, zmq.POLLIN)
        while (remaining := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(int(remaining * 1000) + 1))
            if not ready:
                break
            if self._handshake in ready:
                self._check_handshake()
            if sock not in ready:
                continue
            response = self._read_reply(sock.recv_multipart())
            refused = response.get("refused", sent)
            if refused == sent and response.get("retry"):
                # a dbserver that has just (re)started: this very message was not run
                refusal = response
                time.sleep(min(RETRY_SECONDS, max(0.0, deadline - time.monotonic())))
                sent = self._send(sock, body, key)
            elif refused == sent and response.get("id") == request["id"]:
                return response
            # a late answer to an earlier request that timed out: skip it
        self._drop_socket()
        if refusal is not None:
            return refusal
        raise DbServerUnreachable(
            f"{self.where} did not answer within {self.timeout:g} s: is it running? "
            f"{START_HINT}; `oqz dbserver status` checks it. Its address comes from "
            f"[dbserver] host/port in {self.config.source}"
        )

    def _send(self, sock: zmq.Socket, body: bytes, key: bytes | None) -> str:
        """Sign (cluster MAC, and the user MAC under ``key``) and send; the header of the
        message sent, as a refusal would name it."""
        header = self._signer.next_header()
        mac = request_mac(key, header, body) if key is not None else b""
        try:
            sock.send_multipart(self._signer.sign([body, mac], header))
        except zmq.Again:  # zmq dropped the connection: the handshake may have said why
            self._handshake.poll(1000)
            self._check_handshake()
            self._drop_socket()
            raise DbServerUnreachable(
                f"{self.where} did not take our request within {self.timeout:g} s: is it "
                f"running? {START_HINT}; `oqz dbserver status` checks it") from None
        return header.hex()

    def _wrong_key(self) -> DbServerError:
        return DbServerError(
            f"{self.where} refused our authentication: the [dbserver] authkey in "
            f"{self.config.source} differs from the dbserver's; use the cluster's "
            "openquake.cfg (OQ_CONFIG_FILE) or re-run provisioning"
        )

    def _check_handshake(self) -> None:
        """Fail at once when the dbserver refused our zmq handshake (see :mod:`oqzmq.zap`)."""
        why = zap.handshake_refusal(self._handshake)
        if why:
            self._drop_socket()
        if why == "wrong key":
            raise self._wrong_key()
        if why:
            raise DbServerError(
                f"{self.where} refused our zmq handshake (another security mechanism): it "
                "runs another oq-zmq-engine release than this client; run the same release "
                "on every node (re-run site.yml)")

    def _read_reply(self, frames: list[bytes]) -> dict[str, Any]:
        if frames == [REFUSAL]:
            raise self._wrong_key()
        try:
            payload = self._verifier.verify(frames)
            return json.loads(bytes(payload[0]))
        except (AuthError, ValueError, IndexError) as exc:
            raise DbServerError(f"{self.where} sent an invalid reply: {exc}") from exc

    def _drop_socket(self) -> None:
        if self._socket is not None:
            self._socket.disable_monitor()
            self._handshake.close(linger=0)
            self._socket.close(linger=0)
            self._socket = None


def ping(config: Config, timeout: float = 3.0) -> dict[str, Any]:
    """The dbserver's identity if it answers an authenticated ping; DbServerError otherwise."""
    with DbClient(config, timeout=timeout) as client:
        return client.call("ping")
