"""A local cluster whose replicas advertise ``TcpProxy`` addresses instead of their own.

This is how the chaos harness cuts the link between workers and one
coordinator without touching the process: every replica advertises the proxy
in front of it, so ``ClusterStatus``, ``coordinators`` and the ``dtr-leader``
hints all lead through proxies, while the launcher's own probes dial the
replicas directly and keep seeing them healthy.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.errors import InvalidArgument
from dtr.etcd import RunningEtcd
from dtr.proto import LEADER_METADATA_KEY, coordinator_pb2, coordinator_pb2_grpc
from dtr.retry import trailing_metadata
from helpers import ProxiedCluster, proxied_cluster, wait_until

pytestmark = pytest.mark.integration

REPLICAS = 2


@pytest.fixture
def proxied(etcd: RunningEtcd) -> Iterator[ProxiedCluster]:
    """Two replicas of a fresh job, each behind a proxy it advertises."""
    with proxied_cluster(etcd, REPLICAS) as started:
        yield started


def status_via(address: str, timeout_s: float) -> coordinator_pb2.ClusterStatusResponse:
    with grpc.insecure_channel(address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        request = coordinator_pb2.ClusterStatusRequest(
            header=coordinator_pb2.RequestHeader(caller_id="dtr-test")
        )
        reply: coordinator_pb2.ClusterStatusResponse = stub.ClusterStatus(
            request, timeout=timeout_s
        )
        return reply


def answers_via(address: str) -> bool:
    try:
        status_via(address, 0.5)
    except grpc.RpcError:
        return False
    return True


def test_replicas_report_the_proxy_addresses_they_advertise(proxied: ProxiedCluster) -> None:
    cluster, proxies = proxied.cluster, proxied.proxies
    leader = cluster.leader(timeout_s=30)
    by_replica = {r.replica_id: p.address for r, p in zip(cluster.replicas, proxies, strict=True)}
    status = cluster.status()
    assert {r.id: r.address for r in status.replicas} == by_replica
    assert status.leader.id == leader.replica_id
    assert status.leader.address == by_replica[leader.replica_id]
    assert cluster.coordinators == ",".join(p.address for p in proxies)
    assert cluster.endpoints == [f"127.0.0.1:{r.port}" for r in cluster.replicas]
    assert [r.advertised_address for r in cluster.replicas] == [p.address for p in proxies]


def leader_hint_via(address: str) -> str | None:
    """The ``dtr-leader`` hint a follower behind ``address`` gives a mutating call."""
    request = coordinator_pb2.RegisterDatasetRequest(
        header=coordinator_pb2.RequestHeader(caller_id="dtr-test"), name="tokens", num_shards=8
    )
    with grpc.insecure_channel(address) as channel:
        try:
            coordinator_pb2_grpc.CoordinatorStub(channel).RegisterDataset(request, timeout=5)
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
            return trailing_metadata(err).get(LEADER_METADATA_KEY)
    pytest.fail(f"the replica behind {address} accepted a mutating call as a follower")


def test_a_follower_hints_at_the_leader_through_its_proxy(proxied: ProxiedCluster) -> None:
    cluster, proxies = proxied.cluster, proxied.proxies
    leader = cluster.leader(timeout_s=30)
    index = next(i for i, r in enumerate(cluster.replicas) if r is not leader)
    hints: list[str] = []

    def has_hint() -> bool:
        hint = leader_hint_via(proxies[index].address)
        hints.extend([hint] if hint is not None else [])
        return bool(hints)

    wait_until(has_hint, 10, "the follower to know the leader")
    assert hints[-1] == proxies[1 - index].address


def test_cluster_status_through_a_proxy_fails_while_it_is_blackholed(
    proxied: ProxiedCluster,
) -> None:
    cluster, (cut, other) = proxied.cluster, proxied.proxies
    cluster.leader(timeout_s=30)
    assert status_via(cut.address, 5).job == cluster.job
    cut.blackhole()
    with pytest.raises(grpc.RpcError) as caught:
        status_via(cut.address, 0.5)
    code = caught.value.code()
    assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert status_via(other.address, 5).job == cluster.job
    assert cluster.status().job == cluster.job  # the replicas themselves are fine
    assert all(r.is_serving() for r in cluster.replicas)
    cut.heal()
    wait_until(lambda: answers_via(cut.address), 10, "ClusterStatus through the healed proxy")


def test_advertise_ports_must_name_one_port_per_replica(etcd: RunningEtcd) -> None:
    with pytest.raises(InvalidArgument, match="advertise_ports must name 2 ports"):
        LocalCluster.start(replicas=2, etcd=etcd, advertise_ports=[50051])
    with pytest.raises(InvalidArgument, match="advertise_ports must be in"):
        LocalCluster.start(replicas=1, etcd=etcd, advertise_ports=[0])
