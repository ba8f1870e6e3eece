"""dtr.worker against real coordinator processes: failover, outages, membership, bad input.

Every test runs its own job on the session etcd with real ``dtr coordinator``
replicas (``LocalCluster``) and real ``Worker`` objects in this process.
Partitions through a fault-injecting proxy are in test_worker_partition.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.errors import (
    BarrierMissed,
    BarrierTimeout,
    CoordinatorUnavailable,
    InvalidArgument,
    NotFound,
    WorkerSuperseded,
    WrongJob,
)
from dtr.etcd import RunningEtcd
from dtr.retry import RetryPolicy
from dtr.worker import ShardAssignment, ShardSampler, Worker
from helpers import wait_until

pytestmark = pytest.mark.integration

NUM_SHARDS = 64


def unique_job() -> str:
    return f"w-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    """Three replicas of a fresh job; heartbeats time out after 4 s."""
    with LocalCluster.start(
        replicas=3, etcd=etcd, job=unique_job(), heartbeat_timeout_s=4.0
    ) as started:
        yield started


@pytest.fixture
def single(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    """One replica of a fresh job, for tests that need no failover."""
    with LocalCluster.start(
        replicas=1, etcd=etcd, job=unique_job(), heartbeat_timeout_s=4.0
    ) as started:
        yield started


def join(cluster: LocalCluster, worker_id: str, **options: object) -> Worker:
    return Worker(cluster.coordinators, worker_id=worker_id, job=cluster.job, **options)  # type: ignore[arg-type]


def assert_partition(assignments: Sequence[ShardAssignment]) -> None:
    """Every shard has exactly one owner among ``assignments``, all of one generation."""
    assert len({a.generation for a in assignments}) == 1, assignments
    owned = [s for a in assignments for s in a.shard_ids]
    assert sorted(owned) == list(range(NUM_SHARDS))
    counts = [len(a.shard_ids) for a in assignments]
    assert all(a.max_member_shards == max(counts) for a in assignments)
    assert all(a.min_member_shards == min(counts) for a in assignments)
    assert not any(a.stale for a in assignments)


def barrier_all(workers: Sequence[Worker], name: str, timeout_s: float = 30.0) -> set[int]:
    """Every worker waits at ``name`` on its own thread; returns the released generations."""
    results: list[int | BaseException] = []

    def arrive(worker: Worker) -> None:
        try:
            results.append(worker.barrier(name, timeout_s=timeout_s))
        except BaseException as err:  # reported below, in the test's thread
            results.append(err)

    threads = [threading.Thread(target=arrive, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s + 10)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert len(results) == len(workers)
    return {r for r in results if isinstance(r, int)}


def test_workers_keep_getting_correct_shards_across_a_leader_kill(cluster: LocalCluster) -> None:
    with join(cluster, "w0") as w0, join(cluster, "w1") as w1:
        assert w0.register_dataset("tokens", NUM_SHARDS) is True
        assert w1.register_dataset("tokens", NUM_SHARDS) is False
        before = [w0.shard_assignment("tokens", 0), w1.shard_assignment("tokens", 0)]
        assert_partition(before)
        assert barrier_all([w0, w1], "before-kill") == {before[0].generation}

        old = cluster.leader()
        old.kill()
        epoch = 1
        while not (new := cluster.leaders()) or new == [old]:  # calls never fail meanwhile
            during = [w0.shard_assignment("tokens", epoch), w1.shard_assignment("tokens", epoch)]
            assert [a.shard_ids for a in during] == [a.shard_ids for a in before]
            epoch += 1
        assert barrier_all([w0, w1], "after-kill") == {before[0].generation}
        after = [w0.shard_assignment("tokens", epoch), w1.shard_assignment("tokens", epoch)]
        assert_partition(after)
        assert [a.shard_ids for a in after] == [a.shard_ids for a in before]
        assert w0.leader_address == new[0].address


def test_a_worker_leaving_moves_its_shards_to_the_survivor(single: LocalCluster) -> None:
    with join(single, "w0") as w0:
        w0.register_dataset("tokens", NUM_SHARDS)
        with join(single, "w1") as w1:
            both = [w0.shard_assignment("tokens", 0), w1.shard_assignment("tokens", 0)]
            assert_partition(both)
        alone = w0.shard_assignment("tokens", 1)
        assert alone.shard_ids == tuple(range(NUM_SHARDS))
        assert alone.generation > both[0].generation
        assert alone.num_members == 1


@pytest.mark.parametrize("drop_last", [False, True])
def test_samplers_of_two_workers_cover_the_dataset_once_and_the_survivor_takes_over(
    single: LocalCluster, drop_last: bool
) -> None:
    num_samples = 155  # 16 shards of 10, the last one short
    with join(single, "w0") as w0:
        w0.register_dataset("images", 16)
        with join(single, "w1") as w1:
            samplers = [
                ShardSampler(
                    w, "images", shard_size=10, num_samples=num_samples, drop_last=drop_last
                )
                for w in (w0, w1)
            ]
            epoch = [list(s) for s in samplers]
            assert len(epoch[0]) == len(epoch[1]) == len(samplers[0]) > 0
            together = epoch[0] + epoch[1]
            if drop_last:
                assert len(set(together)) == len(together), "nothing twice when dropping"
            else:
                assert set(together) == set(range(num_samples))
                assert len(together) - num_samples == len(together) - len(set(together))
            assert {s.assignment.generation for s in samplers if s.assignment} == {w1.generation}
        samplers[0].set_epoch(1)
        survivor = list(samplers[0])
        assert samplers[0].assignment is not None and samplers[0].assignment.num_members == 1
        assert set(survivor) == set(range(num_samples))  # alone, it owns every shard


def test_with_every_coordinator_down_shards_come_from_cache_and_barriers_give_up(
    cluster: LocalCluster,
) -> None:
    with join(cluster, "w0", stale_read_deadline_s=1.0) as w0:
        w0.register_dataset("tokens", NUM_SHARDS)
        fresh = w0.shard_assignment("tokens", 0)
        for replica in cluster.replicas:
            replica.kill()

        started = time.monotonic()
        stale = w0.shard_assignment("tokens", 1)
        assert stale.stale and stale.epoch == 1
        assert stale.shard_ids == fresh.shard_ids
        assert time.monotonic() - started < 5.0, "a cached read must not wait the full deadline"
        with pytest.raises(CoordinatorUnavailable, match="barrier 'outage'"):
            w0.barrier("outage", timeout_s=2.0)

        for replica in cluster.replicas:
            replica.restart()
        cluster.leader(timeout_s=30)
        acks = w0._heartbeats.acks
        wait_until(lambda: w0._heartbeats.acks > acks, 30, "heartbeats to reach the new leader")
        wait_until(
            lambda: not w0.shard_assignment("tokens", 2).stale, 30, "a fresh assignment again"
        )
        assert w0.barrier("healed", timeout_s=30) == w0.generation


def test_heartbeats_keep_a_worker_alive_past_the_timeout_on_streams_and_unary_calls(
    single: LocalCluster,
) -> None:
    with (
        join(single, "streamer", heartbeat_interval_s=0.2) as streamer,
        join(single, "unary", heartbeat_interval_s=0.2, heartbeat_stream=False) as unary,
    ):
        generation = unary.generation
        assert streamer._heartbeats.use_stream and not unary._heartbeats.use_stream
        streamer.report_progress(42, samples_per_s=128.5)
        # Beats answered for longer than the 4 s timeout: nobody was declared dead.
        wait_until(lambda: unary._heartbeats.acks >= 25, 30, "25 unary beats")
        wait_until(lambda: streamer._heartbeats.acks >= 25, 30, "25 streamed beats")
        status = single.status()
        workers = {w.id: w for w in status.workers}
        assert workers["streamer"].alive and workers["unary"].alive
        assert (workers["streamer"].step, workers["streamer"].samples_per_s) == (42, 128.5)
        assert status.generation == generation


def test_closing_a_worker_deregisters_it(single: LocalCluster) -> None:
    staying = join(single, "staying")
    try:
        with join(single, "leaving"):
            joined = staying.generation
        wait_until(
            lambda: [w.id for w in single.status().workers if w.alive] == ["staying"],
            30,
            "the leaving worker to be gone",
        )
        assert single.status().generation > joined
    finally:
        staying.close()


def test_a_barrier_names_the_missing_worker_when_it_times_out(single: LocalCluster) -> None:
    with (
        join(single, "punctual", heartbeat_interval_s=0.2) as punctual,
        join(single, "late") as late,
    ):
        # A barrier is for the membership the worker knows: it learns the late
        # joiner's generation from its next beat.
        wait_until(lambda: punctual.generation == late.generation, 30, "the joiner's generation")
        with pytest.raises(BarrierTimeout, match="late") as raised:
            punctual.barrier("step-1", timeout_s=1.0)
        assert "1/2 arrived" in str(raised.value)


def test_a_released_barrier_tells_a_late_joiner_it_was_not_part_of_it(
    single: LocalCluster,
) -> None:
    with join(single, "early") as early:
        released = early.barrier("warm-up", timeout_s=10)
        with join(single, "late") as late:
            started = time.monotonic()
            with pytest.raises(BarrierMissed, match="'warm-up' was released without this worker"):
                late.barrier("warm-up", timeout_s=10)
            assert time.monotonic() - started < 5.0, "a missed barrier is answered at once"
            assert early.barrier("warm-up", timeout_s=10) == released  # a retry: still released


def test_a_newer_process_with_the_same_id_supersedes_the_old_one(single: LocalCluster) -> None:
    with join(single, "twin", heartbeat_interval_s=0.2) as old:
        old.register_dataset("tokens", NUM_SHARDS)
        with join(single, "twin") as new:
            assert new.incarnation > old.incarnation
            wait_until(lambda: not old._heartbeats.is_running, 30, "the old twin to stop beating")
            with pytest.raises(WorkerSuperseded, match="newer incarnation"):
                old.get_shards("tokens", 0)
            assert new.get_shards("tokens", 0) == list(range(NUM_SHARDS))


def test_a_worker_pointed_at_another_job_fails_at_once(single: LocalCluster) -> None:
    started = time.monotonic()
    with pytest.raises(WrongJob, match="job"):
        Worker(single.coordinators, worker_id="lost", job="some-other-job")
    assert time.monotonic() - started < 5.0, "a wrong job must not be retried"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"coordinators": "localhost"}, "coordinators"),
        ({"coordinators": ""}, "coordinators"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": float("nan")}, "capacity"),
        ({"worker_id": "has space"}, "worker_id"),
        ({"job": "bad/job"}, "job"),
        ({"heartbeat_interval_s": -1}, "heartbeat_interval_s"),
    ],
)
def test_bad_worker_options_are_refused_before_any_network_traffic(
    options: dict[str, object], needle: str
) -> None:
    arguments: dict[str, object] = {"coordinators": "127.0.0.1:1", "worker_id": "w", **options}
    started = time.monotonic()
    with pytest.raises(InvalidArgument, match=needle):
        Worker(**arguments)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0


def test_bad_call_arguments_get_typed_errors(single: LocalCluster) -> None:
    with join(single, "w0") as w0:
        w0.register_dataset("tokens", NUM_SHARDS)
        with pytest.raises(InvalidArgument, match="epoch"):
            w0.get_shards("tokens", -1)
        with pytest.raises(InvalidArgument, match="num_shards"):
            w0.register_dataset("more", 0)
        with pytest.raises(InvalidArgument, match="barrier name"):
            w0.barrier("no spaces please")
        with pytest.raises(NotFound, match="no dataset named 'missing'"):
            w0.get_shards("missing", 0)


def test_no_coordinator_at_all_is_reported_after_the_deadline() -> None:
    with pytest.raises(CoordinatorUnavailable, match="register worker"):
        Worker("127.0.0.1:1", worker_id="w0", retry=RetryPolicy(deadline_s=1.0))
