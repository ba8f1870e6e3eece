"""Attack: a rack declared dead in batches also kills an incarnation registered in between.

The leader decides who is dead once per cycle (``expired_workers``), then
writes the decision in batches of 100, one transaction each, releasing the
write lock between batches (coordinator/leader.py ``run_cycle``). Each batch
is planned with ``plan_mark_dead``, which marks any *live* record of the
listed ids dead, whatever its incarnation and however recently it was heard
from. A worker of a later batch that restarts (a new incarnation, registered
and "seen now") while the earlier batches are written is declared dead the
moment its batch runs: a process that registered a fraction of a second ago,
never silent, loses its membership (DESIGN §1: only a worker silent for the
heartbeat timeout is declared dead; §5 invariant 2 counts live member
incarnations), and the job pays an extra generation.

The rack's liveness is aligned by a leader restart (a new term counts every
live member as seen at take-over), so all 201 workers expire in one cycle;
a slow etcd (~0.6 s per write) keeps the three batches apart long enough
for the restart to land between them. Real etcd, a real coordinator, raw
gRPC workers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest

from dtr.coordinator.state import MemberRecord
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.store import EtcdStore, Get
from helpers import cluster_dialing_etcd_through_proxies, wait_until

pytestmark = pytest.mark.integration

RACK = 201  # three batches of at most 100: the victim sorts last, alone in the third
VICTIM = f"rack-{RACK - 1:04d}"
HEARTBEAT_TIMEOUT_S = 4.0
ONE_WAY_DELAY_S = 0.3


@pytest.fixture
def store(etcd: RunningEtcd) -> Iterator[EtcdStore]:
    with EtcdStore(etcd.endpoints, timeout_s=5.0) as opened:
        yield opened


def _record(store: EtcdStore, keys: JobKeys, worker_id: str) -> MemberRecord | None:
    found = store.txn([], [Get(keys.member(worker_id))]).results[0]
    return MemberRecord.decode(found[0].value) if isinstance(found, tuple) and found else None


async def _register_rack(address: str, job: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        gate = asyncio.Semaphore(64)

        async def register(i: int) -> None:
            async with gate:
                await stub.RegisterWorker(
                    pb.RegisterWorkerRequest(
                        header=pb.RequestHeader(job=job), worker_id=f"rack-{i:04d}", capacity=1
                    ),
                    timeout=60,
                )

        await asyncio.gather(*(register(i) for i in range(RACK)))


def test_a_worker_restarted_between_mark_dead_batches_is_not_declared_dead(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    job = f"attack-rack-{uuid.uuid4().hex[:10]}"
    keys = JobKeys(job)

    with cluster_dialing_etcd_through_proxies(
        replicas=1, etcd=etcd, job=job, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S
    ) as (cluster, proxies):
        replica = cluster.leader()
        asyncio.run(_register_rack(replica.address, job))
        replica.restart()  # a new term: every live member counts as seen at take-over
        cluster.leader()
        for proxy in proxies:
            proxy.delay(ONE_WAY_DELAY_S)
        first = _record(store, keys, "rack-0000")
        assert first is not None and first.alive
        wait_until(
            lambda: not _alive(store, keys, "rack-0000"),
            HEARTBEAT_TIMEOUT_S + 5,
            "the first mark-dead batch in etcd",
        )
        assert _alive(store, keys, VICTIM), "the victim's batch must not have run yet"
        # The victim restarts under its id: a new incarnation, seen now.
        channel = grpc.insecure_channel(replica.address)
        answer = pb_grpc.CoordinatorStub(channel).RegisterWorker(
            pb.RegisterWorkerRequest(
                header=pb.RequestHeader(job=job), worker_id=VICTIM, capacity=1
            ),
            timeout=30,
        )
        registered_at = time.monotonic()
        channel.close()
        # The leader logs the cycle's status once every batch was written.
        wait_until(
            lambda: "declared dead" in replica.log_tail(50),
            HEARTBEAT_TIMEOUT_S + 10,
            "the leader's cycle to finish all its mark-dead batches",
        )
        seen_after_s = time.monotonic() - registered_at
        victim = _record(store, keys, VICTIM)
        for proxy in proxies:
            proxy.heal()
    assert victim is not None and victim.incarnation == answer.incarnation
    assert seen_after_s < HEARTBEAT_TIMEOUT_S, "checked well inside the victim's own timeout"
    assert victim.alive, (
        f"{VICTIM} incarnation {answer.incarnation} (registered while the rack's mark-dead "
        f"batches were being written) was declared dead within {seen_after_s:.2f} s of "
        f"registering, never silent; the heartbeat timeout is {HEARTBEAT_TIMEOUT_S} s"
    )


def _alive(store: EtcdStore, keys: JobKeys, worker_id: str) -> bool:
    record = _record(store, keys, worker_id)
    return record is not None and record.alive
