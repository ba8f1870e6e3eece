"""The rendezvous RPCs on real coordinator replicas, spoken raw (no dtr.worker client).

What the torchrun backend relies on, at the wire: the compare-and-set's
token is etcd's revision, an add retried with the same request id adds once,
a store read waits for a write instead of polling, followers refuse with the
leader's address, and bad input is refused naming the field. The backend's
own contract suite is test_rendezvous_backend.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.coordinator.rendezvous import ADD_ANSWER_TTL_S
from dtr.etcd import RunningEtcd
from dtr.keys import MAX_RENDEZVOUS_VALUE_BYTES, JobKeys
from dtr.proto import LEADER_METADATA_KEY
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.store import EtcdStore

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=2, etcd=etcd, job=f"r-{uuid.uuid4().hex[:10]}") as started:
        yield started


@pytest.fixture
def leader(cluster: LocalCluster) -> Iterator[pb_grpc.CoordinatorStub]:
    with grpc.insecure_channel(cluster.leader().address) as channel:
        yield pb_grpc.CoordinatorStub(channel)


def header(request_id: str = "") -> pb.RequestHeader:
    return pb.RequestHeader(caller_id="test", client_request_id=request_id or uuid.uuid4().hex)


def set_state(
    stub: pb_grpc.CoordinatorStub, state: bytes, token: int | None, rid: str = "run"
) -> pb.SetRendezvousStateResponse:
    request = pb.SetRendezvousStateRequest(header=header(), rendezvous_id=rid, state=state)
    if token is not None:
        request.token = token
    return stub.SetRendezvousState(request, timeout=10)


def test_compare_and_set_on_etcd_revisions(leader: pb_grpc.CoordinatorStub) -> None:
    empty = leader.GetRendezvousState(
        pb.GetRendezvousStateRequest(header=header(), rendezvous_id="run"), timeout=10
    )
    assert not empty.present

    first = set_state(leader, b"one", None)
    assert first.has_set and first.state == b"one" and first.token > 0

    again = set_state(leader, b"other", None)  # "expect none" but one exists
    assert (again.has_set, again.state, again.token) == (False, b"one", first.token)

    second = set_state(leader, b"two", first.token)
    assert second.has_set and second.token > first.token

    stale = set_state(leader, b"three", first.token)
    assert (stale.has_set, stale.state, stale.token) == (False, b"two", second.token)

    # A retry of an applied call (its answer lost) finds its own bytes: set.
    retried = set_state(leader, b"two", first.token)
    assert retried.has_set and retried.token == second.token

    read = leader.GetRendezvousState(
        pb.GetRendezvousStateRequest(header=header(), rendezvous_id="run"), timeout=10
    )
    assert (read.present, read.state, read.token) == (True, b"two", second.token)

    other = leader.GetRendezvousState(
        pb.GetRendezvousStateRequest(header=header(), rendezvous_id="other-run"), timeout=10
    )
    assert not other.present


def test_add_is_once_per_request_id(leader: pb_grpc.CoordinatorStub) -> None:
    def add(delta: int, request_id: str) -> int:
        request = pb.RendezvousStoreAddRequest(
            header=header(request_id), rendezvous_id="run", key="agents/count", delta=delta
        )
        return int(leader.RendezvousStoreAdd(request, timeout=10).value)

    assert add(1, "first") == 1
    assert add(1, "first") == 1  # the same request again: not added twice
    assert add(5, "second") == 6
    assert add(-2, "third") == 4

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(add(1, f"concurrent-{i}")))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == list(range(5, 13))


def test_add_answers_expire_with_a_lease(cluster: LocalCluster, etcd: RunningEtcd) -> None:
    with grpc.insecure_channel(cluster.leader().address) as channel:
        request = pb.RendezvousStoreAddRequest(
            header=header("kept-for-retries"), rendezvous_id="run", key="n", delta=1
        )
        pb_grpc.CoordinatorStub(channel).RendezvousStoreAdd(request, timeout=10)
    keys = JobKeys(cluster.job)
    with EtcdStore(etcd.endpoints) as store:
        answer = store.get(keys.rendezvous_add("run", "kept-for-retries"))
        counter = store.get(keys.rendezvous_store("run", "n"))
        assert answer is not None and answer.value == b"1" and answer.lease_id != 0
        assert 0 < (store.lease_ttl(answer.lease_id) or 0) <= ADD_ANSWER_TTL_S
        assert counter is not None and counter.lease_id != 0  # expires when the rendezvous is idle


def test_store_read_waits_for_the_write(leader: pb_grpc.CoordinatorStub) -> None:
    def get(keys: list[str], wait_s: float) -> pb.RendezvousStoreGetResponse:
        request = pb.RendezvousStoreGetRequest(
            header=header(), rendezvous_id="run", keys=keys, wait_s=wait_s
        )
        return leader.RendezvousStoreGet(request, timeout=30)

    missing = get(["a/MASTER_ADDR", "a/MASTER_PORT"], 0)
    assert not missing.found and list(missing.missing_keys) == ["a/MASTER_ADDR", "a/MASTER_PORT"]

    answer: list[pb.RendezvousStoreGetResponse] = []
    waiter = threading.Thread(target=lambda: answer.append(get(["a/MASTER_ADDR"], 9)))
    waiter.start()
    entries = [
        pb.RendezvousStoreEntry(key="a/MASTER_ADDR", value=b"127.0.0.1"),
        pb.RendezvousStoreEntry(key="a/MASTER_PORT", value=b"29500"),
    ]
    started = time.monotonic()
    leader.RendezvousStoreSet(
        pb.RendezvousStoreSetRequest(header=header(), rendezvous_id="run", entries=entries),
        timeout=10,
    )
    waiter.join(timeout=15)
    assert answer and answer[0].found and list(answer[0].values) == [b"127.0.0.1"]
    # Woken by the write, not by the end of its 9 s wait.
    assert time.monotonic() - started < 8

    both = get(["a/MASTER_PORT", "a/MASTER_ADDR"], 0)
    assert both.found and list(both.values) == [b"29500", b"127.0.0.1"]


def test_a_follower_names_the_leader(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = next(r for r in cluster.replicas if r is not leader)
    with grpc.insecure_channel(follower.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            set_state(stub, b"x", None)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    trailers = dict(caught.value.trailing_metadata() or ())
    assert trailers.get(LEADER_METADATA_KEY) == leader.address


@pytest.mark.parametrize(
    ("request_message", "method", "names"),
    [
        (
            pb.GetRendezvousStateRequest(rendezvous_id="bad/id"),
            "GetRendezvousState",
            "rendezvous_id",
        ),
        (
            pb.SetRendezvousStateRequest(
                rendezvous_id="run", state=b"x" * (MAX_RENDEZVOUS_VALUE_BYTES + 1)
            ),
            "SetRendezvousState",
            "state: is 1,048,577 bytes; the limit is 1,048,576 bytes",
        ),
        (pb.RendezvousStoreSetRequest(rendezvous_id="run"), "RendezvousStoreSet", "entries"),
        (
            pb.RendezvousStoreSetRequest(
                rendezvous_id="run",
                entries=[pb.RendezvousStoreEntry(key="k"), pb.RendezvousStoreEntry(key="k")],
            ),
            "RendezvousStoreSet",
            "keys must be distinct",
        ),
        (
            pb.RendezvousStoreGetRequest(rendezvous_id="run", keys=["k"], wait_s=float("nan")),
            "RendezvousStoreGet",
            "wait_s",
        ),
        (
            pb.RendezvousStoreGetRequest(rendezvous_id="run", keys=["k" * 513]),
            "RendezvousStoreGet",
            "keys must be 1-512 characters",
        ),
    ],
)
def test_bad_input_names_the_field(
    leader: pb_grpc.CoordinatorStub, request_message: object, method: str, names: str
) -> None:
    request_message.header.CopyFrom(header())  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as caught:
        getattr(leader, method)(request_message, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert names in (caught.value.details() or "")


def test_add_without_a_request_id_is_refused(leader: pb_grpc.CoordinatorStub) -> None:
    request = pb.RendezvousStoreAddRequest(
        header=pb.RequestHeader(caller_id="test"), rendezvous_id="run", key="n", delta=1
    )
    with pytest.raises(grpc.RpcError) as caught:
        leader.RendezvousStoreAdd(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "client_request_id" in (caught.value.details() or "")
