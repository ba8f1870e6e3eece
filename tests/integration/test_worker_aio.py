"""dtr.worker.aio against real coordinator processes: many workers on one event loop.

Every test runs its own job on the session etcd with real ``dtr coordinator``
replicas (``LocalCluster``); the workers are ``AsyncWorker`` objects sharing
one ``AsyncCoordinatorClient`` in this process, as a process driving hundreds
of workers would. What is checked is read back from the coordinators
(``ClusterStatus``), not taken from the workers' own word.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.errors import BarrierMissed, InvalidArgument, WorkerSuperseded
from dtr.etcd import RunningEtcd
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.worker.aio import AsyncCoordinatorClient, AsyncWorker, gather_workers

pytestmark = pytest.mark.integration

NUM_SHARDS = 512
HEARTBEAT_TIMEOUT_S = 3.0


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(
        replicas=3,
        etcd=etcd,
        job=f"aio-{uuid.uuid4().hex[:10]}",
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
    ) as started:
        yield started


def client_of(cluster: LocalCluster) -> AsyncCoordinatorClient:
    return AsyncCoordinatorClient(
        cluster.coordinators, job=cluster.job, policy=RetryPolicy(deadline_s=30.0)
    )


async def until(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str
) -> None:
    """Await ``condition`` (plain or awaitable) until it holds; TimeoutError naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def live_members(cluster: LocalCluster) -> dict[str, int]:
    """Live worker id -> incarnation, as the leader reports them."""
    status = cluster.status()
    return {w.id: w.incarnation for w in status.workers if w.alive}


def test_two_hundred_workers_on_one_loop_stay_alive_share_every_shard_and_meet(
    cluster: LocalCluster,
) -> None:
    count = 200

    async def scenario() -> tuple[list[list[int]], set[int], list[int]]:
        client = client_of(cluster)
        workers = [AsyncWorker(client, worker_id=f"a{i:03d}") for i in range(count)]
        try:
            await gather_workers(workers)
            await workers[0].register_dataset("tokens", NUM_SHARDS)
            # Beats keep every one alive well past the heartbeat timeout.
            await until(lambda: all(w.acks >= 1 for w in workers), 20, "a beat answered each")
            first = min(w.last_ack_at for w in workers)
            await until(
                lambda: all(w.last_ack_at > first + HEARTBEAT_TIMEOUT_S for w in workers),
                30,
                "beats answered past one heartbeat timeout",
            )
            alive = live_members(cluster)
            assert len(alive) == count and set(alive.values()) == {1}, alive
            assignments = await asyncio.gather(*(w.shard_assignment("tokens") for w in workers))
            shards = [list(a.shard_ids) for a in assignments]
            generations = {a.generation for a in assignments}
            released = await asyncio.gather(*(w.barrier("all-in", timeout_s=60) for w in workers))
            return shards, generations, list(released)
        finally:
            await asyncio.gather(*(w.close() for w in workers))
            await client.close()

    shards, generations, released = asyncio.run(scenario())
    owned = sorted(s for mine in shards for s in mine)
    assert owned == list(range(NUM_SHARDS)), "every shard has exactly one owner"
    assert len(generations) == 1
    assert len(set(released)) == 1 and released[0] == generations.pop()
    assert live_members(cluster) == {}, "every worker deregistered on close"


def test_a_worker_restarted_under_its_id_supersedes_the_old_one(cluster: LocalCluster) -> None:
    async def scenario() -> tuple[int, int, BaseException | None]:
        client = client_of(cluster)
        old = AsyncWorker(client, worker_id="twin", heartbeat_interval_s=0.2)
        new = AsyncWorker(client, worker_id="twin", heartbeat_interval_s=0.2)
        try:
            await old.start()
            await new.start()
            await until(lambda: old.superseded, 10, "the old worker's beat answered STALE")
            caught: BaseException | None = None
            try:
                await old.get_shards("none")
            except WorkerSuperseded as err:
                caught = err
            return old.incarnation, new.incarnation, caught
        finally:
            await old.close()
            await new.close()
            await client.close()

    old_inc, new_inc, caught = asyncio.run(scenario())
    assert new_inc == old_inc + 1
    assert isinstance(caught, WorkerSuperseded)
    assert live_members(cluster) == {}, "the new one deregistered; the old one did not"


def test_a_worker_the_leader_forgot_rejoins_and_a_barrier_released_without_it_is_missed(
    cluster: LocalCluster,
) -> None:
    """Deregistered behind its back (as if lost), a worker rejoins from its own beats; a
    restarted process of it arriving at a barrier released before it is told it missed it."""

    async def deregister(client: AsyncCoordinatorClient, worker: AsyncWorker) -> None:
        incarnation = worker.incarnation
        await client.call(
            "Deregister",
            lambda: pb.DeregisterRequest(worker_id=worker.worker_id, incarnation=incarnation),
            caller="test",
            operation=f"deregister {worker.worker_id} behind its back",
            mutating=True,
        )

    async def scenario() -> tuple[int, int, BaseException | None]:
        client = client_of(cluster)
        a = AsyncWorker(client, worker_id="a", heartbeat_interval_s=0.2)
        b = AsyncWorker(client, worker_id="b", heartbeat_interval_s=0.2)
        try:
            await gather_workers([a, b])
            before = cluster.status().generation
            await deregister(client, a)
            # Its next beat is answered UNKNOWN_WORKER: it registers again (removal and
            # return are two generations).
            await until(
                lambda: "a" in live_members(cluster) and cluster.status().generation >= before + 2,
                10,
                "a back as a live member",
            )
            after = cluster.status().generation
            # A barrier released for a and b; a restarted process of a arriving at it
            # afterwards was not part of it.
            await asyncio.gather(a.barrier("met", timeout_s=20), b.barrier("met", timeout_s=20))
            restarted = AsyncWorker(client, worker_id="a", heartbeat_interval_s=0.2)
            missed: BaseException | None = None
            try:
                await restarted.start()
                await restarted.barrier("met", timeout_s=20)
            except BarrierMissed as err:
                missed = err
            finally:
                await restarted.close()
            return before, after, missed
        finally:
            await a.close()
            await b.close()
            await client.close()

    before, after, missed = asyncio.run(scenario())
    assert after >= before + 2
    assert isinstance(missed, BarrierMissed)


def test_a_leader_killed_during_a_barrier_does_not_lose_it(cluster: LocalCluster) -> None:
    async def scenario() -> list[int]:
        client = client_of(cluster)
        workers = [AsyncWorker(client, worker_id=f"k{i}") for i in range(20)]
        try:
            await gather_workers(workers)
            waiting = [asyncio.create_task(w.barrier("through", timeout_s=60)) for w in workers[1:]]
            leader = cluster.leader()
            await until(
                lambda: any(
                    b.name == "through" and b.arrived == len(waiting)
                    for b in leader.cluster_status().open_barriers
                ),
                20,
                "every arrival but one held",
            )
            leader.kill()
            last = await workers[0].barrier("through", timeout_s=60)
            return [last, *await asyncio.gather(*waiting)]
        finally:
            await asyncio.gather(*(w.close() for w in workers))
            await client.close()

    released = asyncio.run(scenario())
    assert len(released) == 20 and len(set(released)) == 1


def test_bad_input_is_refused_before_anything_is_sent(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = client_of(cluster)
        try:
            with pytest.raises(InvalidArgument, match="capacity"):
                AsyncWorker(client, worker_id="x", capacity=0)
            with pytest.raises(InvalidArgument, match="worker_id"):
                AsyncWorker(client, worker_id="bad id!")
            with pytest.raises(InvalidArgument, match="AsyncCoordinatorClient"):
                AsyncWorker(cluster.coordinators, worker_id="x")  # type: ignore[arg-type]
            worker = AsyncWorker(client, worker_id="x")
            with pytest.raises(InvalidArgument, match="start"):
                await worker.get_shards("tokens")
            await worker.start()
            with pytest.raises(InvalidArgument, match="num_shards"):
                await worker.register_dataset("tokens", 0)
            with pytest.raises(InvalidArgument, match="on_change"):
                await worker.barrier("b", on_change="ignore")  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match="step"):
                worker.report_progress(-1)
            await worker.close()
            with pytest.raises(InvalidArgument, match="closed"):
                await worker.get_shards("tokens")
        finally:
            await client.close()

    asyncio.run(scenario())
    assert live_members(cluster) == {}
