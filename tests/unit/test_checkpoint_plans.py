"""The coordinator's checkpoint decisions as pure functions (DESIGN §5 invariant 4).

A step completes only when every live member of its generation committed,
``latest`` never moves back, commits for an old generation or an already
passed step are superseded, and retention keeps the newest K complete steps.
"""

from __future__ import annotations

import pytest

from dtr.coordinator.checkpoints import (
    CheckpointBook,
    CompleteRecord,
    PartRecord,
    StepState,
    plan_commit,
    plan_retention,
)
from dtr.coordinator.state import ClusterView, MemberRecord
from dtr.coordinator.validation import CheckpointCommit, CheckpointPartSpec
from dtr.errors import AlreadyExists
from dtr.keys import JobKeys
from dtr.store import Compare, Delete, Put

KEYS = JobKeys("job")


def view_with(*workers: str, generation: int = 5) -> ClusterView:
    members = {w: MemberRecord(w, 1.0, True, 1) for w in workers}
    return ClusterView(generation=generation).replace(members=members)


def commit(
    worker: str, step: int = 100, generation: int = 5, digest: str = "0" * 8
) -> CheckpointCommit:
    part = CheckpointPartSpec(
        uri=f"file:///ckpt/step-{step}/{worker}.dtr",
        size_bytes=1024,
        algorithm="crc32c",
        hex_digest=digest,
        format_version=1,
        manifest_uri=None,
        replicated=False,
    )
    return CheckpointCommit(step=step, worker_id=worker, generation=generation, part=part)


def test_the_first_part_of_a_step_is_recorded_but_does_not_complete_it() -> None:
    view = view_with("a", "b")
    decision = plan_commit(KEYS, view, StepState(100), None, commit("a"))
    assert (decision.status, decision.step_complete, decision.latest) == ("accepted", False, None)
    assert decision.plan is not None
    assert (
        Put(KEYS.checkpoint_commit(100, "a"), PartRecord.of(commit("a")).encode())
        in decision.plan.ops
    )
    assert Compare.absent(KEYS.checkpoint_commit(100, "a")) in decision.plan.compares
    assert Compare.value_is(KEYS.generation, b"5") in decision.plan.compares
    assert not any(op.key == KEYS.latest_checkpoint for op in decision.plan.ops)


def test_the_last_member_to_commit_completes_the_step_and_moves_latest_in_one_write() -> None:
    view = view_with("a", "b")
    first = plan_commit(KEYS, view, StepState(100), None, commit("a"))
    assert first.state is not None
    last = plan_commit(KEYS, view, first.state, None, commit("b"))
    done = CompleteRecord(100, 5, 2)
    assert (last.status, last.step_complete, last.latest) == ("accepted", True, done)
    assert last.plan is not None
    assert Put(KEYS.latest_checkpoint, done.encode()) in last.plan.ops
    assert Put(KEYS.checkpoint_complete(100), done.encode()) in last.plan.ops
    assert Compare.absent(KEYS.latest_checkpoint) in last.plan.compares


def test_parts_of_an_older_generation_do_not_count_towards_completion() -> None:
    view = view_with("a", "b", generation=6)
    old = PartRecord.of(commit("a", generation=5))
    state = StepState(100, parts={"a": old})
    decision = plan_commit(KEYS, view, state, None, commit("b", generation=6))
    assert decision.status == "accepted" and not decision.step_complete


def test_a_commit_for_an_old_generation_is_superseded_and_writes_nothing() -> None:
    decision = plan_commit(KEYS, view_with("a"), StepState(100), None, commit("a", generation=4))
    assert (decision.status, decision.plan) == ("superseded", None)


def test_a_commit_at_or_below_the_latest_complete_step_is_superseded() -> None:
    latest = CompleteRecord(200, 5, 1)
    for step in (100, 200):
        decision = plan_commit(KEYS, view_with("a"), StepState(step), latest, commit("a", step))
        assert (decision.status, decision.latest) == ("superseded", latest)


def test_a_commit_from_a_worker_that_is_not_a_live_member_is_superseded() -> None:
    decision = plan_commit(KEYS, view_with("a"), StepState(100), None, commit("ghost"))
    assert decision.status == "superseded"


def test_the_same_commit_again_is_a_duplicate_and_another_part_is_refused() -> None:
    view = view_with("a", "b")
    first = plan_commit(KEYS, view, StepState(100), None, commit("a"))
    assert first.state is not None
    again = plan_commit(KEYS, view, first.state, None, commit("a"))
    assert (again.status, again.plan, again.step_complete) == ("duplicate", None, False)
    with pytest.raises(AlreadyExists, match="cannot change"):
        plan_commit(KEYS, view, first.state, None, commit("a", digest="1" * 8))


def test_retention_keeps_the_newest_complete_steps_and_drops_abandoned_ones() -> None:
    complete = [100, 200, 300, 400]
    with_parts = [100, 150, 200, 300, 350, 400, 500]  # 150, 350 abandoned; 500 in progress
    ops = plan_retention(KEYS, complete, with_parts, keep=3)
    deleted = {op.key for op in ops if isinstance(op, Delete)}
    assert deleted == {
        KEYS.checkpoint_step_prefix(100),
        KEYS.checkpoint_complete(100),
        KEYS.checkpoint_step_prefix(150),
        KEYS.checkpoint_step_prefix(350),
    }
    assert plan_retention(KEYS, [], with_parts, keep=3) == []


def test_the_book_forgets_everything_on_reset_and_bounds_its_cache() -> None:
    book = CheckpointBook()
    view = view_with("a")
    for step in range(100):
        decision = plan_commit(KEYS, view, StepState(step), book.latest, commit("a", step))
        book.on_applied(decision)
    assert book.latest == CompleteRecord(99, 5, 1)
    assert len(book.steps) <= 64
    book.reset()
    assert (book.latest, book.loaded, book.steps) == (None, False, {})
