"""``HOST:PORT`` addresses of coordinators, and which of them name the same replica.

A client may be configured with names (``localhost:50051``, a Service name)
while replicas advertise the address they listen on (``127.0.0.1:50051``):
the hint rule (``client.hint_allowed``) and the leader watch's choice of a
replica other than the leader (``leader_watch.py``) compare what the two
resolve to, never the strings.
"""

from __future__ import annotations

import re
import socket

HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-_]*):(?P<port>\d+)$")


def resolved_addresses(address: str) -> frozenset[str]:
    """``HOST:PORT`` as the set of ``IP:PORT`` it resolves to (empty if it does not)."""
    match = HOST_PORT.fullmatch(address)
    if match is None:
        return frozenset()
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return frozenset()
    return frozenset(f"{info[4][0]}:{port}" for info in infos)
