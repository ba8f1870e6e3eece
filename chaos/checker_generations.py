"""``record-generations``: every membership change moved the generation, in etcd's record.

DESIGN §5 binds barrier arrivals and checkpoint parts to the membership
generation they were made in, which is only sound if the generation names
one membership: each change of the live member set, of a live member's
capacity, or of a live member's incarnation (the same id registered again by
a new process) moves the generation by exactly one in the same transaction
(``coordinator/membership.py``). The other record checkers take that for
granted; this one checks it, revision by revision.

It is what sees the ``incarnation-blind-barriers`` mutant (``dtr.mutants``)
on every restart under a live id, not only when a kill happens to land
while the worker waits at a barrier: the member record moves to a new
incarnation and the generation stays.

A revision that deletes the generation key (a wiped job prefix, a new job
life) starts over from an empty membership.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from dtr.keys import JobKeys

from .checker_base import MAX_VIOLATIONS, CheckResult, Violation
from .etcd_record import RecordEvent
from .record_replay import by_revision

#: worker id → (capacity, incarnation) of a live member.
Live = dict[str, tuple[float, int]]


def check_generations(events: Iterable[RecordEvent], keys: JobKeys) -> CheckResult:
    """Judge each revision that changes live membership: it must move the generation by one."""
    live: Live = {}
    generation = 0
    checked = 0
    violations: list[str] = []
    for revision, group in by_revision(events):
        if any(e.key == keys.generation and e.kind == "delete" for e in group):
            live, generation = {}, 0  # the job's prefix was wiped: a new life starts
            continue
        after = _apply(keys, live, group)
        moved_to = _generation_put(keys, group)
        if after != live:
            checked += 1
            violations += _judge(revision, live, after, generation, moved_to)
        live = after
        generation = moved_to if moved_to is not None else generation
    kept = tuple(Violation(v) for v in violations[:MAX_VIOLATIONS])
    left = max(0, len(violations) - MAX_VIOLATIONS)
    return CheckResult("record-generations", not violations, checked, kept, left_off=left)


def _apply(keys: JobKeys, live: Live, group: list[RecordEvent]) -> Live:
    """The live members after this revision's member puts and deletes."""
    after = dict(live)
    for event in group:
        if not event.key.startswith(keys.members_prefix):
            continue
        worker = event.key[len(keys.members_prefix) :]
        if event.kind != "put":
            after.pop(worker, None)
            continue
        record = json.loads(event.value)
        if record.get("alive", True):
            after[worker] = (float(record["capacity"]), int(record["incarnation"]))
        else:
            after.pop(worker, None)
    return after


def _generation_put(keys: JobKeys, group: list[RecordEvent]) -> int | None:
    puts = [e for e in group if e.key == keys.generation and e.kind == "put"]
    return int(puts[-1].value) if puts else None


def _judge(
    revision: int, before: Live, after: Live, generation: int, moved_to: int | None
) -> list[str]:
    if moved_to == generation + 1:
        return []
    changed = sorted(w for w in before.keys() | after.keys() if before.get(w) != after.get(w))
    what = ", ".join(_change(w, before.get(w), after.get(w)) for w in changed[:5])
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    moved = "stayed" if moved_to is None else f"went to {moved_to}"
    return [
        f"revision {revision}: membership changed ({what}{more}) but generation {generation} "
        f"{moved}"
    ]


def _change(worker: str, before: tuple[float, int] | None, after: tuple[float, int] | None) -> str:
    if before is None:
        return f"{worker} joined"
    if after is None:
        return f"{worker} left"
    if before[1] != after[1]:
        return f"{worker} incarnation {before[1]} -> {after[1]}"
    return f"{worker} capacity {before[0]:g} -> {after[0]:g}"
