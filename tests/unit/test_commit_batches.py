"""Group commit as a pure function: a batch decides as its commits would one by one.

``plan_commit_batch`` must answer each commit exactly as ``plan_commit`` would
after the batch's earlier commits applied, and merge the accepted writes into
one transaction etcd accepts (``latest`` guarded at its value before the
batch and put once, at its newest value).
"""

from __future__ import annotations

from dataclasses import replace

from test_checkpoint_plans import KEYS, commit, view_with

from dtr.coordinator.checkpoints import (
    CheckpointBook,
    CommitDecision,
    CompleteRecord,
    StepState,
    latest_guard,
    plan_commit,
)
from dtr.coordinator.commit_batches import (
    MAX_BATCH_BYTES,
    MAX_COMMITS_PER_TXN,
    plan_commit_batch,
    steps_to_load,
)
from dtr.coordinator.validation import CheckpointCommit
from dtr.errors import AlreadyExists, WrongJobLife
from dtr.store import Compare, Put
from dtr.store_types import check_txn_limits, txn_size


def book_with(*steps: int, latest: CompleteRecord | None = None) -> CheckpointBook:
    book = CheckpointBook(latest=latest, loaded=True)
    for step in steps:
        book.steps[step] = StepState(step)
    return book


def one_by_one(book: CheckpointBook, view_workers: tuple[str, ...], commits: list) -> list:
    """What the commits answer when each is planned and applied alone."""
    view = view_with(*view_workers)
    steps, latest, answers = dict(book.steps), book.latest, []
    for c in commits:
        try:
            decision = plan_commit(KEYS, view, steps[c.step], latest, c)
        except (AlreadyExists, WrongJobLife) as err:
            answers.append(type(err))
            continue
        answers.append((decision.status, decision.step_complete, decision.latest))
        if decision.plan is not None and decision.state is not None:
            steps[c.step], latest = decision.state, decision.latest
    return answers


def summary(answers: tuple) -> list:
    return [
        (a.status, a.step_complete, a.latest) if isinstance(a, CommitDecision) else type(a)
        for a in answers
    ]


def test_a_whole_fleet_completes_its_step_in_one_write_with_latest_put_once() -> None:
    workers = tuple(f"w{i:02d}" for i in range(30))
    book = book_with(100)
    batch = plan_commit_batch(KEYS, view_with(*workers), book, [commit(w) for w in workers])
    assert summary(batch.answers) == one_by_one(book, workers, [commit(w) for w in workers])
    assert [a.status for a in batch.answers if isinstance(a, CommitDecision)] == ["accepted"] * 30
    assert batch.plan is not None
    done = CompleteRecord(100, 5, 30)
    last = batch.answers[-1]
    assert isinstance(last, CommitDecision)
    assert (last.status, last.step_complete, last.latest) == ("accepted", True, done)
    latest_puts = [op for op in batch.plan.ops if op.key == KEYS.latest_checkpoint]
    assert latest_puts == [Put(KEYS.latest_checkpoint, done.encode())]
    latest_compares = [c for c in batch.plan.compares if c.key == KEYS.latest_checkpoint]
    assert latest_compares == [latest_guard(KEYS, None)]  # its value before the batch
    assert batch.plan.compares.count(Compare.value_is(KEYS.generation, b"5")) == 1
    assert Compare.absent(KEYS.checkpoint_complete(100)) in batch.plan.compares
    check_txn_limits(list(batch.plan.compares), [*batch.plan.ops, Put("stamp", b"x")], [])
    assert book.steps[100] == StepState(100), "the book learns only once the write applied"


def test_a_retry_inside_the_batch_is_a_duplicate_and_a_changed_part_is_refused_alone() -> None:
    book = book_with(100)
    commits = [commit("a"), commit("a"), commit("a", digest="f" * 8), commit("b")]
    batch = plan_commit_batch(KEYS, view_with("a", "b"), book, commits)
    assert summary(batch.answers) == one_by_one(book, ("a", "b"), commits)
    assert summary(batch.answers) == [
        ("accepted", False, None),
        ("duplicate", False, None),
        AlreadyExists,
        ("accepted", True, CompleteRecord(100, 5, 2)),
    ]
    assert batch.plan is not None
    assert sum(1 for op in batch.plan.ops if op.key == KEYS.checkpoint_commit(100, "a")) == 1


def test_two_steps_completing_in_one_batch_leave_latest_at_the_newer_and_supersede_older() -> None:
    book = book_with(100, 120)
    commits = [commit("a", 120), commit("b", 120), commit("a", 100), commit("b", 100)]
    batch = plan_commit_batch(KEYS, view_with("a", "b"), book, commits)
    assert summary(batch.answers) == one_by_one(book, ("a", "b"), commits)
    assert [a.status for a in batch.answers if isinstance(a, CommitDecision)] == [
        "accepted",
        "accepted",
        "superseded",
        "superseded",
    ]
    assert batch.plan is not None
    newest = CompleteRecord(120, 5, 2)
    assert [op for op in batch.plan.ops if op.key == KEYS.latest_checkpoint] == [
        Put(KEYS.latest_checkpoint, newest.encode())
    ]


def test_latest_is_guarded_at_its_value_before_the_batch() -> None:
    before = CompleteRecord(80, 5, 2)
    book = book_with(100, latest=before)
    batch = plan_commit_batch(KEYS, view_with("a", "b"), book, [commit("a", 100), commit("b", 100)])
    assert batch.plan is not None
    assert [c for c in batch.plan.compares if c.key == KEYS.latest_checkpoint] == [
        Compare.value_is(KEYS.latest_checkpoint, before.encode())
    ]


def test_a_batch_with_nothing_to_write_has_no_plan_and_another_life_is_refused_alone() -> None:
    book = book_with(100, latest=CompleteRecord(100, 5, 2))
    view = replace(view_with("a", "b"), job_life="life-2")
    other_life = replace(commit("b"), job_life="life-1")
    batch = plan_commit_batch(KEYS, view, book, [commit("a"), other_life])
    assert batch.plan is None and batch.accepted == ()
    assert summary(batch.answers) == [("superseded", False, book.latest), WrongJobLife]


def test_a_full_batch_fits_etcds_limits_and_only_unknown_steps_are_loaded() -> None:
    workers = tuple(f"worker-with-a-long-name-{i:04d}" for i in range(MAX_COMMITS_PER_TXN))
    book = book_with(100)
    commits = [commit(w, 100) for w in workers]
    batch = plan_commit_batch(KEYS, view_with(*workers), book, commits)
    assert batch.plan is not None and len(batch.accepted) == MAX_COMMITS_PER_TXN
    fence = Compare.created_at("leader", 1)
    check_txn_limits([fence, *batch.plan.compares], [*batch.plan.ops, Put("stamp", b"x")], [])
    assert steps_to_load(book, [commit("a", 100), commit("a", 140), commit("b", 120)]) == [
        120,
        140,
    ]
    assert steps_to_load(CheckpointBook(), [commit("a", 100)]) == [100]


def fat(worker: str, step: int = 100) -> CheckpointCommit:
    """A commit valid alone whose uri is 60 kB (uris may be long; see the attack tests)."""
    made = commit(worker, step)
    return replace(made, part=replace(made.part, uri=f"file:///{'x' * 60_000}/{worker}"))


def test_planning_stops_before_the_commit_that_would_pass_the_byte_budget() -> None:
    workers = tuple(f"w{i}" for i in range(10))
    book = book_with(100)
    commits = [fat(w) for w in workers]
    batch = plan_commit_batch(KEYS, view_with(*workers), book, commits)
    fits = MAX_BATCH_BYTES // 60_000
    assert 1 <= len(batch.answers) <= fits < len(commits), "the rest wait for the next batch"
    assert summary(batch.answers) == one_by_one(book, workers, commits)[: len(batch.answers)]
    assert batch.plan is not None
    assert txn_size(batch.plan.compares, batch.plan.ops, ()) <= MAX_BATCH_BYTES
    huge = replace(fat("a"), part=replace(fat("a").part, uri="x" * 400_000))
    alone = plan_commit_batch(KEYS, view_with("a"), book, [huge])
    assert len(alone.answers) == 1 and alone.plan is not None, "the first is always planned"


def test_an_earlier_incarnation_of_a_member_is_superseded_even_at_the_new_generation() -> None:
    view = view_with("a", "b")  # both members at incarnation 1
    book = book_with(100)
    old = replace(commit("a"), incarnation=7)  # not the member's incarnation (1)
    batch = plan_commit_batch(KEYS, view, book, [old, replace(commit("a"), incarnation=1)])
    assert summary(batch.answers) == [("superseded", False, None), ("accepted", False, None)]
    recorded = plan_commit_batch(KEYS, view, book, [replace(commit("a"), incarnation=1)])
    assert recorded.accepted and recorded.accepted[0].state is not None
    book.steps[100] = recorded.accepted[0].state
    changed = replace(commit("a", digest="f" * 8), incarnation=7)
    assert summary(plan_commit_batch(KEYS, view, book, [changed]).answers) == [
        ("superseded", False, None)
    ], "an earlier process's other part is superseded, not refused as a conflict"
