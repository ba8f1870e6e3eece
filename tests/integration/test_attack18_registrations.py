"""Attack (issue 18): registrations group-committed (coordinator/registrations.py).

Each test drives a real leader (real etcd, real coordinator processes) with
registrations that queue while a transaction runs, at the moment another part
acts: a barrier of the old incarnation, mark-dead batches, a paused etcd,
callers giving up, a deposed leader, a torchrun round. Every request carries
its own pid, so a record read back from etcd names the caller it belongs to:
an answer must name a record etcd holds (same id, incarnation and pid, live),
no two answers may share an incarnation, and etcd's own history must pass the
record checkers (stamps, one generation per live-set change, releases).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest

from dtr.chaos.checker_record import check_record
from dtr.chaos.cluster import LocalCluster
from dtr.chaos.etcd_record import RecordEvent, read_record
from dtr.coordinator.state import MemberRecord
from dtr.etcd import EtcdCluster, RunningEtcd
from dtr.keys import JobKeys
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.store import EtcdStore
from helpers import cluster_dialing_etcd_through_proxies

pytestmark = pytest.mark.integration

_pids = itertools.count(20_000)


def _job(tag: str) -> str:
    return f"a18r-{tag}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Answered:
    """One RegisterWorker that succeeded, as its caller saw it."""

    worker_id: str
    pid: int
    incarnation: int
    generation: int
    term: int
    done_at: float


@dataclass(frozen=True)
class Refused:
    worker_id: str
    pid: int
    code: grpc.StatusCode
    details: str


Outcome = Answered | Refused


def _request(
    job: str, worker_id: str, pid: int, rdzv: pb.RendezvousRound | None = None
) -> pb.RegisterWorkerRequest:
    request = pb.RegisterWorkerRequest(
        header=pb.RequestHeader(job=job, caller_id=f"{worker_id}-{pid}"),
        worker_id=worker_id,
        capacity=1.0,
        host="attack18",
        pid=pid,
    )
    if rdzv is not None:
        request.rendezvous_round.CopyFrom(rdzv)
    return request


async def register(
    stub: pb_grpc.CoordinatorStub, job: str, worker_id: str, *, timeout: float = 30.0
) -> Outcome:
    """One attempt, no retry: the answer or the refusal, with this call's own pid."""
    pid = next(_pids)
    try:
        answer = await stub.RegisterWorker(_request(job, worker_id, pid), timeout=timeout)
    except grpc.aio.AioRpcError as err:
        return Refused(worker_id, pid, err.code(), err.details() or "")
    return Answered(
        worker_id,
        pid,
        answer.incarnation,
        answer.header.generation,
        answer.header.term,
        time.monotonic(),
    )


async def register_until_answered(
    stubs: Callable[[], pb_grpc.CoordinatorStub], job: str, worker_id: str, deadline_s: float = 40
) -> list[Outcome]:
    """Re-send (each attempt its own pid) until answered; every attempt's outcome, in order."""
    outcomes: list[Outcome] = []
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        outcome = await register(stubs(), job, worker_id, timeout=8.0)
        outcomes.append(outcome)
        if isinstance(outcome, Answered):
            return outcomes
        await asyncio.sleep(0.1)  # backoff between attempts, not synchronization
    return outcomes


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a (blocking) condition on a thread until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def members_in_etcd(store: EtcdStore, keys: JobKeys) -> dict[str, MemberRecord]:
    found = store.get_prefix(keys.members_prefix).kvs
    return {r.worker_id: r for r in (MemberRecord.decode(kv.value) for kv in found)}


def generation_in_etcd(store: EtcdStore, keys: JobKeys) -> int:
    found = store.get(keys.generation)
    return int(found.value) if found is not None else 0


def history(endpoints: Sequence[str], keys: JobKeys) -> list[RecordEvent]:
    return read_record(endpoints, keys, stall_s=20, overall_s=60)


def record_violations(events: Sequence[RecordEvent], keys: JobKeys) -> list[str]:
    return [f"{r.name}: {v.message}" for r in check_record(events, keys) for v in r.violations]


@dataclass(frozen=True)
class Put:
    revision: int
    record: MemberRecord
    generation: int  # the job's generation once this revision applied
    term: int  # the writer stamp's term at this revision


def member_puts(events: Sequence[RecordEvent], keys: JobKeys) -> list[Put]:
    """Every member record put, in revision order, with the generation and stamp of its revision."""
    by_revision: dict[int, list[RecordEvent]] = defaultdict(list)
    for event in events:
        by_revision[event.revision].append(event)
    generation, puts = 0, []
    for revision in sorted(by_revision):
        group = by_revision[revision]
        term = 0
        for event in group:
            if event.kind == "put" and event.key == keys.generation:
                generation = int(event.value)
            if event.kind == "put" and event.key == keys.writer:
                term = int(json.loads(event.value)["term"])
        for event in group:
            if event.kind == "put" and event.key.startswith(keys.members_prefix):
                puts.append(Put(revision, MemberRecord.decode(event.value), generation, term))
    return puts


def answer_violations(
    answers: Iterable[Answered], events: Sequence[RecordEvent], keys: JobKeys
) -> list[str]:
    """What is wrong with the answers, judged from etcd's history (see the module doc)."""
    puts = member_puts(events, keys)
    live_puts: dict[tuple[str, int], Put] = {}
    found: list[str] = []
    for put in puts:
        if put.record.alive:
            key = (put.record.worker_id, put.record.incarnation)
            if key in live_puts and live_puts[key].record.pid != put.record.pid:
                found.append(
                    f"{key}: incarnation written twice, for pids {live_puts[key].record.pid} "
                    f"and {put.record.pid} (revisions {live_puts[key].revision}, {put.revision})"
                )
            live_puts.setdefault(key, put)
    last: dict[str, int] = {}
    for put in puts:  # a new incarnation is exactly one more than the previous record's
        worker, inc = put.record.worker_id, put.record.incarnation
        if worker in last and inc not in (last[worker], last[worker] + 1) and inc != 1:
            found.append(f"{worker}: incarnation {last[worker]} -> {inc} at r{put.revision}")
        last[worker] = inc
    seen: dict[tuple[str, int], Answered] = {}
    for answer in answers:
        key = (answer.worker_id, answer.incarnation)
        if key in seen:
            found.append(f"{key} answered twice: pids {seen[key].pid} and {answer.pid}")
        seen[key] = answer
        put = live_puts.get(key)
        if put is None:
            found.append(f"{key} (pid {answer.pid}) answered, never written live to etcd")
            continue
        if put.record.pid != answer.pid:
            found.append(
                f"{key} answered to pid {answer.pid}, but etcd holds it for pid {put.record.pid}"
            )
        if answer.generation < put.generation:
            found.append(
                f"{key} answered generation {answer.generation}, older than the generation "
                f"{put.generation} its own write (r{put.revision}) produced"
            )
    return found


def final_violations(
    final: dict[str, Answered], members: dict[str, MemberRecord], *, alive: bool = True
) -> list[str]:
    """The last answer of each id must be what etcd holds now (nothing superseded it)."""
    found = []
    for worker_id, answer in sorted(final.items()):
        record = members.get(worker_id)
        if record is None:
            found.append(f"{worker_id}: answered incarnation {answer.incarnation}, absent in etcd")
        elif (record.incarnation, record.pid) != (answer.incarnation, answer.pid) or (
            alive and not record.alive
        ):
            found.append(
                f"{worker_id}: last answer incarnation {answer.incarnation} pid {answer.pid}; "
                f"etcd holds incarnation {record.incarnation} pid {record.pid} "
                f"alive={record.alive}"
            )
    return found


async def leader_agrees_with_etcd(
    replica_status: Callable[[], pb.ClusterStatusResponse],
    store: EtcdStore,
    keys: JobKeys,
    timeout_s: float = 8.0,
) -> None:
    """The leader's cached view (ClusterStatus) ends equal to etcd: no stale live set."""
    last: list[str] = []

    def agree() -> bool:
        status = replica_status()
        members = members_in_etcd(store, keys)
        generation = generation_in_etcd(store, keys)
        cached = {(w.id, w.incarnation, w.alive) for w in status.workers}
        stored = {(m.worker_id, m.incarnation, m.alive) for m in members.values()}
        last[:] = [
            f"leader generation {status.generation} vs etcd {generation}",
            f"only in the leader: {sorted(cached - stored)[:5]}",
            f"only in etcd: {sorted(stored - cached)[:5]}",
        ]
        return status.generation == generation and cached == stored

    try:
        await until(agree, timeout_s, "the leader's view to equal etcd")
    except pytest.fail.Exception:
        pytest.fail("the leader's cached view never matched etcd: " + "; ".join(last))


@pytest.fixture
def store(etcd: RunningEtcd) -> Iterator[EtcdStore]:
    with EtcdStore(etcd.endpoints, timeout_s=5.0) as opened:
        yield opened


# -- 1. a restart under its own id while its earlier registration queues -------------


def test_restarts_queued_behind_a_fleet_void_the_old_incarnations_barrier(  # noqa: PLR0915
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """``w`` arrives at barrier ``b`` as incarnation 1, then restarts twice while a fleet
    registers (each restart queued behind a transaction in flight). Each restart must get
    its own, increasing incarnation and move the generation; the old arrival must not
    count for the barrier of the new generation, which releases only once the newest
    ``w`` arrives."""
    job = _job("restart")
    keys = JobKeys(job)
    fleet = [f"f{i:02d}" for i in range(30)]

    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=job, heartbeat_timeout_s=600
    ) as (cluster, proxies):
        leader = cluster.leader(timeout_s=30)

        async def scenario() -> tuple[list[Answered], dict[str, object]]:
            notes: dict[str, object] = {}
            async with grpc.aio.insecure_channel(leader.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                x = await register(stub, job, "x")
                w1 = await register(stub, job, "w")
                assert isinstance(x, Answered) and isinstance(w1, Answered), (x, w1)
                generation = max(x.generation, w1.generation)

                def barrier(
                    who: Answered, believed: int, wait: float
                ) -> Awaitable[pb.BarrierResponse]:
                    return stub.Barrier(
                        pb.BarrierRequest(
                            header=pb.RequestHeader(job=job),
                            name="b",
                            worker_id=who.worker_id,
                            generation=believed,
                            timeout_s=wait,
                            incarnation=who.incarnation,
                        ),
                        timeout=wait + 10,
                    )

                old_wait = asyncio.ensure_future(barrier(w1, generation, 20.0))
                await until(
                    lambda: store.get(keys.barrier_arrival("b", "w")) is not None,
                    10,
                    "w incarnation 1's arrival in etcd",
                )
                for proxy in proxies:
                    proxy.delay(0.08)
                burst = [register(stub, job, f) for f in fleet]
                burst.insert(5, register(stub, job, "w"))
                burst.insert(20, register(stub, job, "w"))
                outcomes = await asyncio.gather(*burst)
                for proxy in proxies:
                    proxy.heal()
                answered = [o for o in outcomes if isinstance(o, Answered)]
                assert len(answered) == len(outcomes), [o for o in outcomes if o not in answered]
                old = await old_wait
                notes["old_status"] = pb.BarrierStatus.Name(old.status)
                newest_w = max(
                    (a for a in answered if a.worker_id == "w"), key=lambda a: a.incarnation
                )
                now = max(a.generation for a in answered)
                # Everyone but the newest w arrives for the new generation; the old
                # process tries again as incarnation 1 (it must be refused).
                others = [x, *(a for a in answered if a.worker_id != "w")]
                waits = [asyncio.ensure_future(barrier(o, now, 3.0)) for o in others]
                try:
                    retried = await barrier(w1, now, 1.0)
                    notes["old_retry"] = pb.BarrierStatus.Name(retried.status)
                except grpc.aio.AioRpcError as err:
                    notes["old_retry"] = err.code().name
                early = await asyncio.gather(*waits)
                notes["early"] = sorted({pb.BarrierStatus.Name(e.status) for e in early})
                waits = [asyncio.ensure_future(barrier(o, now, 10.0)) for o in others]
                last = await barrier(newest_w, now, 10.0)
                late = await asyncio.gather(*waits)
                notes["late"] = sorted({pb.BarrierStatus.Name(e.status) for e in [*late, last]})
                return [x, w1, *answered], notes

        answers, notes = asyncio.run(scenario())
        events = history(etcd.endpoints, keys)
        members = members_in_etcd(store, keys)

    ws = sorted(a.incarnation for a in answers if a.worker_id == "w")
    assert ws == [1, 2, 3], f"w's incarnations: {ws}"
    assert members["w"].incarnation == 3 and members["w"].alive
    assert notes["old_status"] in ("BARRIER_STATUS_MEMBERSHIP_CHANGED", "BARRIER_STATUS_TIMEOUT"), (
        notes
    )
    assert notes["old_retry"] != "BARRIER_STATUS_RELEASED", notes
    assert "BARRIER_STATUS_RELEASED" not in notes["early"], (
        f"the barrier released without the newest w: {notes}"
    )
    assert notes["late"] == ["BARRIER_STATUS_RELEASED"], notes
    # Both restarts moved the generation: w's incarnation changes each have their own.
    puts = [p for p in member_puts(events, keys) if p.record.worker_id == "w"]
    gens = [p.generation for p in puts]
    assert len(set(gens)) == len(gens) == 3, f"w's writes share a generation: {puts}"
    assert answer_violations(answers, events, keys) == []
    assert record_violations(events, keys) == []


# -- 2. a rack registering while another is declared dead --------------------------


RACK_A = [f"a{i:03d}" for i in range(150)]  # two mark-dead batches: a000-a099, a100-a149
RACK_B = [f"b{i:03d}" for i in range(60)]


def test_a_rack_registers_while_another_rack_is_declared_dead_in_batches(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """Rack A (150) goes silent and is declared dead in two batches through a slow etcd;
    while that runs, rack B (60 new ids) and the 50 ids of A's second batch register
    (restarts), and beat. Every answer must be what etcd holds, none of the new
    incarnations may be declared dead, and the leader's cached view must end equal
    to etcd's."""
    job = _job("rack")
    keys = JobKeys(job)
    timeout_s = 3.0
    restarted = RACK_A[100:]

    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=job, heartbeat_timeout_s=timeout_s
    ) as (cluster, proxies):
        leader = cluster.leader(timeout_s=30)

        async def scenario() -> list[Answered]:
            async with grpc.aio.insecure_channel(leader.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                first = await asyncio.gather(*(register(stub, job, w) for w in RACK_A))
                assert all(isinstance(o, Answered) for o in first), first
                for proxy in proxies:
                    proxy.delay(0.25)

                def a000_dead() -> bool:
                    record = members_in_etcd(store, keys).get("a000")
                    return record is not None and not record.alive

                await until(a000_dead, timeout_s + 10, "rack A's first mark-dead batch")
                beating: dict[str, Answered] = {}
                stop = asyncio.Event()

                async def beat() -> None:
                    sequence = itertools.count(1)
                    while not stop.is_set():
                        for a in list(beating.values()):
                            beat = pb.WorkerBeat(
                                worker_id=a.worker_id,
                                incarnation=a.incarnation,
                                sequence=next(sequence),
                            )
                            with contextlib.suppress(grpc.aio.AioRpcError):
                                await stub.Heartbeat(
                                    pb.HeartbeatRequest(
                                        header=pb.RequestHeader(job=job), beat=beat
                                    ),
                                    timeout=2,
                                )
                        await asyncio.sleep(0.3)  # the beat interval

                async def join(worker_id: str) -> Outcome:
                    outcome = await register(stub, job, worker_id)
                    if isinstance(outcome, Answered):
                        beating[worker_id] = outcome
                    return outcome

                beater = asyncio.ensure_future(beat())
                second = await asyncio.gather(*(join(w) for w in [*restarted, *RACK_B]))
                refused = [o for o in second if isinstance(o, Refused)]
                assert not refused, refused
                await until(
                    lambda: (
                        "declared dead" in leader.log_tail(80)
                        and all(not members_in_etcd(store, keys)[w].alive for w in RACK_A[:100])
                    ),
                    timeout_s + 15,
                    "the leader to finish declaring rack A dead",
                )
                # Past one more heartbeat timeout: a new incarnation wrongly judged silent
                # would be declared dead by now; the beats keep the rightful ones alive.
                later = time.monotonic() + timeout_s + 1.5
                await until(lambda: time.monotonic() > later, timeout_s + 5, "a timeout to pass")
                members = await asyncio.to_thread(members_in_etcd, store, keys)
                dead_new = [
                    f"{w} inc {a.incarnation}"
                    for w, a in beating.items()
                    if not members[w].alive and members[w].incarnation == a.incarnation
                ]
                assert not dead_new, f"new incarnations, beating, declared dead: {dead_new}"
                stop.set()
                await beater
                for proxy in proxies:
                    proxy.heal()
                await leader_agrees_with_etcd(leader.cluster_status, store, keys)
                return [*(o for o in first if isinstance(o, Answered)), *beating.values()]

        answers = asyncio.run(scenario())
        events = history(etcd.endpoints, keys)

    assert answer_violations(answers, events, keys) == []
    assert record_violations(events, keys) == []


# -- 3. etcd paused (slow, not down) while batches are in flight ---------------------


def test_a_paused_etcd_mid_batch_neither_duplicates_nor_loses_incarnations(
    fresh_etcd: RunningEtcd,
) -> None:
    """A registration burst (with five registrations of one id) while etcd is SIGSTOPped
    for a second, on a leader whose write timeout (0.4 s) is shorter than the pause:
    transactions in flight end with an unknown outcome and are re-planned. Callers
    re-send until answered. No incarnation may be answered twice or answered without
    being in etcd, and each id's last answer is what etcd holds."""
    if not isinstance(fresh_etcd, EtcdCluster):
        pytest.skip("pausing etcd needs its process")
    job = _job("pause")
    keys = JobKeys(job)
    ids = [f"p{i:03d}" for i in range(80)]
    ids[10:10] = ["twin"] * 5

    with (
        LocalCluster.start(
            replicas=1,
            etcd=fresh_etcd,
            job=job,
            heartbeat_timeout_s=600,
            extra_args=["--etcd-write-timeout-s", "0.4", "--etcd-read-timeout-s", "3"],
        ) as cluster,
        EtcdStore(fresh_etcd.endpoints, timeout_s=5.0) as store,
    ):
        leader = cluster.leader(timeout_s=30)

        async def scenario() -> list[list[Outcome]]:
            async with grpc.aio.insecure_channel(leader.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                assert isinstance(await register(stub, job, "warm"), Answered)
                before = await asyncio.to_thread(store.revision)

                async def staggered(n: int, worker_id: str) -> list[Outcome]:
                    await asyncio.sleep(0.015 * n)  # a stream of arrivals: many batches
                    return await register_until_answered(lambda: stub, job, worker_id)

                calls = asyncio.gather(*(staggered(n, w) for n, w in enumerate(ids)))
                await until(lambda: store.revision() > before, 10, "the burst's first batch")
                for pause_s in (0.7, 0.9):  # twice, each longer than a write's timeout
                    fresh_etcd.pause_member(0)
                    try:
                        await asyncio.sleep(pause_s)  # the fault's duration
                    finally:
                        fresh_etcd.resume_member(0)
                    await asyncio.sleep(0.2)  # between the faults
                outcomes = await calls
                await leader_agrees_with_etcd(leader.cluster_status, store, keys)
                return outcomes

        per_call = asyncio.run(scenario())
        events = history(fresh_etcd.endpoints, keys)
        members = members_in_etcd(store, keys)
        leaders_after = cluster.leaders()

    answers = [o for outcomes in per_call for o in outcomes if isinstance(o, Answered)]
    unanswered = [ids[i] for i, o in enumerate(per_call) if not isinstance(o[-1], Answered)]
    assert not unanswered, f"never answered: {unanswered}"
    final = {a.worker_id: a for a in sorted(answers, key=lambda a: a.incarnation)}
    assert answer_violations(answers, events, keys) == []
    assert final_violations(final, members) == []
    twins = sorted(a.incarnation for a in answers if a.worker_id == "twin")
    assert len(twins) == 5 and len(set(twins)) == 5, f"twin incarnations: {twins}"
    assert record_violations(events, keys) == []
    assert leaders_after == [leader], "a one-second etcd pause cost the leadership"


# -- 4. callers giving up mid-write --------------------------------------------------


def test_callers_cancelling_mid_write_leave_their_batch_answered_correctly(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """Through a slow etcd, 20 of 60 registrations give up after 0.15 s (their batch
    is queued or in flight) and at once re-send; the others must be answered as if
    alone, and each re-sent registration must end as etcd's record (a newer
    incarnation than the abandoned one, which may have been written)."""
    job = _job("cancel")
    keys = JobKeys(job)
    patient = [f"c{i:03d}" for i in range(40)]
    hasty = [f"h{i:03d}" for i in range(20)]

    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=job, heartbeat_timeout_s=600
    ) as (cluster, proxies):
        leader = cluster.leader(timeout_s=30)

        async def scenario() -> tuple[list[Outcome], list[Outcome], list[Outcome]]:
            async with grpc.aio.insecure_channel(leader.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                assert isinstance(await register(stub, job, "warm"), Answered)
                for proxy in proxies:
                    proxy.delay(0.1)

                async def hasty_then_resend(worker_id: str) -> tuple[Outcome, Outcome]:
                    gave_up = await register(stub, job, worker_id, timeout=0.15)
                    return gave_up, await register(stub, job, worker_id)

                interleaved = [register(stub, job, w) for w in patient[:20]]
                interleaved += [hasty_then_resend(w) for w in hasty]
                interleaved += [register(stub, job, w) for w in patient[20:]]
                results = await asyncio.gather(*interleaved)
                for proxy in proxies:
                    proxy.heal()
                plain = [r for r in results if not isinstance(r, tuple)]
                pairs = [r for r in results if isinstance(r, tuple)]
                await leader_agrees_with_etcd(leader.cluster_status, store, keys)
                return plain, [p[0] for p in pairs], [p[1] for p in pairs]

        plain, abandoned, resent = asyncio.run(scenario())
        events = history(etcd.endpoints, keys)
        members = members_in_etcd(store, keys)

    assert all(isinstance(o, Answered) for o in plain), plain
    assert all(isinstance(o, Answered) for o in resent), resent
    gave_up = [o for o in abandoned if isinstance(o, Refused)]
    assert gave_up, "no hasty call gave up: the attack did not happen"
    answers = [o for o in [*plain, *abandoned, *resent] if isinstance(o, Answered)]
    assert answer_violations(answers, events, keys) == []
    final = {o.worker_id: o for o in [*plain, *resent] if isinstance(o, Answered)}
    assert final_violations(final, members) == []
    assert record_violations(events, keys) == []


# -- 5. a leader deposed with registrations queued ------------------------------------


def test_registrations_queued_on_a_deposed_leader_are_refused_and_never_written(  # noqa: PLR0915
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """A burst queues on a leader behind a slow etcd; the leader is SIGSTOPped, a new one
    elected, the old one resumed. What the old one did not write before its term ended
    must be refused (NOT_LEADER / UNAVAILABLE), never written under its term after the
    new term's first write; re-sent to the new leader, every id ends as its last answer."""
    job = _job("deposed")
    keys = JobKeys(job)
    ids = [f"d{i:03d}" for i in range(120)]

    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=3, job=job, heartbeat_timeout_s=600
    ) as (cluster, proxies):
        old = cluster.leader(timeout_s=30)
        index = int(old.replica_id.rsplit("-", 1)[1])
        old_proxies = proxies[index * len(etcd.endpoints) : (index + 1) * len(etcd.endpoints)]

        async def scenario() -> tuple[list[Outcome], list[list[Outcome]], int]:
            async with grpc.aio.insecure_channel(old.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                assert isinstance(await register(stub, job, "warm"), Answered)
                for proxy in old_proxies:
                    proxy.delay(0.15)
                before = await asyncio.to_thread(store.revision)
                burst = asyncio.gather(*(register(stub, job, w, timeout=40) for w in ids))
                await until(lambda: store.revision() > before, 10, "the burst's first batch")
                old.pause()
                try:
                    new = await asyncio.to_thread(cluster.wait_new_leader, old, 15)
                finally:
                    old.resume()
                for proxy in old_proxies:
                    proxy.heal()
                first = await burst
            term = (await asyncio.to_thread(new.cluster_status)).header.term
            channels: dict[str, grpc.aio.Channel] = {}

            def stub_of_new() -> pb_grpc.CoordinatorStub:
                address = cluster.leader(timeout_s=10).address
                if address not in channels:
                    channels[address] = grpc.aio.insecure_channel(address)
                return pb_grpc.CoordinatorStub(channels[address])

            try:
                resent = await asyncio.gather(
                    *(
                        register_until_answered(stub_of_new, job, o.worker_id)
                        for o in first
                        if isinstance(o, Refused)
                    )
                )
            finally:
                for ch in channels.values():
                    await ch.close()
            return list(first), list(resent), term

        first, resent, new_term = asyncio.run(scenario())
        events = history(etcd.endpoints, keys)
        members = members_in_etcd(store, keys)

    refused = [o for o in first if isinstance(o, Refused)]
    answers = [o for o in first if isinstance(o, Answered)]
    answers += [o for outcomes in resent for o in outcomes if isinstance(o, Answered)]
    old_answers = [a for a in answers if a.term and a.term < new_term]
    assert answer_violations(answers, events, keys) == []
    # Nothing the deposed leader answered was written after the new term's first write.
    puts = member_puts(events, keys)
    first_new = min((p.revision for p in puts if p.term == new_term), default=None)
    late = [
        f"{p.record.worker_id} inc {p.record.incarnation} term {p.term} r{p.revision}"
        for p in puts
        if first_new is not None and p.revision > first_new and p.term < new_term
    ]
    assert not late, f"the deposed leader wrote after the new term began: {late}"
    assert refused, "every registration was written before the pause: no attack"
    codes = {o.code for o in refused}
    assert codes <= {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }, codes
    final: dict[str, Answered] = {a.worker_id: a for a in old_answers}
    for outcomes in resent:
        if outcomes and isinstance(outcomes[-1], Answered):
            final[outcomes[-1].worker_id] = outcomes[-1]
    missing = [o.worker_id for o in refused if o.worker_id not in final]
    assert not missing, f"re-sent, never answered: {missing}"
    assert final_violations(final, members) == []
    assert record_violations(events, keys) == []


# -- 6. a torchrun round among plain registrations -----------------------------------


def test_a_round_registers_among_plain_batches_as_one_generation(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """Four ranks of a torchrun round register amid 60 plain registrations (and two
    restarts of one plain id) through a slow etcd. The round must be one transaction
    (its ranks share one revision and generation), every answer must be what etcd
    holds, and the leader's cached view must end equal to etcd's."""
    job = _job("round")
    keys = JobKeys(job)
    plain = [f"q{i:03d}" for i in range(60)]
    plain[30:30] = ["again", "again"]
    world = 4

    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=job, heartbeat_timeout_s=600
    ) as (cluster, proxies):
        leader = cluster.leader(timeout_s=30)

        async def scenario() -> tuple[list[Outcome], list[Answered]]:
            async with grpc.aio.insecure_channel(leader.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                assert isinstance(await register(stub, job, "warm"), Answered)
                for proxy in proxies:
                    proxy.delay(0.08)

                async def rank(r: int) -> Answered:
                    pid = next(_pids)
                    seat = pb.RendezvousRound(
                        rdzv_id="mix", round=1, world_size=world, rank=r, life=1
                    )
                    for _ in range(20):
                        answer = await stub.RegisterWorker(
                            _request(job, f"rk{r}", pid, seat), timeout=10
                        )
                        if not answer.round_pending:
                            return Answered(
                                f"rk{r}",
                                pid,
                                answer.incarnation,
                                answer.header.generation,
                                answer.header.term,
                                time.monotonic(),
                            )
                    raise AssertionError(f"rank {r}: the round never formed")

                ranks = [rank(r) for r in range(world)]
                plains = [register(stub, job, w) for w in plain]
                mixed = [*plains[:20], ranks[0], *plains[20:40], *ranks[1:], *plains[40:]]
                outcomes = await asyncio.gather(*mixed)
                for proxy in proxies:
                    proxy.heal()
                await leader_agrees_with_etcd(leader.cluster_status, store, keys)
                round_answers = [
                    o for o in outcomes if isinstance(o, Answered) and o.worker_id.startswith("rk")
                ]
                others = [
                    o
                    for o in outcomes
                    if not (isinstance(o, Answered) and o.worker_id.startswith("rk"))
                ]
                return others, round_answers

        others, round_answers = asyncio.run(scenario())
        events = history(etcd.endpoints, keys)
        members = members_in_etcd(store, keys)

    assert all(isinstance(o, Answered) for o in others), others
    answers = [*round_answers, *(o for o in others if isinstance(o, Answered))]
    assert answer_violations(answers, events, keys) == []
    rank_puts = [p for p in member_puts(events, keys) if p.record.worker_id.startswith("rk")]
    assert len({p.revision for p in rank_puts}) == 1, f"the round took several writes: {rank_puts}"
    assert all(members[f"rk{r}"].rdzv_id == "mix" for r in range(world))
    agains = sorted(a.incarnation for a in answers if a.worker_id == "again")
    assert agains == [1, 2], agains
    assert record_violations(events, keys) == []


# -- 7. every write applied, every answer late (outcome unknown, applied) -------------


def test_writes_applied_but_answered_too_late_never_answer_a_superseded_incarnation(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """The leader's etcd round trip (0.5 s through a proxy) exceeds its write timeout
    (0.4 s): each batch's transaction applies in etcd but ends with an unknown outcome,
    is re-planned on a re-read view (a newer incarnation) and applies again. Callers
    re-send; after 1.5 s the proxy heals. No answer may name an incarnation that a later
    write of the same batch superseded, no incarnation may be written twice, and each
    id (with three of ``twin``) must end as its last answer."""
    job = _job("late")
    keys = JobKeys(job)
    ids = [f"l{i:02d}" for i in range(40)]
    ids[5:5] = ["twin"] * 3

    with cluster_dialing_etcd_through_proxies(
        etcd,
        replicas=1,
        job=job,
        heartbeat_timeout_s=600,
        extra_args=["--etcd-write-timeout-s", "0.4", "--etcd-read-timeout-s", "3"],
    ) as (cluster, proxies):
        leader = cluster.leader(timeout_s=30)

        async def scenario() -> list[list[Outcome]]:
            async with grpc.aio.insecure_channel(leader.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                assert isinstance(await register(stub, job, "warm"), Answered)
                for proxy in proxies:
                    proxy.delay(0.25)
                calls = asyncio.gather(
                    *(register_until_answered(lambda: stub, job, w) for w in ids)
                )
                healed = time.monotonic() + 1.5
                await until(lambda: time.monotonic() > healed, 10, "the slow period to end")
                for proxy in proxies:
                    proxy.heal()
                outcomes = await calls
                await leader_agrees_with_etcd(leader.cluster_status, store, keys)
                return outcomes

        per_call = asyncio.run(scenario())
        events = history(etcd.endpoints, keys)
        members = members_in_etcd(store, keys)

    answers = [o for outcomes in per_call for o in outcomes if isinstance(o, Answered)]
    unanswered = [ids[i] for i, o in enumerate(per_call) if not isinstance(o[-1], Answered)]
    assert not unanswered, f"never answered: {unanswered}"
    refused = [o for outcomes in per_call for o in outcomes if isinstance(o, Refused)]
    assert refused, "no write ended with an unknown outcome: the attack did not happen"
    assert answer_violations(answers, events, keys) == []
    final = {a.worker_id: a for a in sorted(answers, key=lambda a: a.incarnation)}
    assert final_violations(final, members) == []
    assert record_violations(events, keys) == []


# -- 8. one id registered plainly, then as a round's rank, while a batch is in flight --


def test_a_plain_registration_queued_before_a_rank_rejoins_does_not_supersede_it(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """Two registrations of ``rk0`` one after the other: a plain one (an earlier process
    of the id), then a rank of a written torchrun round registering again as a new
    process (REJOIN). The plain one arrives while a registration batch is in flight, so
    it queues in the batcher; the rejoin's write goes straight to the write lock. Written
    one at a time in arrival order (as before group commit, and as registrations.py
    promises for two registrations of one id) the rank, which came last, holds the id.
    It is answered as a member and must not be superseded afterwards by the plain
    registration that was sent before it (its beats would then be STALE_INCARNATION:
    the newest process told to exit)."""
    job = _job("order")
    keys = JobKeys(job)

    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=job, heartbeat_timeout_s=600
    ) as (cluster, proxies):
        leader = cluster.leader(timeout_s=30)

        async def scenario() -> tuple[Answered, Answered, Outcome, str]:
            async with grpc.aio.insecure_channel(leader.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)

                async def rank(r: int) -> Answered:
                    pid = next(_pids)
                    seat = pb.RendezvousRound(rdzv_id="ord", round=1, world_size=2, rank=r, life=1)
                    for _ in range(20):
                        answer = await stub.RegisterWorker(
                            _request(job, f"rk{r}", pid, seat), timeout=15
                        )
                        if not answer.round_pending:
                            return Answered(
                                f"rk{r}",
                                pid,
                                answer.incarnation,
                                answer.header.generation,
                                answer.header.term,
                                time.monotonic(),
                            )
                    raise AssertionError(f"rank {r}: the round never formed")

                first, _ = await asyncio.gather(rank(0), rank(1))  # the round, written
                for proxy in proxies:
                    proxy.delay(0.3)  # one transaction: about 0.6 s
                fillers = [asyncio.ensure_future(register(stub, job, f"o{i}")) for i in range(5)]
                # The scenario's timeline, inside the fillers' transaction (about 0.6 s):
                # the plain rk0 0.15 s after the fillers (it queues behind their batch),
                # the rank's new process 0.15 s after the plain rk0.
                await asyncio.sleep(0.15)
                plain = asyncio.ensure_future(register(stub, job, "rk0"))
                await asyncio.sleep(0.15)
                rejoined = await rank(0)
                plain_outcome = await plain
                await asyncio.gather(*fillers)
                for proxy in proxies:
                    proxy.heal()
                beat = await stub.Heartbeat(
                    pb.HeartbeatRequest(
                        header=pb.RequestHeader(job=job),
                        beat=pb.WorkerBeat(
                            worker_id="rk0", incarnation=rejoined.incarnation, sequence=1
                        ),
                    ),
                    timeout=5,
                )
                return first, rejoined, plain_outcome, pb.WorkerStatus.Name(beat.status)

        first, rejoined, plain, beat_status = asyncio.run(scenario())
        members = members_in_etcd(store, keys)

    assert isinstance(plain, Answered), plain
    held = members["rk0"]
    assert rejoined.incarnation > first.incarnation
    assert (held.pid, held.incarnation) == (rejoined.pid, rejoined.incarnation), (
        f"rk0: the rank's new process (registered last, answered a member as incarnation "
        f"{rejoined.incarnation}, pid {rejoined.pid}) was superseded by the plain "
        f"registration sent before it (incarnation {plain.incarnation}, pid {plain.pid}); "
        f"etcd holds incarnation {held.incarnation} pid {held.pid} rdzv_id "
        f"{held.rdzv_id!r}; the rank's beat is answered {beat_status}"
    )


# -- 9. a restart's registration queued, then the old process's clean exit -------------


def test_a_restart_queued_before_the_old_processes_deregister_keeps_incarnations_growing(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """``z`` runs as incarnation 3 (its first process, incarnation 1, may linger as a
    leftover). A new process of ``z`` registers while a batch is in flight (it queues in
    the batcher); 0.15 s later the incarnation-3 process exits cleanly (Deregister of
    incarnation 3, straight to the write lock). In arrival order the registration makes
    incarnation 4 and the deregister of 3 a no-op; written the other way round the record
    is deleted first and the new process restarts the count at 1: the number of the
    leftover first process, whose beats and barrier arrivals would then count for it."""
    job = _job("dereg")
    keys = JobKeys(job)

    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=job, heartbeat_timeout_s=600
    ) as (cluster, proxies):
        leader = cluster.leader(timeout_s=30)

        async def scenario() -> tuple[list[Outcome], Outcome, bool, str]:
            async with grpc.aio.insecure_channel(leader.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                earlier = [await register(stub, job, "z") for _ in range(3)]
                for proxy in proxies:
                    proxy.delay(0.3)  # one transaction: about 0.6 s
                fillers = [asyncio.ensure_future(register(stub, job, f"o{i}")) for i in range(5)]
                await asyncio.sleep(0.15)  # the timeline, inside the fillers' transaction
                restart = asyncio.ensure_future(register(stub, job, "z"))
                await asyncio.sleep(0.15)
                gone = await stub.Deregister(
                    pb.DeregisterRequest(
                        header=pb.RequestHeader(job=job), worker_id="z", incarnation=3
                    ),
                    timeout=15,
                )
                new = await restart
                await asyncio.gather(*fillers)
                for proxy in proxies:
                    proxy.heal()
                leftover = await stub.Heartbeat(
                    pb.HeartbeatRequest(
                        header=pb.RequestHeader(job=job),
                        beat=pb.WorkerBeat(worker_id="z", incarnation=1, sequence=1),
                    ),
                    timeout=5,
                )
                return earlier, new, gone.removed, pb.WorkerStatus.Name(leftover.status)

        earlier, new, removed, leftover_status = asyncio.run(scenario())
        members = members_in_etcd(store, keys)

    assert [o.incarnation for o in earlier if isinstance(o, Answered)] == [1, 2, 3]
    assert isinstance(new, Answered), new
    assert new.incarnation > 3, (
        f"the restart of z, sent before incarnation 3's Deregister, was written after it: "
        f"z restarted at incarnation {new.incarnation} (Deregister removed={removed}); "
        f"the leftover incarnation-1 process's beat is now answered {leftover_status}; "
        f"etcd holds incarnation {members['z'].incarnation} pid {members['z'].pid}"
    )
