"""Attack 17, pure functions: rounds of several rendezvous, lives and plain members together.

Pins of ``coordinator/rounds.py`` where its parts meet the rest of the
membership: a round retires only its own rendezvous's older ranks (plain
workers and another torchrun job's ranks in the same dtr job stay), and a
newer rendezvous life (a reused ``--rdzv-id``) outranks any round number of
an older life, in the judge, the planner and the leader's gate alike.
"""

from __future__ import annotations

import asyncio

import pytest

from dtr.coordinator.rounds import (
    RoundGate,
    RoundJoin,
    Verdict,
    judge,
    plan_round,
    round_changes,
)
from dtr.coordinator.state import ClusterView, MemberRecord
from dtr.errors import StaleRound
from dtr.keys import JobKeys

KEYS = JobKeys("attack17")


def join(rank: int, *, rdzv: str = "train", life: int = 1, round_: int = 0) -> RoundJoin:
    return RoundJoin(rdzv, life, round_, 2, rank, f"{rdzv}-r{rank}", 1.0, "h", 100 + rank)


def ranked(
    rank: int, *, rdzv: str = "train", life: int = 1, round_: int = 0, alive: bool = True
) -> MemberRecord:
    return MemberRecord(f"{rdzv}-r{rank}", 1.0, alive, 1, "h", 100 + rank, rdzv, round_, life)


def view_of(*records: MemberRecord) -> ClusterView:
    return ClusterView(generation=4, members={r.worker_id: r for r in records})


def test_a_round_retires_only_its_own_rendezvous_older_ranks() -> None:
    plain = MemberRecord("loader-1", 1.0, True, 3, "h", 7)
    other_job = ranked(5, rdzv="eval", life=1, round_=9)
    before = view_of(plain, other_job, ranked(0), ranked(1), ranked(2))
    changes = round_changes(before, [join(0, round_=1), join(1, round_=1)])
    assert set(changes) == {"train-r0", "train-r1", "train-r2"}
    assert not changes["train-r2"].alive
    plan = plan_round(KEYS, before, [join(0, round_=1), join(1, round_=1)])
    assert plan is not None
    assert plan.view.members["loader-1"] == plain
    assert plan.view.members["eval-r5"] == other_job
    assert plan.view.generation == before.generation + 1


def test_a_newer_life_outranks_any_round_of_an_older_life() -> None:
    old_run = view_of(ranked(0, life=3, round_=5, alive=False), ranked(1, life=3, round_=5))
    assert judge(old_run, join(0, life=8, round_=0)) is Verdict.JOIN
    # The old run's leftover asking after the new run's round 0 is written: stale.
    new_run = view_of(ranked(0, life=8, round_=0), ranked(1, life=8, round_=0))
    assert judge(new_run, join(1, life=3, round_=5)) is Verdict.STALE
    # The new round retires every live rank of the old life, whatever its round number.
    changes = round_changes(old_run, [join(0, life=8, round_=0)])
    assert not changes["train-r1"].alive


def test_the_gate_refuses_an_older_life_even_with_a_larger_round_number() -> None:
    async def scenario() -> None:
        gate = RoundGate()
        assert gate.add(join(0, life=8, round_=0)) is None
        with pytest.raises(StaleRound, match="leftover"):
            gate.add(join(1, life=3, round_=5))
        whole = gate.add(join(1, life=8, round_=0))
        assert [j.rank for j in whole or []] == [0, 1]

    asyncio.run(scenario())
