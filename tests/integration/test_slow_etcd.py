"""A slow etcd is not a dead etcd (DESIGN §4): latency must never cost leadership.

Every replica of a real cluster dials etcd through a ``TcpProxy`` of its own
(``LocalCluster.start(route_etcd=…)``, as the chaos runner does). The proxies
then add latency to every etcd request and answer for a fixed window (the
fault, like the chaos nemesis's, is timed). Throughout the window one thread
samples the leader's ``dtr.v1.Leader`` health and a worker makes mutating
calls (``register_dataset``) back to back; afterwards the term must be the
one from before, no replica may have logged a step-down, every sample must
say SERVING, and every call must have succeeded well within 3 s.

The proxy delays each chunk in each direction, so ``delay(d)`` adds about
``2 d`` to a request's round trip.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.chaos.coordinator_process import CoordinatorProcess
from dtr.chaos.proxy import TcpProxy
from dtr.etcd import RunningEtcd
from dtr.worker import Worker
from helpers import cluster_dialing_etcd_through_proxies

pytestmark = pytest.mark.integration

SLOW_WINDOW_S = 6.0
MAX_CALL_S = 3.0
PROBE_PACE_S = 0.05


@dataclass
class SlowEtcdCluster:
    """A 2-replica cluster whose replicas reach etcd only through ``proxies``."""

    cluster: LocalCluster
    proxies: list[TcpProxy] = field(default_factory=list)

    def delay(self, seconds: float) -> None:
        for proxy in self.proxies:
            proxy.delay(seconds)

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.heal()


@pytest.fixture
def slow(etcd: RunningEtcd) -> Iterator[SlowEtcdCluster]:
    """Two replicas with the default timeouts, each dialling etcd via its own proxy."""
    job = f"slow-{uuid.uuid4().hex[:10]}"
    with cluster_dialing_etcd_through_proxies(etcd, replicas=2, job=job) as (cluster, proxies):
        yield SlowEtcdCluster(cluster, proxies)


@dataclass
class Window:
    """What the slow window showed: leader health samples and call latencies."""

    samples: int = 0
    not_serving: int = 0
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sample_leader(leader: CoordinatorProcess, until: float, window: Window) -> None:
    """Probe ``dtr.v1.Leader`` on the leader itself (no etcd on that path) until ``until``."""
    paced = threading.Event()  # never set: a pacing wait between samples, not a sync
    while time.monotonic() < until:
        window.samples += 1
        if not leader.is_leader():
            window.not_serving += 1
        paced.wait(PROBE_PACE_S)


def register_until(worker: Worker, until: float, window: Window) -> None:
    """Register datasets back to back until ``until``, timing each call."""
    index = 0
    while time.monotonic() < until:
        index += 1
        started = time.monotonic()
        try:
            worker.register_dataset(f"slow-{index}", 8)
        except Exception as err:  # recorded: the assertion names it
            window.errors.append(f"{type(err).__name__}: {err}")
        window.latencies_s.append(time.monotonic() - started)


def step_downs(cluster: LocalCluster) -> int:
    return sum(r.log_path.read_text().count("stepping down") for r in cluster.replicas)


@pytest.mark.parametrize("one_way_delay_s", [0.15, 0.5], ids=["rtt-0.3s", "rtt-1.0s"])
def test_a_slow_etcd_costs_no_leadership_and_fails_no_call(
    slow: SlowEtcdCluster, one_way_delay_s: float
) -> None:
    cluster = slow.cluster
    leader = cluster.leader(timeout_s=30)
    term = cluster.status().leader.term
    with Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker:
        worker.register_dataset("warm-up", 8)
        downs_before = step_downs(cluster)
        window = Window()
        slow.delay(one_way_delay_s)
        until = time.monotonic() + SLOW_WINDOW_S
        sampler = threading.Thread(target=sample_leader, args=(leader, until, window))
        sampler.start()
        try:
            register_until(worker, until, window)
        finally:
            sampler.join(SLOW_WINDOW_S + 10)
            slow.heal()
    downs = step_downs(cluster) - downs_before
    print(  # the figures docs/operations.md quotes (pytest -s shows them)
        f"slow etcd, one-way delay {one_way_delay_s} s: {len(window.latencies_s)} calls, "
        f"max {max(window.latencies_s, default=0):.2f} s, errors {len(window.errors)}, "
        f"NOT_SERVING {window.not_serving}/{window.samples}, step-downs {downs}"
    )
    assert window.errors == []
    assert window.latencies_s, "no call was made in the slow window"
    assert max(window.latencies_s) < MAX_CALL_S, window.latencies_s
    assert window.samples > 0
    assert window.not_serving == 0, f"{window.not_serving}/{window.samples} samples NOT_SERVING"
    assert downs == 0
    assert cluster.status().leader.term == term
    assert cluster.leader(timeout_s=10) is leader
