"""Attack: an old incarnation's arrival, still queued in the leader, counts for its successor.

DESIGN §5 invariant 2: "an arrival made by an earlier incarnation never
counts for a later one". The leader checks an arrival against its view when
the call comes in, then only queues the worker id (``Barriers.pending``); the
arrival is stamped with an incarnation only when the flusher writes it, and
it takes that incarnation from the view *at write time*. When the worker is
restarted under its id while that write waits for the write lock (a slow
etcd makes every write take a while), and another member reopens the barrier
under the new generation before the flusher plans, the dead process's
arrival is written as the new incarnation's: the barrier releases although
the live process never arrived.

Order of the leader's write lock, forced by a slow etcd (each write ~0.8 s):
``RegisterWorker(w)`` (the restart, holding the lock) → ``RegisterDataset``
(any write, queued) → the flusher's write of w's old arrival (queued). While
the dataset write runs, x arrives under the new generation and reopens the
barrier. Workers are raw gRPC stubs against a real coordinator and etcd.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import grpc
import pytest

from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.store import EtcdStore, Get
from helpers import cluster_dialing_etcd_through_proxies, wait_until

pytestmark = pytest.mark.integration

ONE_WAY_DELAY_S = 0.4


@pytest.fixture
def store(etcd: RunningEtcd) -> Iterator[EtcdStore]:
    with EtcdStore(etcd.endpoints, timeout_s=5.0) as opened:
        yield opened


def _register(stub: pb_grpc.CoordinatorStub, job: str, worker_id: str) -> pb.RegisterWorkerResponse:
    request = pb.RegisterWorkerRequest(
        header=pb.RequestHeader(job=job), worker_id=worker_id, capacity=1
    )
    response: pb.RegisterWorkerResponse = stub.RegisterWorker(request, timeout=20)
    return response


def _arrival(
    job: str, name: str, worker_id: str, *, generation: int, incarnation: int, wait_s: float
) -> pb.BarrierRequest:
    return pb.BarrierRequest(
        header=pb.RequestHeader(job=job),
        name=name,
        worker_id=worker_id,
        generation=generation,
        timeout_s=wait_s,
        incarnation=incarnation,
    )


def _generation(store: EtcdStore, keys: JobKeys) -> int:
    found = store.txn([], [Get(keys.generation)]).results[0]
    return int(found[0].value) if isinstance(found, tuple) and found else 0


def test_a_dead_incarnations_queued_arrival_never_releases_the_barrier_for_its_successor(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    job = f"attack-pending-{uuid.uuid4().hex[:10]}"
    keys = JobKeys(job)

    with cluster_dialing_etcd_through_proxies(replicas=1, etcd=etcd, job=job) as (cluster, proxies):
        channel = grpc.insecure_channel(cluster.leader().address)
        stub = pb_grpc.CoordinatorStub(channel)
        w_old = _register(stub, job, "w")
        x = _register(stub, job, "x")
        g = int(x.header.generation)
        # Load barrier "b" into the leader's cache without any arrival: an
        # arrival for a generation that does not exist loads it, then is refused.
        loaded = stub.Barrier(
            _arrival(job, "b", "x", generation=g + 100, incarnation=x.incarnation, wait_s=0.1),
            timeout=10,
        )
        assert loaded.status == pb.BARRIER_STATUS_MEMBERSHIP_CHANGED

        for proxy in proxies:
            proxy.delay(ONE_WAY_DELAY_S)
        # w is kill -9'd and restarted under its id: the registration holds the lock.
        restart = stub.RegisterWorker.future(
            pb.RegisterWorkerRequest(header=pb.RequestHeader(job=job), worker_id="w", capacity=1),
            timeout=30,
        )
        wait_until(lambda: _generation(store, keys) > g, 10, "the restart's write in etcd")
        # While its answer is still on the way back: any write queues next, then
        # the old process's arrival (sent before it died) comes in, checked at g.
        other_write = stub.RegisterDataset.future(
            pb.RegisterDatasetRequest(header=pb.RequestHeader(job=job), name="d", num_shards=4),
            timeout=30,
        )
        old_arrival = stub.Barrier.future(
            _arrival(job, "b", "w", generation=g, incarnation=w_old.incarnation, wait_s=5.0),
            timeout=30,
        )
        w_new = restart.result()
        assert w_new.incarnation == w_old.incarnation + 1
        g_new = int(w_new.header.generation)
        assert g_new > g
        # x arrives under the new generation while the dataset write runs.
        x_arrival = stub.Barrier.future(
            _arrival(job, "b", "x", generation=g_new, incarnation=x.incarnation, wait_s=4.0),
            timeout=30,
        )
        answer = x_arrival.result()
        other_write.result()
        old_arrival.exception()  # whatever it got; only the barrier's fate matters
        for proxy in proxies:
            proxy.heal()
        stored = store.txn([], [Get(keys.barrier_arrival("b", "w"))]).results[0]
        channel.close()

    written = json.loads(stored[0].value) if isinstance(stored, tuple) and stored else None
    assert answer.status != pb.BARRIER_STATUS_RELEASED, (
        f"barrier 'b' released for generation {g_new} although w's live incarnation "
        f"{w_new.incarnation} never arrived; w's arrival record in etcd: {written} "
        f"(written from incarnation {w_old.incarnation}'s queued arrival)"
    )
