"""Checkpoint commits, many per fenced transaction (group commit).

Why: every worker commits one part per checkpoint, so a job of N workers
sends N commits at nearly the same moment. Applied one transaction at a time
behind the leader's write lock, they queue for N etcd round trips; under the
soak's 200 simulated workers (and an etcd slowed to 100-800 ms a request) a
training worker's commit waited 30 s or more, longer than its per-attempt
deadline, so its retries queued again behind the same crowd. Coalesced, the
commits that arrived while the previous transaction ran go out together in
the next one: the wait is a few round trips whatever N is.

``plan_commit_batch`` decides each commit of a batch in order against a
scratch copy of the leader's checkpoint book, so a later commit sees what an
earlier one of the same batch will write (its part, a step it completes, the
``latest`` it moves), exactly as if they had been applied one by one. The
accepted plans merge into one ``WritePlan``: their compares (deduplicated;
``latest`` guarded once, at its value before the batch, since etcd evaluates
every compare before any write) and their writes (``latest`` put once, at its
newest value, since a transaction may not put a key twice). A commit the
coordinator refuses for good (``AlreadyExists``, ``WrongJobLife``) is that
commit's answer alone; the rest of the batch goes on.

What must not live here: I/O and the write lock (``Leader`` owns both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from dtr.errors import AlreadyExists, WrongJobLife
from dtr.keys import JobKeys
from dtr.store import Compare, Op, Put
from dtr.store_types import PLAN_MAX_OPS, txn_size

from .checkpoints import CheckpointBook, CommitDecision, latest_guard, plan_commit
from .membership import WritePlan
from .state import ClusterView
from .validation import CheckpointCommit

#: Commits per transaction: at most 2 compares and 3 puts each, under etcd's 128 ops.
MAX_COMMITS_PER_TXN = 40
#: Bytes of one batch's transaction. Far below etcd's 1.5 MiB: a leader write of
#: a megabyte on a slow link outlasts the write timeout, and every retry of an
#: unknown outcome would send it again. Ordinary commits (~0.5 kB each) reach
#: MAX_COMMITS_PER_TXN long before this; parts with kilobyte uris do not.
MAX_BATCH_BYTES = 256 * 1024
#: Steps whose records one read transaction loads (a step's parts grow with the job).
MAX_STEPS_PER_READ = 4

#: A commit's answer: the decision, or the refusal that is this commit's alone.
CommitAnswer = CommitDecision | AlreadyExists | WrongJobLife


@dataclass
class PendingCommit:
    """A commit waiting for its batch, and the future its handler awaits."""

    commit: CheckpointCommit
    answer: asyncio.Future[CommitDecision]

    @classmethod
    def new(cls, commit: CheckpointCommit) -> PendingCommit:
        answer: asyncio.Future[CommitDecision] = asyncio.get_running_loop().create_future()
        # A caller that gave up (deadline) never reads it: do not warn about that.
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        return cls(commit, answer)

    def settle(self, answer: CommitAnswer | Exception) -> None:
        if self.answer.done():
            return
        if isinstance(answer, Exception):
            self.answer.set_exception(answer)
        else:
            self.answer.set_result(answer)


@dataclass(frozen=True)
class BatchPlan:
    """The answers of the first ``len(answers)`` commits, in order, and the one write
    that makes them true; the commits after them did not fit and wait for the next."""

    answers: tuple[CommitAnswer, ...]
    #: The accepted decisions, in order (the book learns them once the write applied).
    accepted: tuple[CommitDecision, ...]
    plan: WritePlan | None


@dataclass
class _Budget:
    """What the accepted plans use of one transaction, counted as they will merge.

    The generation compare, the ``latest`` guard and the ``latest`` put are
    shared by the whole batch (``_merge``), so they count once.
    """

    keys: JobKeys
    compares: int = 2  # the generation compare and the latest guard
    ops: int = 1  # the latest put
    size: int = 0

    def admits(self, plan: WritePlan) -> bool:
        compares, ops, size = self._cost(plan)
        return (
            self.compares + compares <= PLAN_MAX_OPS
            and self.ops + ops <= PLAN_MAX_OPS
            and self.size + size <= MAX_BATCH_BYTES
        )

    def take(self, plan: WritePlan) -> None:
        compares, ops, size = self._cost(plan)
        self.compares += compares
        self.ops += ops
        self.size += size

    def _cost(self, plan: WritePlan) -> tuple[int, int, int]:
        shared = (self.keys.generation, self.keys.latest_checkpoint)
        compares = [c for c in plan.compares if c.key not in shared]
        ops = [op for op in plan.ops if op.key != self.keys.latest_checkpoint]
        return len(compares), len(ops), txn_size(plan.compares, plan.ops, ())


def plan_commit_batch(
    keys: JobKeys, view: ClusterView, book: CheckpointBook, commits: Sequence[CheckpointCommit]
) -> BatchPlan:
    """Decide ``commits`` in order as if applied one by one; no I/O, ``book`` untouched.

    Planning stops before the first accepted commit that would take the
    transaction past etcd's limits (a part's uris may be kilobytes each): a
    commit valid alone is never refused for the company it queued in. The
    first commit is always planned, so every batch makes progress. Every
    commit's step must be in ``book.steps`` (the leader loads them first).
    """
    steps = dict(book.steps)
    latest = book.latest
    answers: list[CommitAnswer] = []
    accepted: list[CommitDecision] = []
    budget = _Budget(keys)
    for commit in commits:
        try:
            decision = plan_commit(keys, view, steps[commit.step], latest, commit)
        except (AlreadyExists, WrongJobLife) as refusal:
            answers.append(refusal)
            continue
        if decision.plan is not None and decision.state is not None:
            if accepted and not budget.admits(decision.plan):
                break  # this one and the rest go in the next transaction
            budget.take(decision.plan)
            accepted.append(decision)
            steps[commit.step] = decision.state
            latest = decision.latest
        answers.append(decision)
    if not accepted:
        return BatchPlan(tuple(answers), (), None)
    return BatchPlan(tuple(answers), tuple(accepted), _merge(keys, view, book, accepted))


def _merge(
    keys: JobKeys, view: ClusterView, book: CheckpointBook, accepted: Sequence[CommitDecision]
) -> WritePlan:
    """One plan for the accepted decisions: ``latest`` guarded once and put once."""
    compares: list[Compare] = [latest_guard(keys, book.latest)]
    ops: list[Op] = []
    for decision in accepted:
        assert decision.plan is not None
        for compare in decision.plan.compares:
            if compare.key != keys.latest_checkpoint and compare not in compares:
                compares.append(compare)
        ops += [op for op in decision.plan.ops if op.key != keys.latest_checkpoint]
    newest = accepted[-1].latest
    if newest is not None and newest != book.latest:
        ops.append(Put(keys.latest_checkpoint, newest.encode()))
    return WritePlan(tuple(compares), tuple(ops), view)


def steps_to_load(book: CheckpointBook, commits: Sequence[CheckpointCommit]) -> list[int]:
    """The steps of ``commits`` the book does not hold (all of them when it is not loaded)."""
    return sorted({c.step for c in commits if not (book.loaded and c.step in book.steps)})
