"""Barrier retention against a real replica: a barrier per step does not grow etcd forever.

One worker passes more barriers than the leader keeps; the oldest are
deleted from etcd (state and arrivals), the newest stay, and a late retry of
a kept barrier is still answered as released. The choice of what to forget
is unit-tested in tests/unit/test_barrier_retention_plans.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.coordinator.barriers import KEEP_RELEASED_BARRIERS, retention_period
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from dtr.worker import Worker
from helpers import wait_until

pytestmark = pytest.mark.integration

PERIOD = retention_period(KEEP_RELEASED_BARRIERS)
PASSED = KEEP_RELEASED_BARRIERS + 2 * PERIOD


@pytest.fixture
def single(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=1, etcd=etcd, job=f"b-{uuid.uuid4().hex[:10]}") as started:
        yield started


def barrier_names(store: EtcdStore, keys: JobKeys) -> set[str]:
    listed = store.get_prefix(keys.barriers_prefix)
    return {keys.last_segment(kv.key, keys.barriers_prefix) for kv in listed.kvs}


def test_old_barriers_are_forgotten_and_recent_ones_kept(
    single: LocalCluster, etcd: RunningEtcd
) -> None:
    keys = JobKeys(single.job)
    with Worker(single.coordinators, worker_id="w0", job=single.job) as worker:
        for step in range(PASSED):
            worker.barrier(f"step-{step}", timeout_s=30)
        newest = {f"step-{s}" for s in range(PASSED - KEEP_RELEASED_BARRIERS, PASSED)}
        with EtcdStore(etcd.endpoints) as store:
            # A pass runs at least every PERIOD releases and
            # keeps the newest KEEP_RELEASED_BARRIERS: so at most both remain.
            wait_until(
                lambda: len(barrier_names(store, keys)) <= PASSED - PERIOD,
                30,
                "etcd to forget the oldest barriers",
            )
            kept = barrier_names(store, keys)
        assert newest <= kept
        assert len(kept) <= KEEP_RELEASED_BARRIERS + PERIOD
        assert "step-0" not in kept
        # A retry of a kept barrier is still answered RELEASED at once.
        assert worker.barrier(f"step-{PASSED - 1}", timeout_s=5) == worker.generation
