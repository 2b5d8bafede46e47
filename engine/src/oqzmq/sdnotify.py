"""systemd readiness notification (``Type=notify``) without a libsystemd dependency.

``notify("READY=1")`` tells systemd the service is up; outside systemd (no
``$NOTIFY_SOCKET``) it does nothing, so foreground services call it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("oqzmq.sdnotify")


def notify(state: str) -> bool:
    """Send one sd_notify state line; True when systemd was told."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s) at %s: %s", state, address, exc)
        return False
    return True
