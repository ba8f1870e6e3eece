"""Real coordinator replicas on a real etcd, under the faults DESIGN §4-5 promise to survive.

Each test starts its own 3-replica cluster (``dtr.chaos.cluster.LocalCluster``)
for a job of its own on the session etcd, talks to it over gRPC with the raw
stubs (a tiny leader-following helper below; the worker library comes later),
and kills, pauses or stops replicas by their PIDs.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.coordinator.election import Term
from dtr.etcd import EtcdCluster, RunningEtcd
from dtr.keys import JobKeys
from dtr.proto import LEADER_METADATA_KEY
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.retry import is_not_leader, is_retryable
from dtr.store import EtcdStore, Put
from helpers import wait_until

RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # e.g. a paused replica
)
CALL_TIMEOUT_S = 5.0


class Client:
    """Calls the leader, following NOT_LEADER hints and retrying until a deadline."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self._channels = {a: grpc.insecure_channel(a) for a in cluster.endpoints}
        self._stubs = {a: pb_grpc.CoordinatorStub(c) for a, c in self._channels.items()}
        self.leader_address = cluster.endpoints[0]

    def call(self, method: str, request: Any, timeout_s: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout_s
        addresses = list(self._stubs)
        attempt = 0
        while True:
            address = self.leader_address
            try:
                return getattr(self._stubs[address], method)(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                hint = dict(err.trailing_metadata() or ()).get(LEADER_METADATA_KEY)
                attempt += 1
                self.leader_address = (
                    hint if hint in self._stubs else addresses[attempt % len(addresses)]
                )
                time.sleep(0.02)

    def status(self) -> pb.ClusterStatusResponse:
        return self.call("ClusterStatus", pb.ClusterStatusRequest())

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def start_cluster(etcd: RunningEtcd, **options: Any) -> LocalCluster:
    job = f"t-{uuid.uuid4().hex[:10]}"
    return LocalCluster.start(replicas=3, etcd=etcd, job=job, **options)


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with start_cluster(etcd, lease_ttl_s=2, renew_deadline_s=1.5) as running:
        yield running


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    c = Client(cluster)
    yield c
    c.close()


def register(client: Client, *workers: str) -> None:
    for worker_id in workers:
        client.call("RegisterWorker", pb.RegisterWorkerRequest(worker_id=worker_id, capacity=1.0))


def arrive_until_released(client: Client, name: str, worker_id: str, out: dict[str, Any]) -> None:
    """A worker's barrier loop: long-poll until released (retrying across failover)."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        request = pb.BarrierRequest(name=name, worker_id=worker_id, timeout_s=2.0)
        response = client.call("Barrier", request)
        if response.status != pb.BARRIER_STATUS_WAITING:
            out[worker_id] = response
            return


def log_count(cluster: LocalCluster, needle: str) -> int:
    return sum((r.log_path.read_text().count(needle)) for r in cluster.replicas)


def test_killing_the_leader_mid_barrier_loses_nothing(
    cluster: LocalCluster, client: Client
) -> None:
    register(client, "w0", "w1", "w2", "w3")
    client.call("RegisterDataset", pb.RegisterDatasetRequest(name="tokens", num_shards=64))
    before = client.status()
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=arrive_until_released, args=(Client(cluster), "b1", w, results))
        for w in ("w0", "w1", "w2", "w3")
    ]
    for thread in threads[:2]:
        thread.start()
    keys = JobKeys(cluster.job)
    with EtcdStore(cluster.etcd_endpoints) as store:
        wait_until(
            lambda: len(store.get_prefix(keys.barrier_arrivals_prefix("b1")).kvs) == 2,
            10.0,
            "two arrivals persisted",
        )
    wait_until(
        lambda: (
            [(b.name, b.arrived, b.expected) for b in client.status().open_barriers]
            == [("b1", 2, 4)]
        ),
        10.0,
        "the half-full barrier in ClusterStatus",
    )
    old = cluster.leader()
    old.kill()
    cluster.wait_new_leader(old, timeout_s=15.0)
    # The new leader serves writes (one that leaves membership, and so the barrier, alone).
    client.call("RegisterDataset", pb.RegisterDatasetRequest(name="written-after", num_shards=8))
    for thread in threads[2:]:
        thread.start()
    for thread in threads:
        thread.join(60.0)

    assert sorted(results) == ["w0", "w1", "w2", "w3"]
    assert {r.status for r in results.values()} == {pb.BARRIER_STATUS_RELEASED}
    assert {r.barrier_generation for r in results.values()} == {before.generation}
    assert log_count(cluster, "barrier b1 released") == 1
    after = client.status()
    assert after.generation == before.generation
    assert all(w.alive for w in after.workers)
    assert [(d.name, d.num_shards) for d in after.datasets] == [
        ("tokens", 64),
        ("written-after", 8),
    ]
    assert log_count(cluster, "declared dead") == 0


def test_a_paused_leader_is_fenced_after_it_wakes(cluster: LocalCluster, client: Client) -> None:
    register(client, "w0")
    keys = JobKeys(cluster.job)
    old = cluster.leader()
    with EtcdStore(cluster.etcd_endpoints) as store:
        head = min(store.get_prefix(keys.election_prefix).kvs, key=lambda kv: kv.create_revision)
        old_term = Term(head.key, head.create_revision)
        old.pause()
        try:
            new = cluster.wait_new_leader(old, timeout_s=15.0)
            register(client, "w1")
            state_before = store.get_prefix(keys.members_prefix).kvs
            # A request queued at the paused leader runs when it wakes up.
            stub = pb_grpc.CoordinatorStub(grpc.insecure_channel(old.address))
            queued = stub.RegisterWorker.future(
                pb.RegisterWorkerRequest(worker_id="from-zombie", capacity=1.0), timeout=15.0
            )
        finally:
            old.resume()
        with pytest.raises(grpc.RpcError) as refused:
            queued.result()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert is_not_leader(refused.value) and is_retryable(refused.value)
        # It may not know the new leader yet, but it never points clients at itself.
        hint = dict(refused.value.trailing_metadata() or ()).get(LEADER_METADATA_KEY)
        assert hint in (None, new.address)
        # Its old term can no longer write anything: the fence fails in etcd itself.
        fenced = store.txn([old_term.fence()], [Put(keys.member("from-zombie"), b"{}")])
        assert not fenced.succeeded
        assert store.get_prefix(keys.members_prefix).kvs == state_before
        wait_until(lambda: not old.is_leader(), 10.0, "the woken leader to step down")

        def redirects_to_new_leader() -> bool:
            try:
                stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id="again", capacity=1.0))
            except grpc.RpcError as err:
                hint = dict(err.trailing_metadata() or ()).get(LEADER_METADATA_KEY)
                return err.code() == grpc.StatusCode.FAILED_PRECONDITION and hint == new.address
            return False

        wait_until(redirects_to_new_leader, 10.0, "the woken leader to name the new one")
        assert store.get(keys.member("again")) is None
    assert [r for r in cluster.replicas if r.is_leader()] == [new]


def test_sigterm_hands_leadership_over_well_under_one_ttl(etcd: RunningEtcd) -> None:
    with start_cluster(etcd, lease_ttl_s=5, renew_deadline_s=3.0) as cluster:
        old = cluster.leader()
        started = time.monotonic()
        old.request_stop()
        cluster.wait_new_leader(old, timeout_s=15.0)
        handover_s = time.monotonic() - started
        old.wait_stopped(10.0)
        assert old.returncode == 0
        assert handover_s < 5.0 / 2, f"handover took {handover_s:.2f} s with a 5 s TTL"


def test_a_silent_worker_is_declared_dead_once_and_its_shards_move(etcd: RunningEtcd) -> None:
    with start_cluster(etcd, heartbeat_timeout_s=2.0) as cluster:
        client = Client(cluster)
        register(client, "a", "b", "c")
        client.call("RegisterDataset", pb.RegisterDatasetRequest(name="d", num_shards=300))
        generation = client.status().generation
        stop = threading.Event()

        def beat() -> None:
            while not stop.is_set():
                for worker_id in ("a", "b"):
                    client.call(
                        "Heartbeat", pb.HeartbeatRequest(beat=pb.WorkerBeat(worker_id=worker_id))
                    )
                stop.wait(0.3)

        beater = threading.Thread(target=beat)
        beater.start()
        try:
            wait_until(
                lambda: not {w.id: w.alive for w in client.status().workers}["c"],
                20.0,
                "worker c to be declared dead",
            )
            status = client.status()
            shards = [
                set(
                    client.call(
                        "GetShards", pb.GetShardsRequest(dataset="d", worker_id=w)
                    ).shard_ids
                )
                for w in ("a", "b")
            ]
        finally:
            stop.set()
            beater.join()
        assert status.generation == generation + 1
        assert {w.id: w.alive for w in status.workers} == {"a": True, "b": True, "c": False}
        assert shards[0] | shards[1] == set(range(300)) and not shards[0] & shards[1]
        with pytest.raises(grpc.RpcError) as gone:
            client.call("GetShards", pb.GetShardsRequest(dataset="d", worker_id="c"))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert log_count(cluster, "declared dead c") == 1
        client.close()


BAD_REQUESTS: list[tuple[str, Callable[[], Any], grpc.StatusCode, str]] = [
    (
        "RegisterWorker",
        lambda: pb.RegisterWorkerRequest(worker_id="x" * 10_000, capacity=1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "worker_id",
    ),
    (
        "RegisterWorker",
        lambda: pb.RegisterWorkerRequest(worker_id="ok", capacity=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "capacity",
    ),
    ("Heartbeat", pb.HeartbeatRequest, grpc.StatusCode.INVALID_ARGUMENT, "beat"),
    (
        "Deregister",
        lambda: pb.DeregisterRequest(worker_id=""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "worker_id",
    ),
    (
        "RegisterDataset",
        lambda: pb.RegisterDatasetRequest(name="d", num_shards=0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "num_shards",
    ),
    (
        "RegisterDataset",
        lambda: pb.RegisterDatasetRequest(name="d", num_shards=4_000_000_000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "num_shards",
    ),
    (
        "GetShards",
        lambda: pb.GetShardsRequest(dataset="no-such", worker_id="w0"),
        grpc.StatusCode.NOT_FOUND,
        "dataset",
    ),
    (
        "GetShards",
        lambda: pb.GetShardsRequest(dataset="a/b", worker_id="w0"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dataset",
    ),
    (
        "Barrier",
        lambda: pb.BarrierRequest(name="", worker_id="w0"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "name",
    ),
    (
        "Barrier",
        lambda: pb.BarrierRequest(name="b", worker_id="w0", timeout_s=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "timeout_s",
    ),
    (
        "Barrier",
        lambda: pb.BarrierRequest(name="b", worker_id="stranger"),
        grpc.StatusCode.NOT_FOUND,
        "worker_id",
    ),
    (
        "ClusterStatus",
        lambda: pb.ClusterStatusRequest(header=pb.RequestHeader(job="other")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "header.job",
    ),
]


def test_malformed_requests_name_the_field_and_the_replica_keeps_serving(
    cluster: LocalCluster, client: Client
) -> None:
    register(client, "w0")
    for method, make, code, field in BAD_REQUESTS:
        with pytest.raises(grpc.RpcError) as refused:
            client.call(method, make())
        assert refused.value.code() == code, (method, refused.value.details())
        assert refused.value.details().startswith(field), (method, refused.value.details())
        assert not is_retryable(refused.value), method
    assert all(r.is_alive() for r in cluster.replicas)
    assert [w.id for w in client.status().workers] == ["w0"]


def _write_succeeds(client: Client, worker_id: str) -> Callable[[], bool]:
    def attempt() -> bool:
        try:
            client.call(
                "RegisterWorker",
                pb.RegisterWorkerRequest(worker_id=worker_id, capacity=1),
                timeout_s=0.0,
            )
        except grpc.RpcError:
            return False
        return True

    return attempt


def test_the_coordinator_writes_again_within_a_second_of_an_etcd_restart(
    fresh_etcd: RunningEtcd,
) -> None:
    with start_cluster(fresh_etcd, lease_ttl_s=5, renew_deadline_s=3.0) as cluster:
        client = Client(cluster)
        register(client, "w0")
        fresh_etcd.stop_member(0)
        fresh_etcd.start_member(0)  # returns once etcd reports healthy
        wait_until(_write_succeeds(client, "w1"), 1.0, "a write after the etcd restart")
        client.close()


def test_the_coordinator_rides_out_an_etcd_leader_change(etcd_cluster3: EtcdCluster) -> None:
    with start_cluster(etcd_cluster3, lease_ttl_s=5, renew_deadline_s=3.0) as cluster:
        client = Client(cluster)
        register(client, "w0")
        stopped = next((i for i in range(3) if etcd_cluster3.is_member_leader(i)), None)
        assert stopped is not None, "no etcd member reports itself leader"
        etcd_cluster3.stop_member(stopped)
        survivors = [i for i in range(3) if i != stopped]
        wait_until(
            lambda: any(etcd_cluster3.is_member_leader(i) for i in survivors),
            10.0,
            "etcd to elect a new leader",
        )
        wait_until(_write_succeeds(client, "w1"), 1.0, "a write after the etcd leader change")
        assert {w.id for w in client.status().workers} == {"w0", "w1"}
        client.close()
