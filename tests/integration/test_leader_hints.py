"""Leader hints are followed only to addresses the caller trusts (issue 15).

A replica that advertises an address nobody configured (misconfigured, or
hostile) answers NOT_LEADER with that address as the leader hint. Over
plaintext, a client that followed it would hand its bearer token to whoever
listens there. Here each replica of a real two-replica cluster advertises a
"stray" gRPC listener of this test that records every call it receives, and
the clients are given real replica addresses: the stray listeners must see
no call, let alone a token (``dtr.worker.client.hint_allowed``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.cli.status_command import ask_cluster_status
from dtr.errors import CoordinatorUnavailable, NotLeader
from dtr.etcd import RunningEtcd, pick_free_ports
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.security import ClientSecurity
from dtr.worker.client import CoordinatorClient
from helpers import wait_until

pytestmark = pytest.mark.integration

TOKEN = "worker-" + "7" * 32
SHORT = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=2.0)


@dataclass
class StrayListener:
    """A gRPC server on a loopback port that records each call's method and metadata."""

    port: int
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    def record(self, details: grpc.HandlerCallDetails) -> None:
        metadata = {k: v for k, v in details.invocation_metadata if isinstance(v, str)}  # type: ignore[attr-defined]
        with self._lock:
            self.calls.append((details.method, metadata))  # type: ignore[attr-defined]

    @property
    def tokens_seen(self) -> list[str]:
        with self._lock:
            return [m["authorization"] for _, m in self.calls if "authorization" in m]


class _Recording(grpc.GenericRpcHandler):
    def __init__(self, listener: StrayListener) -> None:
        self.listener = listener

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        self.listener.record(handler_call_details)

        def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.UNAVAILABLE, "stray listener")
            raise AssertionError("abort raises")

        return grpc.unary_unary_rpc_method_handler(refuse)


def stray_listener(port: int) -> StrayListener:
    listener = StrayListener(port)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_Recording(listener),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    listener.server = server
    return listener


@dataclass
class StrayCluster:
    cluster: LocalCluster
    strays: list[StrayListener]
    leader: str  # the leader's own listen address
    follower: str  # the follower's own listen address


def _leader_hint(address: str, job: str) -> str:
    """What ``address`` answers as the leader (empty while it knows none)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/dtr.v1.Coordinator/ClusterStatus",
            request_serializer=pb.ClusterStatusRequest.SerializeToString,
            response_deserializer=pb.ClusterStatusResponse.FromString,
        )
        request = pb.ClusterStatusRequest(header=pb.RequestHeader(job=job, caller_id="probe"))
        response: pb.ClusterStatusResponse = call(request, timeout=5.0)
        return "" if response.header.is_leader else response.header.leader_address


@pytest.fixture
def stray(etcd: RunningEtcd) -> Iterator[StrayCluster]:
    """Two replicas, each advertising a stray listener instead of its own address."""
    ports = pick_free_ports(4)
    strays = [stray_listener(port) for port in ports[2:]]
    try:
        with LocalCluster.start(
            replicas=2,
            etcd=etcd,
            job=f"hint-{uuid.uuid4().hex[:10]}",
            ports=ports[:2],
            advertise_ports=ports[2:],
        ) as cluster:
            leader = cluster.leader().address
            follower = next(a for a in cluster.endpoints if a != leader)
            wait_until(
                lambda: _leader_hint(follower, cluster.job) != "", 20.0, "the follower's hint"
            )
            assert _leader_hint(follower, cluster.job).endswith(tuple(f":{s.port}" for s in strays))
            yield StrayCluster(cluster, strays, leader, follower)
    finally:
        for listener in strays:
            listener.server.stop(None)


def _client(addresses: list[str], job: str) -> CoordinatorClient:
    return CoordinatorClient(
        addresses, job=job, caller_id="hint-test", policy=SHORT, attempt_timeout_s=1.0,
        security=ClientSecurity(token=TOKEN),
    )  # fmt: skip


def _register(client: CoordinatorClient) -> Any:
    return client.call(
        "RegisterDataset",
        lambda: pb.RegisterDatasetRequest(name="ds", num_shards=4),
        operation="register",
        mutating=True,
    )


def test_a_stray_hint_is_not_dialled_with_the_token(
    stray: StrayCluster, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client([stray.follower], stray.cluster.job)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="dtr.worker.client"),
            pytest.raises((NotLeader, CoordinatorUnavailable)),
        ):
            _register(client)
    finally:
        client.close()
    assert [s.calls for s in stray.strays] == [[], []]
    ignored = [r for r in caplog.records if "ignoring leader hint" in r.getMessage()]
    assert len(ignored) == 1, [r.getMessage() for r in caplog.records]


def test_configured_replicas_still_reach_the_leader(stray: StrayCluster) -> None:
    """Given every replica, the client finds the leader in turn, without the hint."""
    client = _client([stray.follower, stray.leader], stray.cluster.job)
    try:
        response = _register(client)
        assert response.created  # type: ignore[attr-defined]
        assert client.leader_address == stray.leader
    finally:
        client.close()
    assert [s.calls for s in stray.strays] == [[], []]


def test_status_does_not_follow_a_stray_hint(stray: StrayCluster) -> None:
    """``dtr status`` shows the follower's answer rather than dialling the stray address."""
    response = ask_cluster_status(
        [stray.follower], stray.cluster.job, 5.0, ClientSecurity(token=TOKEN)
    )
    assert response.job == stray.cluster.job
    assert not response.header.is_leader
    assert [s.calls for s in stray.strays] == [[], []]
