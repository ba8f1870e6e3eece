"""A worker cut off from every coordinator by a proxy that drops its traffic.

The replicas advertise ``TcpProxy`` addresses, so the cut worker's every
route (its configured list and every leader hint) goes through proxies; a
second worker dials the replicas directly and stays connected. The cut lasts
longer than the heartbeat timeout, so the leader declares the cut worker
dead and hands its shards to the other; after healing, the cut worker must
notice, rejoin as a new incarnation and follow the new generation — without
a single call failing up to the training loop meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dtr.etcd import RunningEtcd
from dtr.worker import Worker
from helpers import ProxiedCluster, proxied_cluster, wait_until

pytestmark = pytest.mark.integration

NUM_SHARDS = 32
HEARTBEAT_TIMEOUT_S = 3.0


@pytest.fixture
def proxied(etcd: RunningEtcd) -> Iterator[ProxiedCluster]:
    with proxied_cluster(etcd, 2, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S) as started:
        yield started


def test_a_cut_off_worker_trains_on_cached_shards_then_rejoins_the_new_generation(
    proxied: ProxiedCluster,
) -> None:
    cluster = proxied.cluster
    direct = ",".join(cluster.endpoints)
    options = {"job": cluster.job, "heartbeat_interval_s": 0.2}
    with (
        Worker(cluster.coordinators, worker_id="cut", stale_read_deadline_s=1.0, **options) as cut,
        Worker(direct, worker_id="kept", **options) as kept,
    ):
        kept.register_dataset("tokens", NUM_SHARDS)
        wait_until(lambda: cut.generation == kept.generation, 30, "both to see one generation")
        before = cut.shard_assignment("tokens", 0)
        assert 0 < len(before.shard_ids) < NUM_SHARDS

        for proxy in proxied.proxies:
            proxy.blackhole()
        # Training goes on: each epoch's shards come from the cache, quickly,
        # until the leader has declared the cut worker dead.
        epoch, cut_at = 1, time.monotonic()
        while True:
            started = time.monotonic()
            stale = cut.shard_assignment("tokens", epoch)
            assert stale.stale and stale.shard_ids == before.shard_ids
            assert time.monotonic() - started < 4.0
            epoch += 1
            if kept.shard_assignment("tokens", epoch).shard_ids == tuple(range(NUM_SHARDS)):
                break
            assert time.monotonic() - cut_at < 60, "the cut worker was never declared dead"
        assert kept.generation > before.generation  # the leader moved on without it

        for proxy in proxied.proxies:
            proxy.heal()
        wait_until(lambda: cut.incarnation > 1, 30, "the cut worker to rejoin")
        wait_until(
            lambda: (
                cut.shard_assignment("tokens", epoch).generation
                == kept.shard_assignment("tokens", epoch).generation
            ),
            30,
            "both workers to reach the rejoined generation",
        )
        after = [cut.shard_assignment("tokens", epoch), kept.shard_assignment("tokens", epoch)]
        assert not any(a.stale for a in after)
        assert sorted(s for a in after for s in a.shard_ids) == list(range(NUM_SHARDS))
        assert after[0].generation > kept.generation - 1 > before.generation
