"""Refuse peers without the cluster key at the zmq handshake (ZAP, PLAIN mechanism).

Every tcp socket that binds (the dbserver, a workerpool's control socket, a calculation's
result receiver) is a PLAIN *server* (:func:`bind`); every socket that connects to one presents
the PLAIN credentials ``oqzmq`` / :func:`token` (HMAC-SHA256 of ``[dbserver] authkey``). A
small ZAP handler thread per zmq context (:func:`serve`) answers libzmq's ZAP requests with a
constant-time comparison. libzmq reads no message frame from a connection before its
handshake succeeds, so a peer without the key cannot make the process buffer any data: it is
refused before its first frame (the attack of issue 20: two 1 GiB messages to a workerpool
grew it by 1 GB before the per-message MAC rejected them). The MAC of :mod:`oqzmq.auth` still
authenticates every message, and the per-message cap (``MAXMSGSIZE``) bounds what a key holder
can send.

Refusals are logged (a warning per socket and peer address, at most one a minute with the
count of those not logged): a wrong token through this handler, a peer without credentials
(another mechanism: NULL, a plain zmq socket) through a socket monitor, as libzmq refuses it
before any ZAP request.

Threat model: PLAIN sends the token in the clear at each connect, so whoever can sniff the
cluster network learns it. The token is not the authkey (an HMAC of it: the authkey cannot be
recovered from it) and it lets one do exactly what an unauthenticated peer could do before
issue 20 (send messages the MAC refuses, within the size cap), nothing more: no message is
acted on and nothing is unpickled without the per-message MAC, which never travels. A
time-bound token would not stop that sniffer either (it reads the current token), so the token
is static; CURVE would hide it, at the price of encrypting every result byte (~0.2 GB/s, see
:mod:`oqzmq.auth`). The cluster network is assumed not to be hostile to the point of sniffing;
the firewall limits who reaches the ports at all.

Private ``ipc://`` endpoints (the sockets between a workerpool and its worker processes, and all
those of ``processpool`` mode) skip PLAIN and ZAP: :func:`bind` puts them only in a directory
that is their owner's alone (mode 0700), so the kernel refuses every other user at
``connect(2)``, before a single byte (the same check, earlier than the handshake). Only that
user and root get through, and both can read the key anyway. It spares each task group of
``processpool`` mode two handshakes through this Python handler, which waits for the GIL while
the master pickles the tasks.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import logging
import os
import threading
import time
import weakref

import zmq
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

USERNAME = b"oqzmq"
LOG_INTERVAL = 60.0  # seconds between two warnings about the same refused peer
_REFUSED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def token(authkey: str | bytes) -> bytes:
    """The PLAIN password of the cluster: derived from the authkey, which it does not reveal."""
    secret = authkey.encode() if isinstance(authkey, str) else authkey
    if not secret:
        raise ValueError("empty authkey: set [dbserver] authkey in openquake.cfg")
    return hmac.new(secret, b"oqzmq zap v1", hashlib.sha256).hexdigest().encode()


def is_private(endpoint: str) -> bool:
    """True for an ipc endpoint: :func:`bind` accepts one only in its owner's own directory."""
    return endpoint.startswith("ipc://")


def client(sock: zmq.Socket, authkey: str | bytes, endpoint: str) -> zmq.Socket:
    """Give a socket about to connect to ``endpoint`` the cluster's credentials (none for a
    private ipc endpoint, which the kernel guards)."""
    if not is_private(endpoint):
        sock.plain_username = USERNAME
        sock.plain_password = token(authkey)
    return sock


def bind(sock: zmq.Socket, authkey: str | bytes, label: str, endpoint: str) -> zmq.Socket:
    """Bind ``sock`` to ``endpoint`` so that peers without the key are refused before they send
    a byte: at the zmq handshake (tcp), or by the kernel (ipc: its directory must be ours
    alone, else ValueError, nothing bound)."""
    if is_private(endpoint):
        _check_private_directory(endpoint)
    else:
        serve(sock, authkey, label)
    sock.bind(endpoint)
    return sock


def _check_private_directory(endpoint: str) -> None:
    directory = os.path.dirname(endpoint.removeprefix("ipc://")) or "."
    info = os.stat(directory)
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ValueError(
            f"{endpoint}: its directory {directory} (mode {info.st_mode & 0o777:o}, uid "
            f"{info.st_uid}) is not this user's alone, so other users could connect: use a "
            "directory of mode 0700 owned by this user, or a tcp endpoint")


def serve(sock: zmq.Socket, authkey: str | bytes, label: str) -> zmq.Socket:
    """Make a binding socket refuse, at the handshake, peers without the cluster's token
    (call before it binds). ``label`` names the socket in the log."""
    handler = _handler(sock.context)
    domain = handler.register(token(authkey), label)
    sock.zap_domain = domain
    sock.plain_server = True
    handler.watch(sock, domain)
    return sock


def watch_handshake(sock: zmq.Socket) -> zmq.Socket:
    """A monitor socket of a connecting socket, to read with :func:`handshake_refusal`
    (close it with ``sock.disable_monitor()`` and ``.close()``).

    Only the peer's verdicts: a wrong key (AUTH) or another mechanism (PROTOCOL). A connection
    cut inside the handshake (NO_DETAIL: the peer stopping or starting) is no refusal: libzmq
    connects again, and taking it for one failed a long-lived client after a dbserver restart.
    """
    return sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


def handshake_refusal(monitor: zmq.Socket) -> str:
    """Why the peer refused our handshake ('' if it did not, so far): read without waiting."""
    while monitor.poll(0):
        event = parse_monitor_message(monitor.recv_multipart())
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return "wrong key"
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            return "mechanism"
    return ""


_HANDLERS: weakref.WeakKeyDictionary[zmq.Context, _Handler] = weakref.WeakKeyDictionary()
_HANDLERS_LOCK = threading.Lock()


def _handler(context: zmq.Context) -> _Handler:
    with _HANDLERS_LOCK:
        handler = _HANDLERS.get(context)
        if handler is None or not handler.thread.is_alive():
            handler = _HANDLERS[context] = _Handler(context)
        return handler


class _Handler:
    """The ZAP handler of one context: a REP socket on inproc://zeromq.zap.01 in a thread."""

    _monitors = itertools.count()
    _domains = itertools.count()

    def __init__(self, context: zmq.Context) -> None:
        self.domains: dict[bytes, tuple[bytes, str]] = {}
        self._new_monitors: list[tuple[zmq.Socket, bytes]] = []  # (monitor, domain)
        self._lock = threading.Lock()
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}
        self.refused = 0  # handshakes refused, for the tests
        ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(context, ready), daemon=True,
                                       name="oqzmq-zap")
        self.thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error

    def register(self, password: bytes, label: str) -> bytes:
        with self._lock:
            domain = f"oqzmq-{next(self._domains)}".encode()
            self.domains[domain] = (password, label)
        return domain

    def watch(self, sock: zmq.Socket, domain: bytes) -> None:
        """Log the peers that fail the handshake before any ZAP request (no credentials);
        forget ``domain`` once ``sock`` is closed (a long-lived context serves many sockets)."""
        address = f"inproc://oqzmq-zap-monitor-{id(self)}-{next(self._monitors)}"
        sock.monitor(address, _REFUSED_EVENTS | zmq.EVENT_MONITOR_STOPPED)
        pair = zmq.Socket(sock.context, zmq.PAIR)  # untracked: see _run
        pair.setsockopt(zmq.LINGER, 0)
        pair.connect(address)
        with self._lock:
            self._new_monitors.append((pair, domain))

    def _run(self, context: zmq.Context, ready: threading.Event) -> None:
        try:
            # not made by context.socket(): a context.destroy() must not close this thread's
            # sockets under it (term() then waits until the thread closes them on ETERM)
            rep = zmq.Socket(context, zmq.REP)
            rep.setsockopt(zmq.LINGER, 0)
            rep.bind("inproc://zeromq.zap.01")
        except zmq.ZMQError as exc:
            self._error = exc
            ready.set()
            return
        ready.set()
        monitors: dict[zmq.Socket, bytes] = {}  # monitor -> domain of the socket it watches
        poller = zmq.Poller()
        poller.register(rep, zmq.POLLIN)
        try:
            while True:
                with self._lock:
                    new, self._new_monitors = self._new_monitors, []
                for pair, domain in new:
                    monitors[pair] = domain
                    poller.register(pair, zmq.POLLIN)
                for sock, _ in poller.poll(200):
                    if sock is rep:
                        rep.send_multipart(self._answer(rep.recv_multipart()))
                    elif self._monitor_event(sock, self._label(monitors[sock])):
                        poller.unregister(sock)
                        self._forget(monitors.pop(sock))
                        sock.close()
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:  # a socket closed under us: the context is going away
            log.debug("the ZAP handler stops: %s", exc)
        finally:
            with self._lock:
                new, self._new_monitors = self._new_monitors, []
            for sock in [*monitors, *(pair for pair, _ in new), rep]:
                with contextlib.suppress(zmq.ZMQError):
                    sock.close()

    def _label(self, domain: bytes) -> str:
        with self._lock:
            return self.domains[domain][1]

    def _forget(self, domain: bytes) -> None:
        with self._lock:
            del self.domains[domain]

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        password, label = self.domains.get(domain, (b"", "an unknown socket"))
        given = credentials[1] if mechanism == b"PLAIN" and len(credentials) == 2 else b""
        if password and hmac.compare_digest(given, password):
            return [version, request_id, b"200", b"OK", USERNAME, b""]
        self.refused += 1
        peer = address.decode(errors="replace") or "a local peer"
        self._warn(label, peer, f"refused {peer} at the handshake on {label}: wrong cluster key "
                                "(its [dbserver] authkey differs from ours, or it is no peer)")
        return [version, request_id, b"400", b"wrong cluster key", b"", b""]

    def _monitor_event(self, pair: zmq.Socket, label: str) -> bool:
        """Log one monitor event; True once the monitored socket is closed."""
        event = parse_monitor_message(pair.recv_multipart())
        if event["event"] == zmq.EVENT_MONITOR_STOPPED:
            return True
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:  # e.g. a TCP port probe
            self._warn(label, "(closed)", f"a connection to {label} ended before the zmq "
                       f"handshake completed (errno {event['value']}): a port probe, or a peer "
                       "without the cluster key")
            return False
        self.refused += 1
        self._warn(label, "", f"refused a peer at the handshake on {label}: it presented no "
                              f"cluster key (zmq protocol error {event['value']:#x}: another "
                              "mechanism, e.g. a zmq socket without the oqzmq credentials)")
        return False

    def _warn(self, label: str, peer: str, text: str) -> None:
        now = time.monotonic()
        since, quiet = self._logged.get((label, peer), (0.0, 0))
        if now - since < LOG_INTERVAL and since:
            self._logged[(label, peer)] = (since, quiet + 1)
            return
        more = f" ({quiet} more refused in the last {LOG_INTERVAL:.0f} s)" if quiet else ""
        log.warning("%s%s", text, more)
        self._logged[(label, peer)] = (now, 0)
        if len(self._logged) > 10_000:  # many peers: forget the oldest
            for key in sorted(self._logged, key=lambda k: self._logged[k][0])[:5_000]:
                del self._logged[key]


def probe(endpoint: str, authkey: str | None, timeout: float = 3.0) -> str:
    """How the socket listening at ``endpoint`` answers a handshake with ``authkey``'s
    credentials (None: none, as a plain zmq socket): "accepted", "refused: wrong key",
    "refused: no key" or "no handshake within T s" (nothing listens, or no zmq there)."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if authkey is not None:
        client(sock, authkey, endpoint)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH | _REFUSED_EVENTS)
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(left * 1000) + 1):
                break
            event = parse_monitor_message(monitor.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return "accepted"
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return "refused: wrong key"
            if event & _REFUSED_EVENTS:
                return "refused: no key"
        return f"no handshake within {timeout:g} s"
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
        context.term()


def main(argv: list[str] | None = None) -> int:
    """``python -m oqzmq.zap ENDPOINT...``: for each, a handshake without the key and one with
    the authkey of openquake.cfg, as JSON ``{endpoint: {"keyless": ..., "keyed": ...}}``;
    exit 0 when every one refused the first and accepted the second."""
    import json
    import sys

    from oqzmq.config import load_config

    endpoints = sys.argv[1:] if argv is None else argv
    authkey = load_config().require_authkey()
    outcomes = {endpoint: {"keyless": probe(endpoint, None), "keyed": probe(endpoint, authkey)}
                for endpoint in endpoints}
    print(json.dumps(outcomes))
    return 0 if all(o["keyless"].startswith("refused") and o["keyed"] == "accepted"
                    for o in outcomes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
