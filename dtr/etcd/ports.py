"""Choosing and checking the TCP ports local servers (etcd, replicas, proxies) listen on.

Free ports are picked below the kernel's ephemeral range when there is room:
a port the kernel hands out for ``bind(0)`` comes from the range it also
uses for the source ports of outgoing connections, so between the pick and
the server's bind, any connection made meanwhile (etcd members dialling each
other, a client dialling etcd) could take it. A 30-minute soak lost its
start that way ("address already in use" for a replica's port). Below the
range only another listener can take a port, and the candidates are random.
The port is still free again by the time the server binds it, so callers
(``EtcdCluster.start``) retry with new ports when etcd reports "address
already in use". Every socket here is closed before returning; nothing
listens.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def pick_free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that were free on ``host`` a moment ago.

    All sockets stay bound until every port is chosen, so the kernel never
    hands out the same port twice in one call.
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        candidates = _below_ephemeral()
        for _ in range(count):
            sock = stack.enter_context(socket.socket(_family(host), socket.SOCK_STREAM))
            if not _bind_candidate(sock, host, candidates):
                sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


#: The lowest port picked below the ephemeral range (well above the reserved ones).
_LOWEST_PICKED = 10_000
#: Candidates tried below the range per port before asking the kernel instead.
_TRIES = 64


def _below_ephemeral() -> list[int]:
    """Ports between ``_LOWEST_PICKED`` and the ephemeral range, shuffled (empty: no room)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    candidates = list(range(_LOWEST_PICKED, low))
    random.shuffle(candidates)
    return candidates


def _bind_candidate(sock: socket.socket, host: str, candidates: list[int]) -> int:
    """Bind ``sock`` to a candidate (consumed from ``candidates``): the port, or 0 if none took."""
    for _ in range(min(_TRIES, len(candidates))):
        port = candidates.pop()
        try:
            sock.bind((host, port))
        except OSError:
            continue
        return port
    return 0


def port_unavailable_reason(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now, or None if it could.

    ``SO_REUSEADDR`` is set as Go (and so etcd) sets it: a port that only has
    connections in TIME_WAIT is usable and must not be reported as taken.
    """
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
    except OSError as err:
        return err.strerror or str(err)
    return None


def connect_host(host: str) -> str:
    """The address a local client uses to reach a server listening on ``host``."""
    return LOOPBACK if host in _WILDCARDS else host


def url_host(host: str) -> str:
    """``host`` as it appears in a URL: IPv6 literals need brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
