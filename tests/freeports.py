"""Free TCP ports for tests that start servers, picked below the kernel's ephemeral range.

The kernel hands ephemeral ports to outgoing connections, and a socket reconnecting to a
closed port of that range can connect to itself (TCP self-connect), so a port picked there
(or with port 0) can be taken in the middle of a test; one such case failed about one engine
test run in ten. Each process starts its search at its own offset, so test runs in parallel
on one machine rarely probe the same ports, and never hands out a port twice.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

FIRST = 10000
STEP = 23
_handed_out: set[int] = set()


def free_port_block(size: int = 1, hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """The first of ``size`` consecutive ports that every address in ``hosts`` can bind."""
    end = ephemeral_ports_start() - size
    start = FIRST + os.getpid() % 1000 * STEP % (end - FIRST)
    for base in (*range(start, end, STEP), *range(FIRST, start, STEP)):
        ports = range(base, base + size)
        if _handed_out.isdisjoint(ports) and all(_bindable(h, p) for h in hosts for p in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError(f"no {size} consecutive free ports below {end + size} on {hosts}")


def free_port(host: str = "127.0.0.1") -> int:
    return free_port_block(1, (host,))


def ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
