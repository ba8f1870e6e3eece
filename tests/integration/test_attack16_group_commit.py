"""Attack: checkpoint group commit where the parts meet, on real etcd and real coordinators.

The leader now writes the checkpoint commits that queue while one
transaction runs together in the next (``coordinator/commit_batches.py``):
each commit is decided in order as if applied alone, and the accepted ones
merge into one fenced transaction. These tests put, into one batch, what a
real job puts there: a restarted worker's old and new incarnations, a record
of another job life, a retry, a re-save, a crowd leaving the job, a write
whose outcome is unknown, a leader losing etcd, and commits that are each
well within etcd's limits. Every verdict is judged from etcd's own record
(``dtr.chaos.etcd_record``) as well as from the answers.

Workers are raw gRPC stubs (no worker library), so what is tested is the
coordinator, not a client's retries. Commits are sent together while the
coordinators' etcd is slowed by a proxy, so they queue behind one another
and share transactions.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import grpc
import grpc.aio
import pytest

from dtr.chaos.checker_record import check_record
from dtr.chaos.etcd_record import RecordEvent, read_record
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.store import EtcdStore, Get
from helpers import cluster_dialing_etcd_through_proxies

pytestmark = pytest.mark.integration

Answer = pb.CommitCheckpointResponse | grpc.StatusCode
ACCEPTED = pb.COMMIT_STATUS_ACCEPTED
DUPLICATE = pb.COMMIT_STATUS_DUPLICATE
SUPERSEDED = pb.COMMIT_STATUS_SUPERSEDED


def unique_job(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Member:
    """What one worker process learned from RegisterWorker, as its commits carry it."""

    job: str
    worker_id: str
    incarnation: int
    generation: int
    job_life: str


async def register(stub: pb_grpc.CoordinatorStub, job: str, worker_id: str) -> Member:
    response = await stub.RegisterWorker(
        pb.RegisterWorkerRequest(header=pb.RequestHeader(job=job), worker_id=worker_id, capacity=1),
        timeout=30,
    )
    return Member(
        job,
        worker_id,
        int(response.incarnation),
        int(response.header.generation),
        response.job_life,
    )


async def register_all(
    stub: pb_grpc.CoordinatorStub, job: str, ids: Sequence[str]
) -> dict[str, Member]:
    """Register ``ids`` together; every member carries the generation once all joined."""
    members = await asyncio.gather(*(register(stub, job, w) for w in ids))
    newest = max(m.generation for m in members)
    return {m.worker_id: replace(m, generation=newest) for m in members}


def commit(
    member: Member, step: int, *, uri: str | None = None, manifest_uri: str = ""
) -> pb.CommitCheckpointRequest:
    return pb.CommitCheckpointRequest(
        header=pb.RequestHeader(job=member.job),
        step=step,
        worker_id=member.worker_id,
        generation=member.generation,
        incarnation=member.incarnation,
        job_life=member.job_life,
        part=pb.CheckpointPart(
            uri=uri or f"file:///ckpt/step-{step}/{member.worker_id}.{member.incarnation}.dtr",
            size_bytes=10,
            checksum=pb.Checksum(algorithm=pb.CHECKSUM_ALGORITHM_CRC32C, hex_digest="0a0b0c0d"),
            format_version=1,
            manifest_uri=manifest_uri,
        ),
    )


async def send(
    stub: pb_grpc.CoordinatorStub, request: pb.CommitCheckpointRequest, timeout_s: float = 30
) -> Answer:
    """The answer, or the status code of the refusal (with its details kept for messages)."""
    try:
        response: pb.CommitCheckpointResponse = await stub.CommitCheckpoint(
            request, timeout=timeout_s
        )
    except grpc.aio.AioRpcError as err:
        return err.code()
    return response


def shown(answers: Sequence[Answer]) -> list[str]:
    return [
        a.name if isinstance(a, grpc.StatusCode) else pb.CommitStatus.Name(a.status)
        for a in answers
    ]


def stored_parts(store: EtcdStore, keys: JobKeys, step: int) -> dict[str, dict[str, object]]:
    found = store.txn([], [Get(keys.checkpoint_step_prefix(step), prefix=True)]).results[0]
    assert isinstance(found, tuple)
    return {json.loads(kv.value)["worker_id"]: json.loads(kv.value) for kv in found}


def record_violations(etcd: RunningEtcd, keys: JobKeys) -> list[str]:
    """What etcd's record-checkers (DESIGN §5) find wrong with the job's whole history."""
    events = read_record(etcd.endpoints, keys, stall_s=20, overall_s=60)
    found = [
        f"{result.name}: {v}" for result in check_record(events, keys) for v in result.violations
    ]
    return found + parts_of_a_dead_generation(events, keys)


def parts_of_a_dead_generation(events: Sequence[RecordEvent], keys: JobKeys) -> list[str]:
    """Parts etcd recorded at a revision where the job's generation was not theirs."""
    generation, found = 0, []
    for event in events:  # in revision order; a commit never moves the generation itself
        if event.kind == "put" and event.key == keys.generation:
            generation = int(event.value)
        elif event.kind == "put" and event.key.startswith(keys.checkpoint_steps_prefix):
            part = json.loads(event.value)
            if part["generation"] != generation:
                found.append(
                    f"revision {event.revision}: part of {part['worker_id']} for generation "
                    f"{part['generation']} written while the generation was {generation}"
                )
    return found


def puts_of(etcd: RunningEtcd, keys: JobKeys, key: str) -> int:
    return sum(
        1
        for e in read_record(etcd.endpoints, keys, stall_s=20, overall_s=60)
        if e.kind == "put" and e.key == key
    )


@pytest.fixture
def store(etcd: RunningEtcd) -> Iterator[EtcdStore]:
    with EtcdStore(etcd.endpoints, timeout_s=5.0) as opened:
        yield opened


# -- one batch, every kind of answer -------------------------------------------------


def test_one_batch_of_restarts_retries_resaves_and_another_life_answers_each_as_alone(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """A restarted worker's old and new incarnation, a retry, a re-save and another life's record.

    Judged one by one they are: SUPERSEDED (the old incarnation's generation
    is gone), ACCEPTED, ACCEPTED then DUPLICATE, ALREADY_EXISTS (a step's
    part cannot change), FAILED_PRECONDITION (another job life); in one
    batch each must get that same answer alone, and the step completes with
    the new incarnation's part.
    """
    job = unique_job("g16mix")
    keys = JobKeys(job)
    with cluster_dialing_etcd_through_proxies(etcd, replicas=1, job=job) as (cluster, proxies):

        async def scenario() -> tuple[list[Answer], int]:
            async with grpc.aio.insecure_channel(cluster.leader().address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                first = await register_all(stub, job, ["a", "b", "d", "w"])
                old_w = first["w"]
                again = await register(stub, job, "w")  # restarted under its own id
                members = {k: replace(m, generation=again.generation) for k, m in first.items()}
                new_w = members["w"] = again
                assert again.generation > old_w.generation, "a new incarnation bumps it"
                assert (await send(stub, commit(members["d"], 10))).status == ACCEPTED
                other_life = replace(members["b"], job_life=f"{'f' * 16}/{'e' * 32}")
                for proxy in proxies:
                    proxy.delay(0.15)  # commits sent together queue behind one write
                before = await asyncio.to_thread(store.revision)
                batch = [
                    commit(old_w, 10, uri="file:///ckpt/old-w.dtr"),
                    commit(new_w, 10),
                    commit(members["a"], 10),
                    commit(members["a"], 10),
                    commit(members["d"], 10, uri="file:///ckpt/resaved-d.dtr"),
                    commit(other_life, 10),
                    commit(members["b"], 10),
                ]
                answers = await asyncio.gather(*(send(stub, r) for r in batch))
                for proxy in proxies:
                    proxy.heal()
                return list(answers), await asyncio.to_thread(store.revision) - before

        answers, transactions = asyncio.run(scenario())
        parts = stored_parts(store, keys, 10)
    assert shown(answers[:2]) == ["COMMIT_STATUS_SUPERSEDED", "COMMIT_STATUS_ACCEPTED"], (
        f"old incarnation, new incarnation: {shown(answers)}"
    )
    assert sorted(shown(answers[2:4])) == ["COMMIT_STATUS_ACCEPTED", "COMMIT_STATUS_DUPLICATE"]
    assert shown(answers[4:]) == [
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "COMMIT_STATUS_ACCEPTED",
    ], shown(answers)
    completing = [
        a for a in answers if isinstance(a, pb.CommitCheckpointResponse) and a.status == ACCEPTED
    ]
    assert sum(a.step_complete for a in completing) == 1, "exactly one commit completes step 10"
    assert parts["w"]["uri"] == "file:///ckpt/step-10/w.2.dtr", "the new incarnation's part"
    assert parts["d"]["uri"] == "file:///ckpt/step-10/d.1.dtr", "a step's part never changes"
    assert transactions <= 2, f"7 commits took {transactions} transactions: no batch was tested"
    assert record_violations(etcd, keys) == []


def test_an_old_incarnation_knowing_the_new_generation_never_becomes_the_members_part(
    etcd: RunningEtcd,
) -> None:
    """A restarted worker's old process (paused, then resumed) commits under the new generation.

    It learned the generation from any answer's header (the worker library
    keeps the newest it saw) before a heartbeat told it a newer incarnation
    took its id. The member of that generation is the new incarnation
    (DESIGN §5.4: every member *incarnation* committed a part); the old
    process's part must not be recorded for it, nor block the new one's.
    The old commit is sent first, alone, so the outcome does not hang on
    which of the two a batch happens to order first (it breaks either way:
    ``plan_commit`` never looks at the commit's incarnation).
    """
    job = unique_job("g16inc")
    with cluster_dialing_etcd_through_proxies(etcd, replicas=1, job=job) as (cluster, proxies):

        async def scenario() -> list[Answer]:
            async with grpc.aio.insecure_channel(cluster.leader().address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                first = await register_all(stub, job, ["x", "w"])
                new_w = await register(stub, job, "w")
                old_w = replace(first["w"], generation=new_w.generation)  # learnt, not its own
                x = replace(first["x"], generation=new_w.generation)
                for proxy in proxies:
                    proxy.delay(0.1)
                requests = [
                    commit(old_w, 10, uri="file:///ckpt/old-w.dtr"),
                    commit(new_w, 10),
                    commit(x, 10),
                ]
                return [
                    await send(stub, requests[0]),
                    *await asyncio.gather(*(send(stub, r) for r in requests[1:])),
                ]

        answers = asyncio.run(scenario())
    assert shown(answers) == [
        "COMMIT_STATUS_SUPERSEDED",
        "COMMIT_STATUS_ACCEPTED",
        "COMMIT_STATUS_ACCEPTED",
    ], f"old incarnation, new incarnation, x: {shown(answers)}"


# -- commits each well within etcd's limits --------------------------------------------


def test_commits_each_within_etcds_limits_are_never_refused_for_sharing_a_transaction(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """A batch is cut at 40 commits, not at etcd's 1.5 MiB: valid commits must not add up past it.

    A part's uri (and manifest uri) may be 4096 characters of any script;
    the stored record escapes them to ASCII (up to 12 bytes a character), so
    one commit's transaction is ~100 kB: fine alone. Twenty of them queued
    together must each be accepted, as they are one at a time.
    """
    job = unique_job("g16fat")
    keys = JobKeys(job)
    fat = "\U0001f600" * 4000

    def fat_commit(member: Member, step: int) -> pb.CommitCheckpointRequest:
        tail = f"/{member.worker_id}/{step}"
        return commit(
            member, step, uri=f"file:///{fat}{tail}", manifest_uri=f"file:///{fat}{tail}m"
        )

    with cluster_dialing_etcd_through_proxies(etcd, replicas=1, job=job) as (cluster, proxies):

        async def scenario() -> tuple[Answer, list[Answer]]:
            async with grpc.aio.insecure_channel(cluster.leader().address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                ids = [f"f{i:02d}" for i in range(20)]
                members = await register_all(stub, job, ids)
                alone = await send(stub, fat_commit(members["f00"], 10))
                for proxy in proxies:
                    proxy.delay(0.15)
                together = await asyncio.gather(
                    *(send(stub, fat_commit(members[w], 20)) for w in ids)
                )
                for proxy in proxies:
                    proxy.heal()
                return alone, list(together)

        alone, together = asyncio.run(scenario())
        parts = stored_parts(store, keys, 20)
    assert shown([alone]) == ["COMMIT_STATUS_ACCEPTED"], "one such commit alone is valid"
    assert set(shown(together)) == {"COMMIT_STATUS_ACCEPTED"}, (
        f"valid commits refused for sharing a transaction: {shown(together)}"
    )
    assert len(parts) == 20


# -- a crowd leaving while its commits are queued --------------------------------------


def test_a_crowd_leaving_while_its_commits_queue_never_completes_a_step_without_a_member(
    etcd: RunningEtcd,
) -> None:
    """Twelve of sixteen workers leave (each a generation bump) while all sixteen commit.

    Whatever the interleaving, etcd's record must show no part written for a
    generation that was no longer current, and a step complete only with one
    part per live member of its generation (``record-checkpoints``).
    (Deregistration stands in for a rack's mark-dead: both are fenced leader
    writes that move the generation, queued on the same write lock.)
    """
    job = unique_job("g16rack")
    keys = JobKeys(job)
    with cluster_dialing_etcd_through_proxies(etcd, replicas=1, job=job) as (cluster, proxies):

        async def scenario() -> list[Answer]:
            async with grpc.aio.insecure_channel(cluster.leader().address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                rack = [f"r{i:02d}" for i in range(12)]
                members = await register_all(stub, job, [*rack, "s0", "s1", "s2", "s3"])
                await send(stub, commit(members["s0"], 5))  # loads the book: straight to writes
                for proxy in proxies:
                    proxy.delay(0.1)

                async def leave(worker_id: str) -> None:
                    await stub.Deregister(
                        pb.DeregisterRequest(
                            header=pb.RequestHeader(job=job),
                            worker_id=worker_id,
                            incarnation=members[worker_id].incarnation,
                        ),
                        timeout=30,
                    )

                commits = [send(stub, commit(m, 30)) for m in members.values()]
                answers, _ = await asyncio.gather(
                    asyncio.gather(*commits), asyncio.gather(*(leave(w) for w in rack))
                )
                for proxy in proxies:
                    proxy.heal()
                return list(answers)

        answers = asyncio.run(scenario())
    assert all(isinstance(a, pb.CommitCheckpointResponse) for a in answers), shown(answers)
    assert record_violations(etcd, keys) == []


# -- a write whose outcome is unknown ---------------------------------------------------


def test_a_batch_whose_write_times_out_is_replanned_without_losing_or_doubling_a_part(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """etcd slower than the write timeout: the batch's write lands after the leader gave up on it.

    The leader re-reads and re-plans: the parts already written are
    duplicates, never written twice, never lost; the step completes once.
    """
    job = unique_job("g16slow")
    keys = JobKeys(job)
    options = ("--lease-ttl-s", "10", "--renew-deadline-s", "8")
    timeouts = ("--etcd-write-timeout-s", "0.5", "--etcd-read-timeout-s", "5")
    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=job, extra_args=(*options, *timeouts)
    ) as (cluster, proxies):

        async def scenario() -> tuple[list[Answer], list[Answer]]:
            async with grpc.aio.insecure_channel(cluster.leader().address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                members = await register_all(stub, job, ["a", "b", "c", "d"])
                await send(stub, commit(members["a"], 40))
                for proxy in proxies:
                    proxy.delay(0.4)  # a round trip of ~0.8 s: past the 0.5 s write timeout
                slow = list(
                    await asyncio.gather(
                        *(send(stub, commit(members[w], 40), 6) for w in ("b", "c", "d"))
                    )
                )
                for proxy in proxies:
                    proxy.heal()
                again = [await send(stub, commit(members[w], 40)) for w in ("b", "c", "d")]
                return slow, again

        slow, again = asyncio.run(scenario())
        parts = stored_parts(store, keys, 40)
    assert set(shown(again)) <= {"COMMIT_STATUS_ACCEPTED", "COMMIT_STATUS_DUPLICATE"}, (
        f"slow: {shown(slow)}; again: {shown(again)}"
    )
    assert sorted(parts) == ["a", "b", "c", "d"]
    for worker in ("a", "b", "c", "d"):
        assert puts_of(etcd, keys, keys.checkpoint_commit(40, worker)) == 1, worker
    assert puts_of(etcd, keys, keys.checkpoint_complete(40)) == 1
    assert record_violations(etcd, keys) == []


# -- leadership lost with commits queued ------------------------------------------------


def test_commits_queued_on_a_leader_that_loses_etcd_are_all_answered_promptly(
    etcd: RunningEtcd,
) -> None:
    """The leader is cut off from etcd with commits queued: each hears NOT_LEADER/UNAVAILABLE.

    None may wait out its own deadline (the caller would then not know the
    leader is gone, and its retry would queue on the same deposed replica).
    """
    job = unique_job("g16lost")
    with cluster_dialing_etcd_through_proxies(etcd, replicas=2, job=job) as (cluster, proxies):
        leader = cluster.leader()
        index = cluster.replicas.index(leader)

        async def scenario() -> tuple[list[Answer], float]:
            async with grpc.aio.insecure_channel(leader.address) as channel:
                stub = pb_grpc.CoordinatorStub(channel)
                members = await register_all(stub, job, [f"q{i:02d}" for i in range(30)])
                await send(stub, commit(members["q00"], 50))
                proxies[index].delay(0.2)
                started = time.monotonic()
                queued = [
                    asyncio.ensure_future(send(stub, commit(m, 50), 25)) for m in members.values()
                ]
                proxies[index].blackhole()
                answers = await asyncio.gather(*queued)
                return list(answers), time.monotonic() - started

        answers, elapsed_s = asyncio.run(scenario())
    codes = {a for a in answers if isinstance(a, grpc.StatusCode)}
    assert codes <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION}, shown(
        answers
    )
    assert elapsed_s < 15, f"the queued commits were answered only after {elapsed_s:.1f} s"
