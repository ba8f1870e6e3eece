"""Invariant 1 (DESIGN §5): one writer per fencing token, and tokens only grow.

Reads the ``write`` operations (see ``dtr.chaos.checkers`` for their
schema). Only ``ok`` writes count: a failed write changed nothing, and an
``info`` write may or may not have applied, so neither can show two writers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .checker_base import (
    CheckResult,
    Findings,
    Op,
    operations,
    pair_events,
    per_process,
    regressions,
)
from .history import Event


def check_writes(events: Sequence[Event]) -> CheckResult:
    """At most one replica's writes succeed per term; per process, terms never go down.

    ``checked`` counts the ok writes that carried a term and a replica;
    ``unchecked`` those that lacked either.
    """
    found = Findings("writes")
    oks = [op for op in operations(events, {"write"}) if op.is_ok()]
    judged: list[Op] = []
    for op in oks:
        assert op.done is not None
        if op.done.term is None or "replica" not in op.done.value:
            found.unchecked += 1
        else:
            judged.append(op)
    found.checked = len(judged)
    _check_one_writer_per_term(judged, found)
    _check_terms_grow(judged, found)
    return found.result()


def _check_one_writer_per_term(writes: list[Op], found: Findings) -> None:
    first_by_replica: dict[int, dict[str, Event]] = defaultdict(dict)
    for op in writes:
        assert op.done is not None and op.done.term is not None
        first_by_replica[op.done.term].setdefault(str(op.done.value["replica"]), op.done)
    for term, by_replica in sorted(first_by_replica.items()):
        if len(by_replica) > 1:
            found.flag(
                f"term {term}: writes of {len(by_replica)} replicas succeeded "
                f"({', '.join(sorted(by_replica))})",
                by_replica.values(),
            )


def _check_terms_grow(writes: list[Op], found: Findings) -> None:
    grouped = per_process(writes, lambda op: op.done.term if op.done is not None else None)
    for process, observed in sorted(grouped.items()):
        for earlier, later in regressions(observed):
            assert earlier.done is not None and later.done is not None
            found.flag(
                f"{process}: a write acknowledged at term {earlier.done.term} was followed "
                f"by a write invoked later that succeeded at older term {later.done.term}",
                pair_events(earlier, later),
            )
