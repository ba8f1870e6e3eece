"""Invariant 1 (DESIGN §5): one writer per fencing token, tokens only grow, leaders self-fence.

``check_writes`` reads the ``write`` operations (see ``dtr.chaos.checkers``
for their schema). Only ``ok`` writes count: a failed write changed nothing,
and an ``info`` write may or may not have applied, so neither can show two
writers.

``check_claims`` reads the harness's ``claim`` probes: each replica asked
directly whether it leads and at which term. A correct leader stops claiming
at its renew deadline, before its lease can expire and anyone else can win,
so once a claim of a newer term was answered, no claim of an older term may
be answered to a probe sent after it — and no two replicas ever claim the
same term. That is the split brain a leader cut off from etcd, or paused
past its lease, would cause if it did not fence itself.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Sequence

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


def _shared_terms(
    ops: list[Op], term_and_replica: Callable[[Op], tuple[int, str]]
) -> list[tuple[int, dict[str, Event]]]:
    """Terms that more than one replica used, each with every replica's first event there."""
    first: dict[int, dict[str, Event]] = defaultdict(dict)
    for op in ops:
        assert op.done is not None
        term, replica = term_and_replica(op)
        first[term].setdefault(replica, op.done)
    return [(term, by) for term, by in sorted(first.items()) if len(by) > 1]


def _write_of(op: Op) -> tuple[int, str]:
    assert op.done is not None and op.done.term is not None
    return op.done.term, str(op.done.value["replica"])


def _check_one_writer_per_term(writes: list[Op], found: Findings) -> None:
    for term, by_replica in _shared_terms(writes, _write_of):
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


def check_claims(events: Sequence[Event]) -> CheckResult:
    """No replica claims a term older than one already claimed; no term claimed twice.

    ``checked`` counts the leadership claims (``ok`` claims with
    ``is_leader`` and a term); ``unchecked`` the claims without a term.
    """
    found = Findings("claims")
    claims: list[Op] = []
    for op in operations(events, {"claim"}):
        if op.is_ok() and op.done is not None and op.done.value.get("is_leader"):
            if op.done.value.get("term") is None:
                found.unchecked += 1
            else:
                claims.append(op)
    found.checked = len(claims)
    _check_one_claimant_per_term(claims, found)
    _check_no_stale_claims(claims, found)
    return found.result()


def _claim_of(op: Op) -> tuple[int, str]:
    assert op.done is not None
    return int(op.done.value["term"]), str(op.done.value.get("replica"))


def _check_one_claimant_per_term(claims: list[Op], found: Findings) -> None:
    for term, by_replica in _shared_terms(claims, _claim_of):
        found.flag(
            f"term {term} claimed by {len(by_replica)} replicas ({', '.join(sorted(by_replica))})",
            by_replica.values(),
        )


def _check_no_stale_claims(claims: list[Op], found: Findings) -> None:
    """A claim whose probe was sent after a newer term's claim was answered: a split brain."""
    answered = sorted(claims, key=lambda op: op.done.time if op.done is not None else 0.0)
    done_times = [op.done.time for op in answered if op.done is not None]
    newest: list[Op] = []  # newest[i]: the highest-term claim among answered[: i + 1]
    for op in answered:
        newest.append(op if not newest or _claim_of(op) > _claim_of(newest[-1]) else newest[-1])
    for op in claims:
        if op.start is None:
            continue  # an answer without its probe: concurrent with everything before it
        seen = bisect.bisect_left(done_times, op.start)
        if not seen:
            continue
        newer = newest[seen - 1]
        (term, replica), (newer_term, newer_replica) = _claim_of(op), _claim_of(newer)
        if newer_term > term:
            assert newer.done is not None and op.done is not None
            found.flag(
                f"{replica} still claimed term {term} at t={op.done.time:.2f}s after "
                f"{newer_replica} was seen leading term {newer_term} at t={newer.done.time:.2f}s",
                (newer.done, op.done),
            )
