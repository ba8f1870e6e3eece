"""What an injector works on and hands back (apart: injectors live in modules of their own)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtr.errors import DtrError

from .cluster import LocalCluster
from .proxy import TcpProxy
from .scenario import FaultKind, Scenario
from .sim_pool import SimWorkerPool
from .workers import WorkerPool


class NoTarget(DtrError):
    """The fault found nothing to act on: no leader, no running worker, no owned etcd."""


@dataclass(frozen=True)
class Targets:
    """What the nemesis may hurt: ``proxies[i]`` fronts ``cluster.replicas[i]``.

    ``etcd_proxies[i]`` are the proxies replica ``i`` dials etcd through;
    ``storage_mount`` the checkpoint tmpfs (None: no ``disk-full``);
    ``storage_proxy`` fronts the S3 server (None: no ``slow-storage``);
    ``sims`` the simulated workers' processes (None: no ``rack-failure``);
    ``scenario`` gives the delays and the rack size (None: the defaults).
    """

    cluster: LocalCluster
    proxies: Sequence[TcpProxy]
    workers: WorkerPool
    etcd_proxies: Sequence[Sequence[TcpProxy]] = ()
    storage_mount: Path | None = None
    storage_proxy: TcpProxy | None = None
    sims: SimWorkerPool | None = None
    scenario: Scenario | None = None

    @property
    def settings(self) -> Scenario:
        """The scenario's delays and rack size (a placeholder scenario's defaults without one)."""
        if self.scenario is not None:
            return self.scenario
        return Scenario("defaults", "the defaults", ((FaultKind.LEADER_KILL, 1.0),))


@dataclass(frozen=True)
class Injected:
    """A fault in place: what the ``ok`` event says, and how to heal it."""

    value: dict[str, Any]
    heal: Callable[[], None]
    term: int | None = None
