"""Attack 17: one torchrun rendezvous round = one membership generation, where parts meet.

Real etcd and real coordinator processes (``LocalCluster``); ranks are raw
``RegisterWorker`` calls carrying a ``RendezvousRound`` (what ``Worker``
sends under ``torchrun --rdzv-backend=dtr``), on one grpc.aio channel per
test so that calls created one after another reach the leader in that order,
plus one real in-process ``Worker`` whose seat comes from the environment.
Each test names the scenario and what the contract (DESIGN §5, the
``coordinator/rounds.py`` docstring) says must happen.

Scenarios (the first and the last two are pins: they pass):

- a reused ``--rdzv-id`` (``dtr run`` uses the job name): torch starts again
  at round 0 while etcd still holds the previous runs' records of a later
  round, or of the same round (told apart by the rendezvous life);
- a leftover rank of round R-1, declared dead by the failure detector,
  re-registering while round R forms, then committing a checkpoint step;
- a rank retired by a newer round learning it on its heartbeat thread;
- two rounds racing: round R+1 completes while round R's write is in flight
  (a slow etcd);
- a round larger than one transaction, on a slow etcd: waiters whose hold
  expires between its batches;
- a slow etcd with every registration attempt cancelled mid-write;
- the leader SIGKILLed after its round transaction applied, before it heard so.

A slow etcd is a ``TcpProxy`` delay in front of etcd for the coordinators
only (``helpers.cluster_dialing_etcd_through_proxies``).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.coordinator.state import ClusterView, load_view
from dtr.errors import WorkerSuperseded
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.retry import RetryPolicy
from dtr.store import EtcdStore
from dtr.worker import Worker
from dtr.worker.client import CoordinatorClient
from helpers import cluster_dialing_etcd_through_proxies, wait_until

pytestmark = pytest.mark.integration

#: Short enough that "the previous run's ranks are declared dead" is a few seconds.
HEARTBEAT_TIMEOUT_S = 2.5
#: One way; a leader transaction then takes about twice this (DESIGN: up to 1 s is "slow").
ONE_WAY_DELAY_S = 0.4
#: The coordinator holds a rank of a forming round this long (coordinator/rounds.py ROUND_HOLD_S).
HOLD_S = 4.0


@dataclass(frozen=True)
class Seat:
    """One rank's registration: its rendezvous, round, world, rank and process id."""

    rdzv: str
    round: int
    world: int
    rank: int
    pid: int
    #: The rendezvous life (its state key's etcd create_revision, ``DTR_RDZV_LIFE``).
    life: int = 1

    @property
    def worker_id(self) -> str:
        # Stable across rounds and runs, like torchrun's default <host>-rank<RANK>.
        return f"{self.rdzv}-r{self.rank:03d}"

    def request(self, job: str) -> pb.RegisterWorkerRequest:
        return pb.RegisterWorkerRequest(
            header=pb.RequestHeader(job=job, caller_id=self.worker_id),
            worker_id=self.worker_id,
            capacity=1.0,
            host="node",
            pid=self.pid,
            rendezvous_round=pb.RendezvousRound(
                rdzv_id=self.rdzv,
                round=self.round,
                world_size=self.world,
                rank=self.rank,
                life=self.life,
            ),
        )


class Ranks:
    """Raw ``RegisterWorker`` calls on one aio channel (calls reach the leader in order)."""

    def __init__(self, channel: grpc.aio.Channel, job: str) -> None:
        self.stub = pb_grpc.CoordinatorStub(channel)
        self.job = job

    async def ask(self, seat: Seat, timeout_s: float = 10.0) -> pb.RegisterWorkerResponse:
        """One attempt (the leader holds it up to ``HOLD_S`` while the round forms)."""
        answer: pb.RegisterWorkerResponse = await self.stub.RegisterWorker(
            seat.request(self.job), timeout=timeout_s
        )
        return answer

    async def join(
        self, seat: Seat, *, attempt_s: float = 10.0, budget_s: float = 40.0
    ) -> pb.RegisterWorkerResponse:
        """Ask until the round is whole, as ``register_in_round`` does; a cancelled attempt
        (its deadline passed) is asked again. Bounded in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        while loop.time() < deadline:
            try:
                answer = await self.ask(seat, attempt_s)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                continue
            if not answer.round_pending:
                return answer
        raise AssertionError(f"{seat}: the round never formed within {budget_s} s")

    async def round(self, rdzv: str, round_: int, world: int, pid: int, life: int = 1) -> list[int]:
        """Every rank of a round at once; their incarnations."""
        seats = [Seat(rdzv, round_, world, rank, pid + rank, life) for rank in range(world)]
        answers = await asyncio.gather(*(self.join(s) for s in seats))
        return [a.incarnation for a in answers]


def view_of(etcd: RunningEtcd, job: str) -> ClusterView:
    """What etcd itself holds (records with their rendezvous fields)."""
    with EtcdStore(etcd.endpoints, timeout_s=5.0) as store:
        return load_view(store, JobKeys(job))


def all_dead(etcd: RunningEtcd, job: str, worker_ids: list[str]) -> bool:
    members = view_of(etcd, job).members
    return all(w in members and not members[w].alive for w in worker_ids)


@pytest.fixture
def fast(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    """One replica, a short heartbeat timeout, etcd at full speed."""
    with LocalCluster.start(
        replicas=1,
        etcd=etcd,
        job=f"a17-{uuid.uuid4().hex[:8]}",
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
    ) as cluster:
        yield cluster


@pytest.fixture
def slow(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    """One replica that reaches etcd through a proxy delaying ``ONE_WAY_DELAY_S`` each way."""
    job = f"a17s-{uuid.uuid4().hex[:8]}"
    with cluster_dialing_etcd_through_proxies(etcd, replicas=1, job=job) as (cluster, proxies):
        for proxy in proxies:
            proxy.delay(ONE_WAY_DELAY_S)
        yield cluster


@pytest.fixture
def slow_pair(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    """Two replicas, each reaching etcd through its own delaying proxy."""
    job = f"a17f-{uuid.uuid4().hex[:8]}"
    with cluster_dialing_etcd_through_proxies(etcd, replicas=2, job=job) as (cluster, proxies):
        for proxy in proxies:
            proxy.delay(ONE_WAY_DELAY_S)
        yield cluster


def run(cluster: LocalCluster, scenario: Callable[[Ranks], Awaitable[object]]) -> None:
    """Run ``scenario(ranks)`` on a fresh aio channel to the (single) replica."""

    async def main() -> None:
        async with grpc.aio.insecure_channel(cluster.coordinators) as channel:
            await scenario(Ranks(channel, cluster.job))

    asyncio.run(main())


# -- a reused rendezvous id ----------------------------------------------------------


def test_a_reused_rdzv_id_starts_again_at_round_0_as_one_round_and_one_generation(
    fast: LocalCluster, etcd: RunningEtcd
) -> None:
    """``dtr run`` passes ``--rdzv-id=<job>``; once a run's rendezvous keys expire
    (test_rendezvous_reuse.py) torch starts the next run at round 0. Records of a
    crash are never removed, so etcd still holds the old run's rounds of that id.
    As the diff under review stood (no rendezvous life), run 2's round 0 was below
    run 1's round 1 (StaleRound for every rank, every restart, until the round
    numbers caught up) and run 3's round 0 equalled run 2's (REJOIN: every rank
    registered alone, a generation each). With the life (the state key's
    create_revision, larger for every new life) both are a new round."""
    rdzv = "reused"

    async def scenario(ranks: Ranks) -> None:
        await ranks.round(rdzv, 0, 2, pid=100, life=5)
        await ranks.round(rdzv, 1, 2, pid=200, life=5)  # a restart; then the run is killed
        wait_until(
            lambda: all_dead(etcd, fast.job, [f"{rdzv}-r000", f"{rdzv}-r001"]),
            HEARTBEAT_TIMEOUT_S + 20,
            "the killed run's ranks declared dead",
        )
        for life, pid in ((9, 300), (13, 400)):  # run 2 (round 0 < 1), run 3 (round 0 == 0)
            before = fast.status().generation
            incarnations = await ranks.round(rdzv, 0, 2, pid=pid, life=life)
            assert fast.status().generation == before + 1, f"life {life}: one generation"
            assert incarnations[0] == incarnations[1] > 2

    run(fast, scenario)


# -- leftovers of an older round ---------------------------------------------------------


def test_a_leftover_of_an_older_round_cannot_rejoin_while_a_newer_round_forms(
    fast: LocalCluster, etcd: RunningEtcd
) -> None:
    """Round 0's ranks go silent (their agent was partitioned) and are declared dead;
    torchrun's surviving agents complete round 1, whose rank 0 is already held by
    the leader. A round-0 process that is still alive (the partition healed) beats,
    hears DEAD and re-registers with its round-0 seat (``Worker.rejoin``): round 0
    is over, so it must be refused (StaleRound). It is judged REJOIN instead (round
    0 is still the newest *written* round) and becomes the only live member of a
    new generation, where its commit of a step completes that step alone."""
    rdzv = "left"

    async def scenario(ranks: Ranks) -> None:
        await ranks.round(rdzv, 0, 2, pid=100)
        ids = [f"{rdzv}-r000", f"{rdzv}-r001"]
        wait_until(
            lambda: all_dead(etcd, fast.job, ids),
            HEARTBEAT_TIMEOUT_S + 20,
            "round 0 declared dead",
        )
        # Round 1's rank 0 asks; its pending answer says the leader holds it.
        pending = await ranks.ask(Seat(rdzv, 1, 2, 0, pid=200))
        assert pending.round_pending
        try:
            revived = await ranks.ask(Seat(rdzv, 0, 2, 1, pid=101))  # the leftover
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "leftover" in (err.details() or "")
            return
        record = view_of(etcd, fast.job).members[f"{rdzv}-r001"]
        commit = await ranks.stub.CommitCheckpoint(
            pb.CommitCheckpointRequest(
                header=pb.RequestHeader(job=ranks.job),
                step=7,
                worker_id=f"{rdzv}-r001",
                generation=revived.header.generation,
                incarnation=revived.incarnation,
                job_life=revived.job_life,
                part=pb.CheckpointPart(
                    uri="file:///ckpt/left/step-7/r001.pt",
                    size_bytes=10,
                    checksum=pb.Checksum(
                        algorithm=pb.CHECKSUM_ALGORITHM_CRC32C, hex_digest="0badf00d"
                    ),
                    format_version=1,
                ),
            ),
            timeout=10,
        )
        pytest.fail(
            f"the round-0 leftover was registered again while round 1 formed (incarnation "
            f"{revived.incarnation}, alive={record.alive}, round {record.rdzv_round}, "
            f"generation {revived.header.generation}); its commit of step 7 alone: "
            f"step_complete={commit.step_complete}"
        )

    run(fast, scenario)


def test_a_worker_retired_by_a_newer_round_learns_it_must_stop_from_its_heartbeats(
    fast: LocalCluster, etcd: RunningEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``Worker`` built as rank 1 of round 0 (its seat from the environment, as
    torchrun and dtr's handler set it). Round 1 has one rank, so round 1's write
    declares rank 1 dead. Its heartbeats hear DEAD and re-register; the answer is
    StaleRound ("a leftover ... must exit"). ``on_status`` swallows it as a failed
    rejoin and retries on every beat, so the process is never marked superseded: a
    call that only checks usability (``latest_checkpoint``) keeps working."""
    rdzv = "beats"
    env = {
        "DTR_RDZV_ROUND": "0",
        "DTR_RDZV_LIFE": "1",
        "TORCHELASTIC_RUN_ID": rdzv,
        "RANK": "1",
        "WORLD_SIZE": "2",
    }
    for name, value in {**env, "DTR_ROUND_JOIN_TIMEOUT_S": "30"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DTR_JOIN_ROUND", raising=False)
    monkeypatch.delenv("DTR_WORKER_ID", raising=False)
    peer_done = threading.Event()

    def rank0(seat: Seat) -> None:
        run(fast, lambda ranks: ranks.join(seat))
        peer_done.set()

    peer = threading.Thread(target=rank0, args=(Seat(rdzv, 0, 2, 0, pid=100),), daemon=True)
    peer.start()
    worker = Worker(
        coordinators=fast.coordinators,
        job=fast.job,
        worker_id=f"{rdzv}-r001",
        heartbeat_interval_s=0.2,
    )
    try:
        assert worker.round_seat is not None and worker.incarnation == 1
        peer.join(timeout=30)
        assert peer_done.is_set()

        async def round1(ranks: Ranks) -> None:
            await ranks.round(rdzv, 1, 1, pid=200)  # rank 0 alone: rank 1 retired

        run(fast, round1)
        assert not view_of(etcd, fast.job).members[f"{rdzv}-r001"].alive

        def told_to_stop() -> bool:
            try:
                worker.latest_checkpoint()
            except WorkerSuperseded:
                return True
            return False

        wait_until(told_to_stop, 6.0, "the retired rank's Worker to learn it must stop")
    finally:
        worker.close()


# -- slow etcd -----------------------------------------------------------------------------


def test_a_round_that_completes_while_the_previous_rounds_write_is_in_flight_retires_it(
    slow: LocalCluster, etcd: RunningEtcd
) -> None:
    """Round 0 (4 ranks) completes and its write is slow; an agent leaves and round 1
    (ranks 0 and 1) completes before round 0's write lands. ``_write_round`` cuts
    round 1 into batches from the view *before* it takes the write lock, so the set
    of records it may touch (``only``) misses round 0's ranks 2 and 3; once round 0
    is written, round 1's plan is filtered to ``only`` and leaves them alive: two
    members of a replaced round hold shards and block barriers until the failure
    detector expires them, what one round = one generation was meant to end."""
    rdzv = "race"

    async def scenario(ranks: Ranks) -> None:
        first = [Seat(rdzv, 0, 4, rank, pid=100 + rank) for rank in range(3)]
        answers = await asyncio.gather(*(ranks.ask(s) for s in first))
        assert all(a.round_pending for a in answers)  # ranks 0-2 held: round 0 forming
        # Created in this order on one channel: round 0's last rank, then round 1.
        last = asyncio.ensure_future(ranks.ask(Seat(rdzv, 0, 4, 3, pid=103)))
        await asyncio.sleep(0)  # let the call start before round 1's (order, not a wait)
        second = [
            asyncio.ensure_future(ranks.join(Seat(rdzv, 1, 2, rank, pid=200 + rank)))
            for rank in range(2)
        ]
        done = await asyncio.gather(*second)
        assert [a.incarnation for a in done] == [2, 2], "round 0 was written first"
        await asyncio.gather(last, return_exceptions=True)

    run(slow, scenario)
    members = view_of(etcd, slow.job).members
    assert {f"{rdzv}-r002", f"{rdzv}-r003"} <= set(members), "round 0 was never written"
    still = {
        w: (m.alive, m.rdzv_round)
        for w, m in members.items()
        if w in (f"{rdzv}-r002", f"{rdzv}-r003") and m.alive
    }
    assert not still, f"round 1 is written but round-0 ranks are still live members: {still}"


def test_a_round_larger_than_one_transaction_is_not_registered_rank_by_rank(
    slow: LocalCluster, etcd: RunningEtcd
) -> None:
    """150 ranks: two batches (100 + 50), so two generations by design. Between the
    batches ``newest_round`` already says round 0, so a batch-2 rank whose hold
    ends then is judged REJOIN and, asking again, registers *alone*: after batch 2
    lands its plan_register makes it a second incarnation and one more generation.
    Holds end every 4 s, so on a slow etcd some always fall in that gap."""
    rdzv = "big"
    world = 150

    async def scenario(ranks: Ranks) -> None:
        before = slow.status().generation
        seats = [Seat(rdzv, 0, world, rank, pid=1000 + rank) for rank in range(world)]
        late = seats[100:]  # sorted last: batch 2
        tasks = []
        for seat in late:  # spread over one hold, so their holds end at every moment
            tasks.append(asyncio.ensure_future(ranks.join(seat, budget_s=60)))
            await asyncio.sleep(HOLD_S / len(late))  # load shaping, not synchronization
        tasks += [asyncio.ensure_future(ranks.join(s, budget_s=60)) for s in seats[:100]]
        answers = await asyncio.gather(*tasks)
        twice = sorted(
            s.worker_id
            for s, a in zip([*late, *seats[:100]], answers, strict=True)
            if a.incarnation != 1
        )
        after = slow.status().generation
        assert not twice, (
            f"{len(twice)} ranks registered alone as a 2nd incarnation ({twice[:5]}...); "
            f"generation {before} -> {after}"
        )
        assert after == before + 2  # one per batch

    run(slow, scenario)


def test_a_round_written_while_every_attempt_is_cancelled_is_written_once(
    slow: LocalCluster,
) -> None:
    """Pinned: each rank's attempt deadline (0.3 s) is shorter than the round's
    transaction on a slow etcd (about 0.8 s), so the completing rank's call is
    cancelled mid-write and every retry lands while the write runs. The write runs
    to its end, the retries find it (MEMBER, same pid): one generation, incarnation 1."""
    rdzv = "cancel"

    async def scenario(ranks: Ranks) -> None:
        before = slow.status().generation
        seats = [Seat(rdzv, 0, 3, rank, pid=100 + rank) for rank in range(3)]
        answers = await asyncio.gather(*(ranks.join(s, attempt_s=0.3) for s in seats))
        assert [a.incarnation for a in answers] == [1, 1, 1]
        assert {a.header.generation for a in answers} == {before + 1}
        assert slow.status().generation == before + 1

    run(slow, scenario)


def test_a_leader_killed_after_its_round_applied_leaves_one_round_for_the_next_leader(
    slow_pair: LocalCluster, etcd: RunningEtcd
) -> None:
    """Pinned: the round's transaction lands in etcd and the leader is SIGKILLed in the
    ~0.4 s before etcd's answer reaches it (a slow etcd). The ranks, held or waiting
    on the dead leader, ask the next one: the round is there (MEMBER, same pid), so
    they get incarnation 1 and the round's single generation, nothing re-written."""
    cluster = slow_pair
    rdzv = "failover"
    old = cluster.leader()
    before = view_of(etcd, cluster.job).generation
    answers: dict[int, pb.RegisterWorkerResponse] = {}
    errors: list[BaseException] = []

    def rank(seat: Seat) -> None:
        client = CoordinatorClient(
            cluster.coordinators,
            job=cluster.job,
            caller_id=seat.worker_id,
            policy=RetryPolicy(deadline_s=45),
        )
        try:
            for _ in range(20):
                answer: pb.RegisterWorkerResponse = client.call(
                    "RegisterWorker",
                    lambda: seat.request(cluster.job),
                    operation="register rank",
                    mutating=True,
                    attempt_timeout_s=8.0,
                )
                if not answer.round_pending:
                    answers[seat.rank] = answer
                    return
        except BaseException as err:  # reported by the test thread
            errors.append(err)
        finally:
            client.close()

    threads = [
        threading.Thread(target=rank, args=(Seat(rdzv, 0, 2, r, pid=700 + r),), daemon=True)
        for r in range(2)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: view_of(etcd, cluster.job).generation > before, 30, "the round in etcd")
    old.kill()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert {r: (a.incarnation, a.header.generation) for r, a in answers.items()} == {
        0: (1, before + 1),
        1: (1, before + 1),
    }
    assert view_of(etcd, cluster.job).generation == before + 1
    assert {a.header.replica_id for a in answers.values()} == {cluster.leader().replica_id}
    assert old.replica_id != cluster.leader().replica_id  # answered by the next leader
