"""Invariant 2 (DESIGN §5): a barrier is released once, and only when every live member arrived.

The coordinator uses a barrier name once (``coordinator/barriers.py``): the
first arrival opens it for the current generation G, a generation change
while it is open fails every waiter with ``MembershipChanged`` and the next
arrival reopens it for the new generation, and once released it stays
released for that G. So every ``ok`` for one name must carry the same
generation, whoever received it and whenever. A worker may receive that
same release more than once (it retried after an ``info``, or restarted and
arrived again: arrivals are idempotent) — that is one release, not two.

Also here: ``check_membership``, the consistency of the harness's own
membership observations, which the barrier and shard checkers rely on.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence

from .checker_base import (
    CheckResult,
    Findings,
    Op,
    members_by_generation,
    memberships,
    operations,
    worker_id,
)
from .history import Event


def check_membership(events: Sequence[Event]) -> CheckResult:
    """Every observation of a generation names the same members (``checked``: generations)."""
    found = Findings("membership")
    for generation, seen in sorted(memberships(events).items()):
        found.checked += 1
        first_by_set: dict[frozenset[str], Event] = {}
        for event in seen:
            members = frozenset(str(m) for m in event.value.get("members", ()))
            first_by_set.setdefault(members, event)
        if len(first_by_set) > 1:
            found.flag(
                f"generation {generation} observed with {len(first_by_set)} different member sets",
                first_by_set.values(),
            )
    return found.result()


def check_barriers(events: Sequence[Event]) -> CheckResult:
    """One generation per released name; releases only to members, after all of them arrived.

    ``checked`` counts release (``ok``) events; ``unchecked`` the released
    (name, generation) pairs whose membership no status poll observed.
    """
    found = Findings("barriers")
    members = members_by_generation(events)
    ops = [op for op in operations(events, {"barrier"}) if worker_id(op.process) is not None]
    arrivals = _arrival_times(ops)
    releases: dict[str, dict[int, list[Event]]] = defaultdict(lambda: defaultdict(list))
    for op in ops:
        if op.is_ok() and op.done is not None:
            found.checked += 1
            name = str(op.done.value.get("name", _name(op)))
            releases[name][int(op.done.value["generation"])].append(op.done)
    for name, by_generation in sorted(releases.items()):
        if len(by_generation) > 1:
            found.flag(
                f"barrier {name!r} released under generations {sorted(by_generation)}",
                [oks[0] for _, oks in sorted(by_generation.items())],
            )
        for generation, oks in sorted(by_generation.items()):
            if generation not in members:
                found.unchecked += 1
                continue
            _check_release(
                name, generation, oks, members=members[generation], arrivals=arrivals, found=found
            )
    return found.result()


def _check_release(
    name: str,
    generation: int,
    oks: list[Event],
    *,
    members: frozenset[str],
    arrivals: dict[tuple[str, str], list[float]],
    found: Findings,
) -> None:
    """(name, generation) released: only members were released, and every member had arrived."""
    for ok in oks:
        if worker_id(ok.process) not in members:
            found.flag(
                f"barrier {name!r} released {ok.process} for generation {generation}, "
                f"whose members are {sorted(members)}",
                [ok],
            )
    released_at = min(ok.time for ok in oks)
    for member in sorted(members):
        invoked = arrivals.get((name, member), [])
        if bisect_left(invoked, released_at) == 0:
            found.flag(
                f"barrier {name!r} released for generation {generation} before member "
                f"{member} arrived (it had not invoked the barrier)",
                [min(oks, key=lambda e: e.time)],
            )


def _arrival_times(ops: list[Op]) -> dict[tuple[str, str], list[float]]:
    """(name, worker) -> the sorted times the worker invoked that barrier, whatever the outcome."""
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for op in ops:
        worker = worker_id(op.process)
        if op.invoke is not None and worker is not None:
            times[(_name(op), worker)].append(op.invoke.time)
    for invoked in times.values():
        invoked.sort()
    return times


def _name(op: Op) -> str:
    event = op.invoke or op.done
    return str(event.value.get("name", "")) if event is not None else ""
