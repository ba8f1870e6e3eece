"""The election thread survives what etcd may hold or do: stray keys and compaction.

Real etcd and real replicas. Two failure modes of the elector:

- A key under the job's election prefix that no replica wrote (an operator's
  ``etcdctl put``, a tool of another version) must be ignored with one log
  line, not end the election thread (which left the replica never leading).
- The election watch ends when etcd compacted the revision it must resume
  from (its stream broke after the compaction). The elector must create it
  again, so a follower still takes over as soon as the leader resigns rather
  than at its next periodic re-read (``keepalive_interval_s``, 6.7 s here).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.chaos.proxy import TcpProxy
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from helpers import wait_until

pytestmark = pytest.mark.integration

NOT_A_CANDIDATE = "ignoring a key that is not a candidate"
WATCHING_AGAIN = "watching again"
#: A long lease: the periodic re-read of the election prefix comes every
#: min(TTL, deadline) / 3 = 6.7 s, so a takeover within 3 s proves the watch.
LONG_TTL_S = 30
LONG_DEADLINE_S = 20.0
TAKEOVER_S = 3.0


def log_count(cluster: LocalCluster, needle: str) -> int:
    return sum(r.log_path.read_text().count(needle) for r in cluster.replicas)


def test_a_malformed_candidate_key_is_ignored_and_a_replica_leads(etcd: RunningEtcd) -> None:
    job = f"stray-{uuid.uuid4().hex[:10]}"
    prefix = JobKeys(job).election_prefix
    with EtcdStore(etcd.endpoints) as store:
        # Lower create revisions than any replica's candidate: they sort first.
        store.put(f"{prefix}0000000000000000", b"not json at all")
        store.put(f"{prefix}0000000000000001", b'{"replica_id": 7}')
        with LocalCluster.start(replicas=2, etcd=etcd, job=job) as cluster:
            leader = cluster.leader(timeout_s=15)
            status = cluster.status()
            assert status.leader.id == leader.replica_id
            assert {r.id for r in status.replicas} == {r.replica_id for r in cluster.replicas}
            # Once per key and replica, not once per cycle.
            wait_until(
                lambda: log_count(cluster, NOT_A_CANDIDATE) == 4, 10, "each stray key logged"
            )
            store.put(f"{prefix}0000000000000002", b"[]")  # one more, while leading
            wait_until(
                lambda: log_count(cluster, NOT_A_CANDIDATE) == 6, 10, "the new stray key logged"
            )
            assert cluster.leader(timeout_s=5) is leader
            assert cluster.status().leader.term == status.leader.term


@pytest.fixture
def proxied_etcd(etcd: RunningEtcd) -> Iterator[tuple[LocalCluster, list[TcpProxy]]]:
    """Two replicas with a long lease, replica ``i`` dialling etcd through ``proxies[i]``."""
    proxies: list[TcpProxy] = []

    def route(replica: int, endpoints: list[str]) -> list[str]:
        del replica
        proxy = TcpProxy(endpoints[0]).start()
        proxies.append(proxy)
        return [proxy.address]

    job = f"compact-{uuid.uuid4().hex[:10]}"
    try:
        with LocalCluster.start(
            replicas=2,
            etcd=etcd,
            job=job,
            lease_ttl_s=LONG_TTL_S,
            renew_deadline_s=LONG_DEADLINE_S,
            route_etcd=route,
        ) as cluster:
            yield cluster, proxies
    finally:
        for proxy in proxies:
            proxy.close()


def test_the_election_watch_is_recreated_after_a_compaction(
    etcd: RunningEtcd, proxied_etcd: tuple[LocalCluster, list[TcpProxy]]
) -> None:
    cluster, proxies = proxied_etcd
    leader = cluster.leader(timeout_s=30)
    follower_index = next(i for i, r in enumerate(cluster.replicas) if r is not leader)
    follower = cluster.replicas[follower_index]
    with EtcdStore(etcd.endpoints) as store:
        marker = f"{JobKeys(cluster.job).prefix}compaction-marker"
        for value in (b"x", b"y"):  # two writes: compact strictly past every watch's revision
            store.put(marker, value)
        store.compact(store.revision())
    # The follower's watch stream breaks; it resumes from a compacted revision.
    proxies[follower_index].reset()
    proxies[follower_index].heal()
    wait_until(
        lambda: WATCHING_AGAIN in follower.log_path.read_text(),
        10,
        "the follower to see its election watch end and watch again",
    )
    wait_until(
        lambda: "election: watching" in follower.log_path.read_text(),
        10,
        "the follower to create its election watch again",
    )
    leader.terminate()  # revokes the lease: a delete event under the election prefix
    assert cluster.wait_new_leader(leader, timeout_s=TAKEOVER_S) is follower
