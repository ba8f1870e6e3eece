"""What every checker shares: results, the end-of-run facts, and the history's operations.

``dtr.chaos.checkers`` documents the schema and runs the checkers; this
module holds only their vocabulary: ``Violation`` / ``CheckResult`` (what a
checker returns), ``FinalState`` (what the harness captures after the settle
phase), ``Op`` (an invoke paired with its completion) and the real-time
order helpers. Nothing here does I/O or reads a clock: checkers stay pure
functions of the history.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .history import Event

#: Violations kept per checker; the rest are counted in ``CheckResult.left_off``.
MAX_VIOLATIONS = 20
#: Events named per violation (a lost-commit report may name many saves).
MAX_EVENTS_PER_VIOLATION = 20
WORKER_PREFIX = "worker:"


@dataclass(frozen=True)
class Violation:
    """One breach of an invariant and the events that show it."""

    message: str
    events: tuple[Event, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "events": [json.loads(e.to_json()) for e in self.events]}


@dataclass(frozen=True)
class CheckResult:
    """A checker's verdict.

    ``checked`` counts what the checker could judge (events or groups, as its
    docstring says); ``unchecked`` what it had to skip because the history
    does not say (an unknown outcome, a generation nobody observed) — unknown
    is never counted as failed. ``left_off`` counts violations beyond the
    ``MAX_VIOLATIONS`` kept.
    """

    name: str
    ok: bool
    checked: int
    violations: tuple[Violation, ...]
    unchecked: int = 0
    left_off: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "checked": self.checked,
            "unchecked": self.unchecked,
            "left_off": self.left_off,
            "violations": [v.as_dict() for v in self.violations],
        }


@dataclass(frozen=True)
class FinalState:
    """End-of-run facts the harness captures once every fault healed and the run settled.

    - ``complete_steps``: step -> the workers of its complete record;
    - ``latest_step``: the job's latest complete step pointer (None: none);
    - ``verified_parts``: (step, worker) -> whether that part's bytes verified
      (size and checksum) at the end; a missing key means "not checked";
    - ``leader``: the leader's replica id (None: no leader);
    - ``live_workers``: the worker ids alive at the end;
    - ``pending_commits``: worker -> commit records still queued after settle.
    """

    complete_steps: dict[int, tuple[str, ...]] = field(default_factory=dict)
    latest_step: int | None = None
    verified_parts: dict[tuple[int, str], bool] = field(default_factory=dict)
    leader: str | None = None
    live_workers: tuple[str, ...] = ()
    pending_commits: dict[str, int] = field(default_factory=dict)


class Findings:
    """Accumulates one checker's counts and (at most ``MAX_VIOLATIONS``) violations."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.checked = 0
        self.unchecked = 0
        self._violations: list[Violation] = []
        self._left_off = 0

    def flag(self, message: str, events: Iterable[Event] = ()) -> None:
        if len(self._violations) >= MAX_VIOLATIONS:
            self._left_off += 1
            return
        named = tuple(events)[:MAX_EVENTS_PER_VIOLATION]
        self._violations.append(Violation(message, named))

    def result(self) -> CheckResult:
        return CheckResult(
            name=self.name,
            ok=not self._violations,
            checked=self.checked,
            violations=tuple(self._violations),
            unchecked=self.unchecked,
            left_off=self._left_off,
        )


@dataclass(frozen=True)
class Op:
    """An operation: its invoke and its completion (ok / fail / info), either may be missing.

    A completion without an invoke has an unknown start: it is taken as
    concurrent with everything before it, so it never counts as "after"
    another operation. An invoke without a completion is an unknown outcome.
    """

    invoke: Event | None
    done: Event | None

    @property
    def process(self) -> str:
        return self._some.process

    @property
    def start(self) -> float | None:
        return self.invoke.time if self.invoke is not None else None

    @property
    def first_time(self) -> float:
        return self._some.time

    def is_ok(self) -> bool:
        return self.done is not None and self.done.type == "ok"

    @property
    def _some(self) -> Event:
        event = self.invoke or self.done
        assert event is not None, "an Op has an invoke or a completion"
        return event


def operations(events: Iterable[Event], fs: Collection[str]) -> list[Op]:
    """The operations of the given ``f``s, pairing by (process, f, op_id), by first time.

    A reused op_id (a restarted process whose counter began again) closes the
    earlier invoke as never completed before opening the new one.
    """
    open_ops: dict[tuple[str, str, str], Event] = {}
    ops: list[Op] = []
    for event in events:
        if event.f not in fs:
            continue
        if event.op_id is None:
            ops.append(Op(event, None) if event.type == "invoke" else Op(None, event))
            continue
        key = (event.process, event.f, event.op_id)
        if event.type == "invoke":
            earlier = open_ops.pop(key, None)
            if earlier is not None:
                ops.append(Op(earlier, None))
            open_ops[key] = event
        else:
            ops.append(Op(open_ops.pop(key, None), event))
    ops.extend(Op(invoke, None) for invoke in open_ops.values())
    return sorted(ops, key=lambda op: op.first_time)


def worker_id(process: str) -> str | None:
    """The worker id of a ``worker:<id>`` process, None for any other process."""
    return process[len(WORKER_PREFIX) :] if process.startswith(WORKER_PREFIX) else None


def regressions(observed: Sequence[tuple[Op, int]]) -> list[tuple[Op, Op]]:
    """(earlier, later) pairs where ``later`` began after ``earlier`` completed, yet saw less.

    ``observed`` pairs completed operations with the value each saw. Only
    real-time order counts: two overlapping operations may see either order.
    For each later operation the pair names the earlier one that saw the most.
    """
    by_done = sorted(observed, key=lambda item: _done_time(item[0]))
    by_start = sorted(
        (item for item in observed if item[0].start is not None),
        key=lambda item: item[0].start or 0.0,
    )
    found: list[tuple[Op, Op]] = []
    best: tuple[Op, int] | None = None
    index = 0
    for op, value in by_start:
        while index < len(by_done) and _done_time(by_done[index][0]) < (op.start or 0.0):
            if best is None or by_done[index][1] > best[1]:
                best = by_done[index]
            index += 1
        if best is not None and value < best[1]:
            found.append((best[0], op))
    return found


def pair_events(earlier: Op, later: Op) -> tuple[Event, ...]:
    """What shows a regression: the earlier completion, the later invoke and completion."""
    return tuple(e for e in (earlier.done, later.invoke, later.done) if e is not None)


def _done_time(op: Op) -> float:
    assert op.done is not None, "only completed operations are ordered"
    return op.done.time


def per_process(
    ops: Iterable[Op], value_of: Callable[[Op], int | None]
) -> dict[str, list[tuple[Op, int]]]:
    """Completed operations with a value, grouped by process (``value_of`` None: skip)."""
    grouped: dict[str, list[tuple[Op, int]]] = defaultdict(list)
    for op in ops:
        value = value_of(op) if op.done is not None else None
        if value is not None:
            grouped[op.process].append((op, value))
    return grouped


def memberships(events: Iterable[Event]) -> dict[int, list[Event]]:
    """generation -> the harness's ``membership`` ok events that observed it."""
    observed: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        if event.f == "membership" and event.type == "ok" and "generation" in event.value:
            observed[int(event.value["generation"])].append(event)
    return observed


def members_by_generation(events: Iterable[Event]) -> dict[int, frozenset[str]]:
    """generation -> its members, for generations every observation agrees on."""
    known: dict[int, frozenset[str]] = {}
    for generation, seen in memberships(events).items():
        sets = {frozenset(str(m) for m in e.value.get("members", ())) for e in seen}
        if len(sets) == 1:
            known[generation] = sets.pop()
    return known
