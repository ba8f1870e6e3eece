"""``record-completion``: the transaction that records a step's last part completes the step.

``plan_commit`` (``coordinator/checkpoints.py``) writes the complete record
and ``latest`` in the same transaction as the part that makes every live
member of the current generation committed. So in etcd's record, a revision
whose part put leaves step ``s`` with a part of generation ``g`` from every
live member, while the job is at ``g`` and no step at or after ``s`` is
complete, must complete ``s`` itself. If it does not, the leader planned
that commit on a book that missed a part etcd had already recorded, and
nothing will ever complete the step: a duplicate commit of the missing part
answers "duplicate, not complete".

``record-checkpoints``'s stuck-step check judges the end of the record, by
which time retention has deleted an abandoned step's parts once a later step
completed; this check judges the revision itself, so the step is seen even
when training went on past it. It is what sees the ``cancelled-write``
mutant (``dtr.mutants``): a commit cancelled mid-write lands in etcd but not
in the book ("A call cancelled mid-write", docs/failure-semantics.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from dtr.keys import JobKeys

from .checker_base import MAX_VIOLATIONS, CheckResult, Violation
from .etcd_record import RecordEvent
from .record_replay import LifeState, by_revision, starts_life

NAME = "record-completion"


def check_completion(events: Iterable[RecordEvent], keys: JobKeys) -> CheckResult:
    """Judge every revision that puts a checkpoint part, life by life."""
    state = LifeState(keys)
    checked = 0
    violations: list[str] = []
    for revision, group in by_revision(events):
        if starts_life(state, group):
            state = state.next_life()
        for event in group:
            state.apply(event)
        for step in _parts_put(keys, group):
            checked += 1
            violations += _judge(revision, state, step)
    kept = tuple(Violation(v) for v in violations[:MAX_VIOLATIONS])
    left = max(0, len(violations) - MAX_VIOLATIONS)
    return CheckResult(NAME, not violations, checked, kept, left_off=left)


def _parts_put(keys: JobKeys, group: list[RecordEvent]) -> set[int]:
    prefix = keys.checkpoint_steps_prefix
    return {
        int(e.key[len(prefix) :].partition("/")[0])
        for e in group
        if e.kind == "put" and e.key.startswith(prefix)
    }


def _judge(revision: int, state: LifeState, step: int) -> list[str]:
    """A step whose parts now cover the live members must be complete after this revision."""
    if any(done >= step for done in state.complete):
        return []  # complete, or superseded by a later complete step
    live = set(state.live())
    committed = {
        w for w, p in state.parts.get(step, {}).items() if int(p["generation"]) == state.generation
    }
    if not live or not committed >= live:
        return []
    return [
        f"revision {revision}: step {step}: every live member of generation "
        f"{state.generation} has a part ({len(live)}), but the step was not completed"
    ]
