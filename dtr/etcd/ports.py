"""Choosing and checking the TCP ports local etcd members listen on.

Free ports are picked by binding to port 0 and reading back what the kernel
chose. The port is free again by the time etcd binds it, so another process
may take it in between: callers (``EtcdCluster.start``) retry with new ports
when etcd reports "address already in use". Every socket here is closed before
returning; nothing listens.
"""

from __future__ import annotations

import contextlib
import socket

LOOPBACK = "127.0.0.1"
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def pick_free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that were free on ``host`` a moment ago.

    All sockets stay bound until every port is chosen, so the kernel never
    hands out the same port twice in one call.
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(_family(host), socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


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
