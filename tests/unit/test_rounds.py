"""Rendezvous rounds as generations (coordinator/rounds.py), and a rank's seat from its env."""

from __future__ import annotations

import asyncio
import json

import pytest

from dtr.coordinator.membership import batches
from dtr.coordinator.rounds import (
    RoundGate,
    RoundJoin,
    Verdict,
    judge,
    plan_round,
    round_changes,
)
from dtr.coordinator.state import ClusterView, MemberRecord
from dtr.errors import InvalidArgument, RoundIncomplete, StaleRound
from dtr.keys import JobKeys
from dtr.proto import coordinator_pb2 as pb
from dtr.store import Put
from dtr.worker.rendezvous_round import RoundSeat, register_in_round, round_from_env

KEYS = JobKeys("rounds")


def join(rank: int, round_: int = 1, world: int = 2, pid: int = 100, life: int = 7) -> RoundJoin:
    return RoundJoin("run", life, round_, world, rank, f"h-rank{rank}", 1.0, "h", pid + rank)


def member(
    rank: int, round_: int, *, alive: bool = True, incarnation: int = 1, life: int = 7
) -> MemberRecord:
    return MemberRecord(
        f"h-rank{rank}", 1.0, alive, incarnation, "h", 100 + rank, "run", round_, life
    )


def view_of(*records: MemberRecord, generation: int = 5) -> ClusterView:
    return ClusterView(generation=generation, members={r.worker_id: r for r in records})


def test_a_plain_record_encodes_without_round_fields_so_old_records_still_compare_equal() -> None:
    plain = MemberRecord("w1", 1.0, True, 3, "h", 9)
    assert set(json.loads(plain.encode())) == {
        "worker_id",
        "capacity",
        "alive",
        "incarnation",
        "host",
        "pid",
    }
    assert MemberRecord.decode(plain.encode()) == plain
    ranked = member(0, 4)
    assert MemberRecord.decode(ranked.encode()) == ranked


def test_judge_tells_join_member_rejoin_and_stale_apart() -> None:
    view = view_of(member(0, 1), member(1, 1, alive=False))
    assert judge(view, join(0, round_=2)) is Verdict.JOIN
    assert judge(view_of(), join(0, round_=0)) is Verdict.JOIN
    assert judge(view, join(0, round_=1)) is Verdict.MEMBER  # same pid: an answer was lost
    assert judge(view, join(1, round_=1)) is Verdict.REJOIN  # declared dead, asks again
    assert judge(view, join(0, round_=1, pid=7)) is Verdict.REJOIN  # another process, same seat
    assert judge(view, join(0, round_=0)) is Verdict.STALE


def test_a_run_reusing_the_rdzv_id_starts_a_new_life_whose_round_0_is_newest() -> None:
    old_run = view_of(member(0, 5, life=7), member(1, 5, life=7, alive=False))
    assert judge(old_run, join(0, round_=0, life=90)) is Verdict.JOIN
    assert judge(old_run, join(0, round_=6, life=3)) is Verdict.STALE  # an even older life
    changes = round_changes(old_run, [join(0, round_=0, life=90), join(1, round_=0, life=90)])
    assert {w: (r.alive, r.rdzv_life, r.rdzv_round) for w, r in changes.items()} == {
        "h-rank0": (True, 90, 0),
        "h-rank1": (True, 90, 0),
    }


def test_a_round_retires_the_earlier_rounds_ranks_it_does_not_bring_back() -> None:
    before = view_of(member(0, 1), member(1, 1), member(2, 1), member(3, 1, alive=False))
    joins = [join(0, round_=2), join(1, round_=2)]
    changes = round_changes(before, joins)
    assert {w: (r.alive, r.incarnation, r.rdzv_round) for w, r in changes.items()} == {
        "h-rank0": (True, 2, 2),
        "h-rank1": (True, 2, 2),
        "h-rank2": (False, 1, 1),  # left with its agent: dead in the same write
    }


def test_a_whole_round_is_one_transaction_and_one_generation() -> None:
    before = view_of(member(0, 1), member(1, 1), member(2, 1))
    joins = [join(0, round_=2), join(1, round_=2)]
    plan = plan_round(KEYS, before, joins)
    assert plan is not None
    assert plan.view.generation == before.generation + 1
    generation_puts = [op for op in plan.ops if isinstance(op, Put) and op.key == KEYS.generation]
    assert len(generation_puts) == 1
    assert set(plan.view.live_members()) == {"h-rank0", "h-rank1"}
    # Planned again on the view it led to (an outcome lost, then retried): nothing left.
    assert plan_round(KEYS, plan.view, joins) is None


def test_a_round_planned_after_a_newer_round_was_written_writes_nothing() -> None:
    newer = view_of(member(0, 3), member(1, 3))
    assert plan_round(KEYS, newer, [join(0, round_=2), join(1, round_=2)]) is None


def test_a_large_round_is_cut_into_batches_within_the_transaction_limit() -> None:
    joins = [RoundJoin("run", 1, 0, 250, r, f"w{r:03d}", 1.0, "h", r) for r in range(250)]
    chunks = batches(round_changes(view_of(), joins))
    assert [len(c) for c in chunks] == [100, 100, 50]
    view, sizes = view_of(), []
    while (plan := plan_round(KEYS, view, joins)) is not None:
        sizes.append(len(plan.view.members) - len(view.members))
        view = plan.view
    assert sizes == [100, 100, 50]  # each batch planned on the view the last one left


def test_the_gate_answers_the_whole_round_once_to_the_rank_that_completes_it() -> None:
    async def scenario() -> None:
        gate = RoundGate()
        assert gate.add(join(0)) is None
        assert gate.add(join(0)) is None  # a retry of the same rank
        whole = gate.add(join(1))
        assert [j.rank for j in whole or []] == [0, 1]
        assert gate.add(join(1)) is None  # being written: not twice
        gate.written(join(0), ok=False)  # the write failed: the next ask writes it
        assert gate.add(join(0)) is not None
        waiter = asyncio.ensure_future(gate.wait(join(1), timeout_s=30))
        await asyncio.sleep(0)
        assert not waiter.done()
        gate.written(join(0), ok=True)
        await asyncio.wait_for(waiter, 5)

    asyncio.run(scenario())


def test_the_gate_refuses_disagreeing_ranks_and_older_rounds() -> None:
    async def scenario() -> None:
        gate = RoundGate()
        gate.add(join(0, round_=3))
        with pytest.raises(InvalidArgument, match="world_size"):
            gate.add(join(1, round_=3, world=4))
        with pytest.raises(InvalidArgument, match="its own id"):
            gate.add(RoundJoin("run", 7, 3, 2, 1, "h-rank0", 1.0, "h", 1))
        with pytest.raises(StaleRound, match="leftover"):
            gate.add(join(1, round_=2))
        waiter = asyncio.ensure_future(gate.wait(join(0, round_=3), timeout_s=30))
        await asyncio.sleep(0)
        gate.add(join(0, round_=4))  # a newer round replaces the forming one
        await asyncio.wait_for(waiter, 5)

    asyncio.run(scenario())


ENV = {
    "DTR_RDZV_ROUND": "3",
    "DTR_RDZV_LIFE": "41",
    "TORCHELASTIC_RUN_ID": "job-7",
    "RANK": "1",
    "WORLD_SIZE": "4",
}


def test_a_rank_reads_its_seat_from_torchrun_and_the_handler() -> None:
    assert round_from_env(ENV) == RoundSeat("job-7", 3, 4, 1, life=41)
    assert round_from_env({**ENV, "DTR_JOIN_ROUND": "0"}) is None
    assert round_from_env({k: v for k, v in ENV.items() if k != "DTR_RDZV_ROUND"}) is None
    with pytest.raises(InvalidArgument, match=r"\$RANK must be below"):
        round_from_env({**ENV, "RANK": "4"})
    with pytest.raises(InvalidArgument, match=r"\$DTR_RDZV_ROUND"):
        round_from_env({**ENV, "DTR_RDZV_ROUND": "x"})


def test_a_round_that_never_forms_ends_in_a_named_error() -> None:
    asks: list[int] = []
    ticks = iter(range(100))

    def pending() -> pb.RegisterWorkerResponse:
        asks.append(1)
        return pb.RegisterWorkerResponse(round_pending=True)

    seat = RoundSeat("job-7", 3, 4, 1)
    with pytest.raises(RoundIncomplete, match="DTR_JOIN_ROUND=0"):
        register_in_round(pending, seat, "h-rank1", 5, clock=lambda: float(next(ticks)))
    assert len(asks) == 5
