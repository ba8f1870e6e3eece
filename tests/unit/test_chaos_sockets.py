"""dtr.chaos.sockets: which connections a process holds, read from /proc on this process.

The process inspected is the test's own, so no process is started; a socket
opened here must be found, and a process that does not exist holds none.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

from dtr.chaos.sockets import client_of, tcp_connections_of

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc is Linux's")


def test_a_connection_this_process_opened_is_found_with_both_ports() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        local, remote = client.getsockname()[1], listener.getsockname()[1]
        assert (local, remote) in tcp_connections_of(os.getpid())
        picks = client_of(os.getpid(), remote)
        assert picks(("127.0.0.1", local))
        assert not client_of(os.getpid(), remote + 1)(("127.0.0.1", local))


def test_a_process_that_does_not_exist_holds_no_connection() -> None:
    assert tcp_connections_of(2**22 + 1) == set()  # above Linux's largest pid
