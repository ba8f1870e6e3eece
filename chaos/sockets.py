"""Which TCP connections a process holds: how a proxy tells one worker from another.

Every worker reaches a replica through the one ``TcpProxy`` that replica
advertises (its leader hints name that proxy too), so partitioning *one*
worker means picking its connections out of all those the proxy accepted.
The proxy sees only each client's ``(host, port)``; Linux's ``/proc`` says
which process holds the socket with that local port and that remote port.
``client_of(pid, proxy_port)`` is the ``TcpProxy.cut_off`` filter built on it.

Linux only, and only for processes this user may inspect (the harness's own
children). Where ``/proc`` cannot answer (another OS, a process that is
gone) the answer is "no connection", so a partition cuts nothing rather than
everything — the nemesis records what it cut, and a cut that cut nothing shows
up as a fault without effect, not as a false alarm.
"""

from __future__ import annotations

import os
from pathlib import Path

from .proxy_relay import ClientFilter

_SOCKET_LINK = "socket:["
_TABLES = ("tcp", "tcp6")
_INODE_FIELD = 9


def tcp_connections_of(pid: int) -> set[tuple[int, int]]:
    """``(local port, remote port)`` of every TCP socket process ``pid`` holds (IPv4 and 6)."""
    inodes = _socket_inodes(pid)
    found: set[tuple[int, int]] = set()
    if not inodes:
        return found
    for table in _TABLES:
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > _INODE_FIELD and fields[_INODE_FIELD] in inodes:
                found.add((_port_of(fields[1]), _port_of(fields[2])))
    return found


def client_of(pid: int, proxy_port: int) -> ClientFilter:
    """A ``TcpProxy.cut_off`` filter: True for the connections ``pid`` made to ``proxy_port``."""

    def is_client(peer: tuple[str, int]) -> bool:
        return (peer[1], proxy_port) in tcp_connections_of(pid)

    return is_client


def _socket_inodes(pid: int) -> set[str]:
    """The inode numbers (as ``/proc/net/tcp`` prints them) of the sockets ``pid`` holds."""
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return set()
    inodes: set[str] = set()
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:  # closed since listed
            continue
        if target.startswith(_SOCKET_LINK):
            inodes.add(target[len(_SOCKET_LINK) : -1])
    return inodes


def _port_of(address: str) -> int:
    """The port of a ``/proc/net/tcp`` address (``0100007F:1F90``: hex IP, hex port)."""
    return int(address.rsplit(":", 1)[1], 16)
