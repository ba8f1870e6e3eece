"""pick_free_ports: distinct, bindable, and outside the range outgoing connections use.

A port the kernel picks for ``bind(0)`` comes from its ephemeral range, the
same range it draws outgoing connections' source ports from; picked there, a
server's port could be taken by any connection made before the server binds
(a soak lost its start to that). Below the range, only a listener can take it.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dtr.etcd import pick_free_ports

RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = pick_free_ports(40)
    assert len(set(ports)) == 40
    if not RANGE.exists():
        pytest.skip("no ephemeral range to compare with on this system")
    low = int(RANGE.read_text().split()[0])
    assert all(p < low for p in ports), f"picked in the ephemeral range (from {low}): {ports}"
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: nothing listens on a picked port


def test_a_listener_on_a_candidate_is_never_handed_out() -> None:
    taken = pick_free_ports(30)
    with socket.socket() as first, socket.socket() as second:
        first.bind(("127.0.0.1", taken[0]))
        first.listen()
        second.bind(("127.0.0.1", taken[1]))
        second.listen()
        for _ in range(20):
            assert not {taken[0], taken[1]} & set(pick_free_ports(30))
