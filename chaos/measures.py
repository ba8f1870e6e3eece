"""What a chaos run measured, read from its history: failover times and operation counts.

Like the checkers, these are pure functions of the events, so a run's numbers
are recomputed from its ``history/*.jsonl`` alone. Failover is measured the
way a client feels it: from the nemesis's ``ok`` (a leader killed or paused,
the fault in place) to the first ``write`` a coordinator acknowledged at a
higher term than any acknowledged before the fault — the new leader is not
"up" until it accepts a write.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .checker_base import operations
from .history import Event
from .nemesis import PROCESS as NEMESIS

#: Nemesis operations that take the leader away (with ``role: leader`` in their value).
LEADER_FAULTS = frozenset({"kill", "pause"})
#: The harness's notes about the run itself (its seed, a failed capture): not operations.
HARNESS_NOTES = frozenset({"run", "final"})


@dataclass(frozen=True)
class Failovers:
    """Failover times in seconds, and how many leader faults saw no new term before the end."""

    times_s: tuple[float, ...]
    unmeasured: int

    @property
    def p50_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    @property
    def max_s(self) -> float | None:
        return max(self.times_s) if self.times_s else None

    def as_dict(self) -> dict[str, object]:
        return {
            "times_s": [round(t, 3) for t in self.times_s],
            "p50_s": None if self.p50_s is None else round(self.p50_s, 3),
            "max_s": None if self.max_s is None else round(self.max_s, 3),
            "unmeasured": self.unmeasured,
        }


def is_leader_fault(event: Event) -> bool:
    """Whether ``event`` is the nemesis putting a leader kill or pause in place."""
    return (
        event.process == NEMESIS
        and event.type == "ok"
        and event.f in LEADER_FAULTS
        and event.value.get("role") == "leader"
    )


def failover_times(events: Sequence[Event]) -> Failovers:
    """Per leader fault: seconds until the first write acknowledged at a newer term."""
    writes = sorted(
        (e.time, e.term) for e in events if e.f == "write" and e.type == "ok" and e.term is not None
    )
    times: list[float] = []
    unmeasured = 0
    for fault in (e for e in events if is_leader_fault(e)):
        before = max((term for at, term in writes if at <= fault.time), default=0)
        before = max(before, fault.term or 0)
        after = next((at for at, term in writes if at > fault.time and term > before), None)
        if after is None:
            unmeasured += 1
        else:
            times.append(after - fault.time)
    return Failovers(tuple(times), unmeasured)


def operation_counts(events: Sequence[Event]) -> dict[str, dict[str, int]]:
    """Client operations (not the nemesis's) by ``f`` then outcome; ``unknown``: never completed."""
    clients = [e for e in events if e.process != NEMESIS and e.f not in HARNESS_NOTES]
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for op in operations(clients, {e.f for e in clients}):
        outcome = op.done.type if op.done is not None else "unknown"
        event = op.done or op.invoke
        assert event is not None, "an operation has an invoke or a completion"
        counts[event.f][outcome] += 1
    return {f: dict(sorted(by.items())) for f, by in sorted(counts.items())}
