"""Pure parts of group-committed registrations (coordinator/registrations.py)."""

from __future__ import annotations

import asyncio
import collections
import collections.abc

import pytest

from dtr.coordinator.membership import MAX_MEMBER_CHANGES_PER_TXN
from dtr.coordinator.registrations import (
    PendingRegistration,
    Registration,
    plan_registrations,
    take_batch,
)
from dtr.coordinator.state import ClusterView, MemberRecord
from dtr.keys import JobKeys

KEYS = JobKeys("reg")


def queue_of(ids: list[str]) -> collections.deque[PendingRegistration]:
    loop = asyncio.new_event_loop()
    try:
        return collections.deque(
            PendingRegistration(Registration(w, 1.0, "h", 1), loop.create_future()) for w in ids
        )
    finally:
        loop.close()


def ids_of(pending: collections.abc.Iterable[PendingRegistration]) -> list[str]:
    return [p.wanted.worker_id for p in pending]


def test_a_batch_takes_distinct_ids_and_leaves_repeats_queued_in_order() -> None:
    queue = queue_of(["a", "b", "a", "c", "b", "a", "d"])
    assert ids_of(take_batch(queue, 10)) == ["a", "b", "c", "d"]
    assert ids_of(queue) == ["a", "b", "a"]
    assert ids_of(take_batch(queue, 10)) == ["a", "b"]
    assert ids_of(take_batch(queue, 10)) == ["a"]
    assert not queue


def test_a_batch_stops_at_its_limit_without_reordering_the_rest() -> None:
    queue = queue_of([f"w{i}" for i in range(7)])
    assert ids_of(take_batch(queue, 3)) == ["w0", "w1", "w2"]
    assert ids_of(queue) == ["w3", "w4", "w5", "w6"]


def test_one_plan_makes_every_registration_a_new_live_incarnation_and_one_generation() -> None:
    dead = MemberRecord(worker_id="old", capacity=1.0, alive=False, incarnation=4, host="h", pid=1)
    view = ClusterView(generation=7, members={"old": dead})
    batch = [Registration("old", 2.0, "h2", 9), Registration("new", 1.0, "h", 3)]
    plan = plan_registrations(KEYS, view, batch)
    assert plan.view.generation == 8
    assert plan.view.members["old"].incarnation == 5 and plan.view.members["old"].alive
    assert plan.view.members["old"].capacity == 2.0
    assert plan.view.members["new"].incarnation == 1
    generation_puts = [op for op in plan.ops if getattr(op, "key", "") == KEYS.generation]
    assert len(generation_puts) == 1


def test_a_plan_larger_than_one_transaction_is_refused() -> None:
    batch = [Registration(f"w{i}", 1.0, "h", 1) for i in range(MAX_MEMBER_CHANGES_PER_TXN + 1)]
    with pytest.raises(ValueError, match="batches"):
        plan_registrations(KEYS, ClusterView(), batch)


def test_a_registration_arriving_after_another_write_of_its_id_waits_behind_it() -> None:
    queue = queue_of(["a", "b", "a", "c"])
    for seq, pending in enumerate(queue, start=1):
        pending.seq = seq * 10  # arrivals 10, 20, 30, 40
    # An in_order write of "a" arrived at 25: the first "a" (10) goes, the second (30) waits;
    # one of "c" arrived at 45, after c's registration (40): that registration goes.
    assert ids_of(take_batch(queue, 10, {"a": 25, "c": 45})) == ["a", "b", "c"]
    assert ids_of(queue) == ["a"]
    assert take_batch(queue, 10, {"a": 25}) == []
    assert ids_of(take_batch(queue, 10, {})) == ["a"]
