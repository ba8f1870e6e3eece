"""What a chaos run measured, read from its history: failover times and operation counts.

Like the checkers, these are pure functions of the events, so a run's numbers
are recomputed from its ``history/*.jsonl`` alone. Failover is measured the
way a client feels it: from the nemesis's ``ok`` (a leader killed, paused or
cut off from etcd, the fault in place) to the first ``write`` a coordinator
acknowledged at a higher term than any acknowledged before the fault — the
new leader is not "up" until it accepts a write — or, when the old leader
kept its lease through a short cut, the first write after the heal. A
workload that records no writes (the DDP job's ranks) is measured by the
harness's probes instead: the first replica claiming the lead at a newer term.
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
LEADER_FAULTS = frozenset({"kill", "pause", "partition"})
#: The harness's notes about the run itself (its seed, a failed capture): not operations.
HARNESS_NOTES = frozenset({"run", "final", "settle"})


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
    """Whether ``event`` is the nemesis putting a leader kill, pause or etcd cut in place."""
    return (
        event.process == NEMESIS
        and event.type == "ok"
        and event.f in LEADER_FAULTS
        and event.value.get("role") == "leader"
    )


def failover_times(events: Sequence[Event]) -> Failovers:
    """Per leader fault: seconds until writes are acknowledged again.

    That is the first write at a term newer than any before the fault, or,
    when the leader kept its term (cut off from etcd for less than its lease
    TTL, it stepped down at its renew deadline and took the same lease back
    once healed), the first write at that term after the heal. A deposed
    leader can acknowledge nothing between the fault and its heal: it cannot
    reach etcd, or it is dead or stopped.
    """
    writes = sorted(
        (e.time, e.term) for e in events if e.f == "write" and e.type == "ok" and e.term is not None
    )
    if not writes:  # a workload that records no writes (the DDP job): a replica's claim to lead
        writes = leader_claims(events)
    heals = {e.op_id: e.time for e in events if e.process == NEMESIS and e.type == "info"}
    times: list[float] = []
    unmeasured = 0
    for fault in (e for e in events if is_leader_fault(e)):
        before = max((term for at, term in writes if at <= fault.time), default=0)
        before = max(before, fault.term or 0)
        healed = heals.get(fault.op_id, float("inf"))
        after = next(
            (
                at
                for at, term in writes
                if at > fault.time and (term > before or (term == before and at > healed))
            ),
            None,
        )
        if after is None:
            unmeasured += 1
        else:
            times.append(after - fault.time)
    return Failovers(tuple(times), unmeasured)


def leader_claims(events: Sequence[Event]) -> list[tuple[float, int]]:
    """(time, term) of every probe that found a replica claiming to lead, in time order.

    The harness's ``claim`` probes: a new leader claims its term once it is
    elected, a little before its first write is acknowledged.
    """
    return sorted(
        (e.time, int(e.value["term"]))
        for e in events
        if e.f == "claim"
        and e.type == "ok"
        and e.value.get("is_leader")
        and isinstance(e.value.get("term"), int)
    )


def settle_time(events: Sequence[Event]) -> float | None:
    """Seconds from the last heal until every worker still training had trained a step again.

    The soak's "settled within 10 s of the last heal" figure. A worker that
    finished before the last heal is not waiting for anything and does not
    count; None when nothing healed or nobody trained after it.
    """
    heals = [e.time for e in events if e.process == NEMESIS and e.type == "info"]
    if not heals:
        return None
    last_heal = max(heals)
    first_after: dict[str, float] = {}
    for event in events:
        if event.f == "train" and event.type == "ok" and event.time >= last_heal:
            first_after.setdefault(event.process, event.time - last_heal)
    return max(first_after.values()) if first_after else None


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
