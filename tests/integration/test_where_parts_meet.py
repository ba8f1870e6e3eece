"""Issue 15's coordinator-side breaks, each on real etcd and real coordinator processes.

- a rack of 500 workers failing at once is declared dead within the
  heartbeat timeout plus one second (every mark-dead transaction within
  etcd's 128 operations);
- a worker restarted under its own id is a new incarnation: its old
  arrival never releases a barrier for it, and the old process is refused;
- a commit whose call is cancelled while its etcd write is in flight still
  counts: the step completes when the last member commits;
- a job whose etcd prefix is wiped is a new job life, and a commit made for
  the old life is refused.

Workers are raw gRPC stubs here (no worker library), so what is tested is
the coordinator's answer, not a client's retries.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.coordinator.state import MemberRecord
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.proto import ERROR_KIND_METADATA_KEY
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.store import Delete, EtcdStore, Get
from helpers import cluster_dialing_etcd_through_proxies, wait_until

pytestmark = pytest.mark.integration

RACK = 500
HEARTBEAT_TIMEOUT_S = 3.0


def unique_job(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def member_records(store: EtcdStore, keys: JobKeys) -> list[MemberRecord]:
    found = store.txn([], [Get(keys.members_prefix, prefix=True)]).results[0]
    assert isinstance(found, tuple)
    return [MemberRecord.decode(kv.value) for kv in found]


@pytest.fixture
def store(etcd: RunningEtcd) -> Iterator[EtcdStore]:
    with EtcdStore(etcd.endpoints, timeout_s=5.0) as opened:
        yield opened


# -- a rack fails at once ------------------------------------------------------------


async def _register_and_beat_rack(address: str, job: str) -> float:
    """Register ``RACK`` workers, then one beat each, all at once; when the last beat landed."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        header = pb.RequestHeader(job=job)
        gate = asyncio.Semaphore(64)

        async def register(i: int) -> int:
            async with gate:
                response = await stub.RegisterWorker(
                    pb.RegisterWorkerRequest(header=header, worker_id=f"rack-{i:04d}", capacity=1),
                    timeout=60,
                )
                return int(response.incarnation)

        incarnations = await asyncio.gather(*(register(i) for i in range(RACK)))

        async def beat(i: int) -> None:
            beat = pb.WorkerBeat(worker_id=f"rack-{i:04d}", incarnation=incarnations[i])
            answer = await stub.Heartbeat(pb.HeartbeatRequest(header=header, beat=beat), timeout=30)
            assert answer.status == pb.WORKER_STATUS_OK

        await asyncio.gather(*(beat(i) for i in range(RACK)))
        return time.monotonic()


def test_a_rack_of_500_workers_failing_at_once_is_declared_dead_within_the_timeout(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    job = unique_job("rack")
    keys = JobKeys(job)
    with LocalCluster.start(
        replicas=1, etcd=etcd, job=job, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S
    ) as cluster:
        leader = cluster.leader()
        last_beat = asyncio.run(_register_and_beat_rack(leader.address, job))
        deadline_s = HEARTBEAT_TIMEOUT_S + 1.0 - (time.monotonic() - last_beat)

        def all_dead() -> bool:
            records = member_records(store, keys)
            return len(records) == RACK and not any(r.alive for r in records)

        wait_until(all_dead, deadline_s, f"{RACK} workers declared dead within timeout + 1 s")
        print(f"{RACK} declared dead {time.monotonic() - last_beat:.2f} s after their last beat")
        # The leader still detects deaths afterwards: a newcomer that goes
        # silent is declared dead too (the old failure wedged the loop).
        channel = grpc.insecure_channel(leader.address)
        stub = pb_grpc.CoordinatorStub(channel)
        stub.RegisterWorker(
            pb.RegisterWorkerRequest(
                header=pb.RequestHeader(job=job), worker_id="late", capacity=1
            ),
            timeout=10,
        )
        channel.close()
        wait_until(
            lambda: any(r.worker_id == "late" and not r.alive for r in member_records(store, keys)),
            HEARTBEAT_TIMEOUT_S + 2.0,
            "a later death declared as well",
        )


# -- same id, new process, old arrival ---------------------------------------------


class RawWorker:
    """One worker id over a raw stub: registers, arrives, commits; answers as they come."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, job: str, worker_id: str) -> None:
        self.stub, self.job, self.worker_id = stub, job, worker_id
        self.incarnation = 0
        self.generation = 0
        self.job_life = ""

    def register(self) -> RawWorker:
        response = self.stub.RegisterWorker(
            pb.RegisterWorkerRequest(
                header=pb.RequestHeader(job=self.job), worker_id=self.worker_id, capacity=1
            ),
            timeout=10,
        )
        self.incarnation, self.job_life = int(response.incarnation), response.job_life
        self.generation = int(response.header.generation)
        return self

    def arrive(
        self, name: str, *, wait_s: float = 0.3, incarnation: int | None = None
    ) -> pb.BarrierResponse:
        response: pb.BarrierResponse = self.stub.Barrier(
            pb.BarrierRequest(
                header=pb.RequestHeader(job=self.job),
                name=name,
                worker_id=self.worker_id,
                generation=self.generation,
                timeout_s=wait_s,
                incarnation=self.incarnation if incarnation is None else incarnation,
            ),
            timeout=wait_s + 10,
        )
        self.generation = max(self.generation, int(response.header.generation))
        return response


@pytest.fixture
def single(etcd: RunningEtcd) -> Iterator[tuple[LocalCluster, pb_grpc.CoordinatorStub]]:
    with LocalCluster.start(replicas=1, etcd=etcd, job=unique_job("meet")) as cluster:
        channel = grpc.insecure_channel(cluster.leader().address)
        yield cluster, pb_grpc.CoordinatorStub(channel)
        channel.close()


def test_an_arrival_of_a_restarted_workers_old_process_never_releases_the_barrier(
    single: tuple[LocalCluster, pb_grpc.CoordinatorStub],
) -> None:
    cluster, stub = single
    w, a, b = (RawWorker(stub, cluster.job, i).register() for i in ("w", "a", "b"))
    for worker in (w, a, b):
        worker.generation = b.generation
    assert w.arrive("b").status in (pb.BARRIER_STATUS_WAITING, pb.BARRIER_STATUS_TIMEOUT)
    old_incarnation = w.incarnation
    w.register()  # kill -9 and restart under the same id, before any timeout
    assert w.incarnation == old_incarnation + 1 and w.generation > a.generation

    # The others arrive: not released on the strength of the dead process's arrival.
    answers = [x.arrive("b").status for x in (a, b) for _ in range(2)]
    assert pb.BARRIER_STATUS_RELEASED not in answers
    assert answers[-1] in (pb.BARRIER_STATUS_WAITING, pb.BARRIER_STATUS_TIMEOUT)

    # The leftover old process is refused, and cannot arrive for its successor.
    with pytest.raises(grpc.RpcError) as refused:
        w.arrive("b", incarnation=old_incarnation)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    kinds = dict(refused.value.trailing_metadata() or ())
    assert kinds.get(ERROR_KIND_METADATA_KEY) == "stale-incarnation"

    # The live incarnation's own arrival releases it for everyone.
    assert w.arrive("b", wait_s=5).status == pb.BARRIER_STATUS_RELEASED
    assert a.arrive("b").status == pb.BARRIER_STATUS_RELEASED


def test_a_barrier_released_without_an_incarnation_answers_missed_every_time(
    single: tuple[LocalCluster, pb_grpc.CoordinatorStub],
) -> None:
    cluster, stub = single
    a, b = (
        RawWorker(stub, cluster.job, "a").register(),
        RawWorker(stub, cluster.job, "b").register(),
    )
    a.generation = b.generation
    a.arrive("step-5")
    assert b.arrive("step-5", wait_s=5).status == pb.BARRIER_STATUS_RELEASED
    b.register()  # b restarts (or was declared dead and rejoins): a new incarnation
    for _ in range(3):
        assert b.arrive("step-5").status == pb.BARRIER_STATUS_MISSED
    latecomer = RawWorker(stub, cluster.job, "c").register()
    assert latecomer.arrive("step-5").status == pb.BARRIER_STATUS_MISSED
    assert a.arrive("step-5").status == pb.BARRIER_STATUS_RELEASED  # a's retry still released


# -- a call cancelled mid-write ----------------------------------------------------


def _commit(worker: RawWorker, step: int) -> pb.CommitCheckpointRequest:
    return pb.CommitCheckpointRequest(
        header=pb.RequestHeader(job=worker.job),
        step=step,
        worker_id=worker.worker_id,
        generation=worker.generation,
        incarnation=worker.incarnation,
        job_life=worker.job_life,
        part=pb.CheckpointPart(
            uri=f"file:///ckpt/step-{step}/{worker.worker_id}.dtr",
            size_bytes=10,
            checksum=pb.Checksum(algorithm=pb.CHECKSUM_ALGORITHM_CRC32C, hex_digest="0a0b0c0d"),
            format_version=1,
        ),
    )


def _exists(store: EtcdStore, key: str) -> bool:
    return bool(store.txn([], [Get(key)]).results[0])


def test_a_commit_cancelled_while_its_write_is_in_flight_still_completes_the_step(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    job = unique_job("cancel")
    keys = JobKeys(job)

    with cluster_dialing_etcd_through_proxies(replicas=1, etcd=etcd, job=job) as (cluster, proxies):
        channel = grpc.insecure_channel(cluster.leader().address)
        stub = pb_grpc.CoordinatorStub(channel)
        a, b, c = (RawWorker(stub, cluster.job, i).register() for i in ("a", "b", "c"))
        a.generation = b.generation = c.generation
        # c's commit loads step 7 into the leader's checkpoint book, so a's
        # commit below goes straight to its write: the call is cancelled while
        # that transaction is in flight, not while step 7 is being read.
        stub.CommitCheckpoint(_commit(c, 7), timeout=10)
        for proxy in proxies:
            proxy.delay(0.08)  # each etcd round trip ~0.16 s: longer than a's deadline
        with pytest.raises(grpc.RpcError) as cut:
            stub.CommitCheckpoint(_commit(a, 7), timeout=0.1)
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for proxy in proxies:
            proxy.heal()
        # The scenario: the transaction applied although its caller left.
        part_a = keys.checkpoint_commit(7, "a")
        wait_until(lambda: _exists(store, part_a), 10, "a's cancelled commit to apply")
        answer = stub.CommitCheckpoint(_commit(b, 7), timeout=10)
        latest = stub.GetLatestCheckpoint(
            pb.GetLatestCheckpointRequest(header=pb.RequestHeader(job=cluster.job)), timeout=10
        )
        channel.close()
        assert answer.step_complete, "a's and c's commits applied, so b's completes step 7"
        assert (latest.has_checkpoint, latest.step) == (True, 7)


# -- a new job over an old job's name --------------------------------------------------


def test_a_wiped_job_is_a_new_life_and_refuses_the_old_lifes_commits(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    job = unique_job("life")
    keys = JobKeys(job)
    with LocalCluster.start(replicas=1, etcd=etcd, job=job) as cluster:
        channel = grpc.insecure_channel(cluster.leader().address)
        stub = pb_grpc.CoordinatorStub(channel)
        old = RawWorker(stub, job, "w").register()
        assert old.job_life and old.job_life.count("/") == 1
        store.txn([], [Delete(keys.prefix, prefix=True)])  # the job's etcd state is gone
        new = RawWorker(stub, job, "w")
        wait_until(lambda: _registers(new), 20, "the job to come back as a new life")
        assert new.job_life and new.job_life != old.job_life
        with pytest.raises(grpc.RpcError) as refused:
            stub.CommitCheckpoint(_commit(_as_of(old, new), 1), timeout=10)
        channel.close()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    kinds = dict(refused.value.trailing_metadata() or ())
    assert kinds.get(ERROR_KIND_METADATA_KEY) == "wrong-job-life"


def _registers(worker: RawWorker) -> bool:
    try:
        worker.register()
    except grpc.RpcError:
        return False
    return True


def _as_of(old: RawWorker, new: RawWorker) -> RawWorker:
    """The new life's worker, but with a record stamped for the old life."""
    stale = RawWorker(new.stub, new.job, new.worker_id)
    stale.incarnation, stale.generation, stale.job_life = (
        new.incarnation,
        new.generation,
        old.job_life,
    )
    return stale


# -- one etcd timeout, every barrier ------------------------------------------------


def test_a_write_timing_out_wakes_barrier_waiters_instead_of_leaving_them_to_their_poll(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """A write whose outcome is unknown makes the leader re-read its cache, barriers included.

    The waiters of the dropped barrier states must be told at once (UNAVAILABLE:
    retry), not left to sit out a long poll nobody will ever answer. A long
    lease keeps the leadership out of it; only the write times out.
    """
    job = unique_job("stale")
    options = ("--lease-ttl-s", "10", "--renew-deadline-s", "8")
    timeouts = ("--etcd-write-timeout-s", "0.5", "--etcd-read-timeout-s", "5")
    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=job, extra_args=(*options, *timeouts)
    ) as (cluster, proxies):
        channel = grpc.insecure_channel(cluster.leader().address)
        stub = pb_grpc.CoordinatorStub(channel)
        a, b = (RawWorker(stub, job, i).register() for i in ("a", "b"))
        a.generation = b.generation
        answer: list[object] = []

        def wait_at_barrier() -> None:
            started = time.monotonic()
            try:
                answer.append(a.arrive("b", wait_s=9.0).status)
            except grpc.RpcError as err:
                answer.append(err.code())
            answer.append(time.monotonic() - started)

        waiter = threading.Thread(target=wait_at_barrier)
        waiter.start()
        arrival = JobKeys(job).barrier_arrival("b", "a")
        wait_until(lambda: _exists(store, arrival), 10, "a's arrival recorded")
        for proxy in proxies:
            proxy.delay(0.4)  # a round trip of ~0.8 s: past the 0.5 s write timeout
        with pytest.raises(grpc.RpcError):  # its writes time out; the cache goes stale
            stub.RegisterDataset(
                pb.RegisterDatasetRequest(header=pb.RequestHeader(job=job), name="d", num_shards=8),
                timeout=4,
            )
        for proxy in proxies:
            proxy.heal()
        waiter.join(15)
        channel.close()
    status, elapsed_s = answer
    assert status == grpc.StatusCode.UNAVAILABLE, f"answered {status} after {elapsed_s:.1f} s"
    assert isinstance(elapsed_s, float) and elapsed_s < 6.0
