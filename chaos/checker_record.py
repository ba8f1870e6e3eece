"""Checkers of etcd's own record (DESIGN §5), as pure functions of its revisions.

The other checkers judge what workers and the harness *reported*; these judge
what etcd *recorded*, revision by revision (``etcd_record.read_record``), so
a write nobody noticed still counts:

- ``record-fencing`` (invariant 1): every leader transaction carries the
  writer stamp (``<J>/writer``: replica and term), and its term is the
  create revision of the lowest live candidate key at that revision, i.e.
  the term that was current; terms never go back.
- ``record-barriers`` (invariant 2): at the revision a barrier is released,
  every live member is at the barrier's generation and arrived there as its
  current incarnation.
- ``record-checkpoints`` (invariant 4): ``latest`` never moves back, and no
  step is left where every live member of one generation committed a part
  but the step never completed.
- ``record-members``: a member record never goes back to an older
  incarnation (unless it was deleted in between: a deregistered id starts
  again).

Writes that are not leader transactions are skipped: the election's and
replicas' lease-bound keys, and expiries under ``rendezvous/``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from dtr.coordinator.election import decode_candidate
from dtr.keys import JobKeys

from .checker_base import MAX_VIOLATIONS, CheckResult, Violation
from .etcd_record import MARKER_SUFFIX, RecordEvent


def _by_revision(events: Iterable[RecordEvent]) -> Iterator[tuple[int, list[RecordEvent]]]:
    group: list[RecordEvent] = []
    for event in events:
        if group and event.revision != group[0].revision:
            yield group[0].revision, group
            group = []
        group.append(event)
    if group:
        yield group[0].revision, group


def _result(name: str, checked: int, violations: list[str]) -> CheckResult:
    kept = tuple(Violation(v) for v in violations[:MAX_VIOLATIONS])
    left = max(0, len(violations) - MAX_VIOLATIONS)
    return CheckResult(name, not violations, checked, kept, left_off=left)


@dataclass
class _State:
    """The job's keys as of the revisions replayed so far (only what the checkers need)."""

    keys: JobKeys
    candidates: dict[str, int] = field(default_factory=dict)  # key -> create revision
    members: dict[str, tuple[bool, int]] = field(default_factory=dict)  # id -> alive, incarnation
    generation: int = 0
    arrivals: dict[str, dict[str, tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # barrier -> worker -> (generation, incarnation)
    parts: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    complete: set[int] = field(default_factory=set)
    live_at: dict[int, frozenset[str]] = field(default_factory=dict)  # generation -> live ids

    def apply(self, event: RecordEvent) -> None:
        keys, key, put = self.keys, event.key, event.kind == "put"
        if key.startswith(keys.election_prefix):
            if put and _is_candidate(event):
                self.candidates[key] = event.create_revision
            else:  # deleted, or a stray key the elector ignores too
                self.candidates.pop(key, None)
        elif key.startswith(keys.members_prefix):
            worker = key[len(keys.members_prefix) :]
            if put:
                record = json.loads(event.value)
                self.members[worker] = (bool(record["alive"]), int(record["incarnation"]))
            else:
                self.members.pop(worker, None)
        elif key == keys.generation and put:
            self.generation = int(event.value)
        elif key.startswith(keys.barriers_prefix) and "/arrivals/" in key:
            name, _, worker = key[len(keys.barriers_prefix) :].partition("/arrivals/")
            if put:
                arrival = json.loads(event.value)
                entry = (int(arrival["generation"]), int(arrival.get("incarnation", 0)))
                self.arrivals[name][worker] = entry
            else:
                self.arrivals[name].pop(worker, None)
        elif key.startswith(keys.checkpoint_steps_prefix):
            step, _, worker = key[len(keys.checkpoint_steps_prefix) :].partition("/")
            if put:
                self.parts[int(step)][worker] = int(json.loads(event.value)["generation"])
            else:  # retention deletes a step's prefix: one event per key
                self.parts[int(step)].pop(worker, None)
        elif key.startswith(keys.checkpoint_complete_prefix):
            done = int(key[len(keys.checkpoint_complete_prefix) :])
            if put:
                self.complete.add(done)
            else:
                self.complete.discard(done)

    def live(self) -> dict[str, int]:
        return {w: inc for w, (alive, inc) in self.members.items() if alive}

    def leader_term(self) -> int | None:
        return min(self.candidates.values(), default=None)


def _is_candidate(event: RecordEvent) -> bool:
    """Whether the elector would count this key: it ignores keys it cannot decode."""
    try:
        decode_candidate(event.key, event.value, event.create_revision)
    except ValueError:
        return False
    return True


def _is_leader_write(keys: JobKeys, event: RecordEvent) -> bool:
    """Whether only a leader transaction may have made ``event``."""
    key = event.key
    if key.startswith((keys.election_prefix, keys.replicas_prefix)):
        return False  # candidates and replica addresses: each replica's own, on leases
    if key == f"{keys.prefix}{MARKER_SUFFIX}":
        return False
    rendezvous = f"{keys.prefix}rendezvous/"
    return not (key.startswith(rendezvous) and event.kind == "delete")  # lease expiry


def check_record(events: Sequence[RecordEvent], keys: JobKeys) -> list[CheckResult]:
    """Replay etcd's record once and judge every record invariant."""
    state = _State(keys)
    fencing: list[str] = []
    barriers: list[str] = []
    latest: list[str] = []
    members: list[str] = []
    writes = releases = latest_moves = member_puts = 0
    last_term, last_latest = 0, -1
    for revision, group in _by_revision(events):
        term = state.leader_term()  # the term current when the transaction ran
        before = dict(state.members)
        for event in group:
            state.apply(event)
        if any(_is_leader_write(keys, e) for e in group):
            writes += 1
            last_term = _check_stamp(
                keys, revision, group, term=term, last_term=last_term, violations=fencing
            )
        for event in group:
            if event.key == keys.generation and event.kind == "put":
                state.live_at[state.generation] = frozenset(state.live())
            if event.key == keys.latest_checkpoint and event.kind == "put":
                latest_moves += 1
                step = int(json.loads(event.value)["step"])
                if step < last_latest:
                    latest.append(f"revision {revision}: latest moved back {last_latest} -> {step}")
                last_latest = max(last_latest, step)
            if event.key.startswith(keys.members_prefix) and event.kind == "put":
                member_puts += 1
                _check_member(keys, revision, event, before, members)
            if _is_release(keys, event):
                releases += 1
                _check_release(keys, revision, event, state, barriers)
    stuck = _stuck_steps(state)
    return [
        _result("record-fencing", writes, fencing),
        _result("record-barriers", releases, barriers),
        _result("record-checkpoints", latest_moves + len(state.parts), latest + stuck),
        _result("record-members", member_puts, members),
    ]


def _check_stamp(
    keys: JobKeys,
    revision: int,
    group: list[RecordEvent],
    *,
    term: int | None,
    last_term: int,
    violations: list[str],
) -> int:
    stamps = [e for e in group if e.key == keys.writer and e.kind == "put"]
    written = ", ".join(sorted({e.key for e in group})[:5])
    if not stamps:
        violations.append(
            f"revision {revision}: a leader write without the writer stamp ({written})"
        )
        return last_term
    stamp = json.loads(stamps[0].value)
    stamped = int(stamp["term"])
    if stamped != term:
        violations.append(
            f"revision {revision}: {stamp['replica']} wrote under term {stamped} while the "
            f"current term was {term} ({written})"
        )
    if stamped < last_term:
        violations.append(f"revision {revision}: term went back {last_term} -> {stamped}")
    return max(last_term, stamped)


def _check_member(
    keys: JobKeys,
    revision: int,
    event: RecordEvent,
    before: dict[str, tuple[bool, int]],
    violations: list[str],
) -> None:
    worker = event.key[len(keys.members_prefix) :]
    incarnation = int(json.loads(event.value)["incarnation"])
    previous = before.get(worker)
    if previous is not None and incarnation < previous[1]:
        violations.append(
            f"revision {revision}: member {worker} went back from incarnation "
            f"{previous[1]} to {incarnation}"
        )


def _is_release(keys: JobKeys, event: RecordEvent) -> bool:
    if event.kind != "put" or not event.key.startswith(keys.barriers_prefix):
        return False
    if not event.key.endswith("/state"):
        return False
    return bool(json.loads(event.value).get("released"))


def _check_release(
    keys: JobKeys, revision: int, event: RecordEvent, state: _State, violations: list[str]
) -> None:
    name = event.key[len(keys.barriers_prefix) : -len("/state")]
    generation = int(json.loads(event.value)["generation"])
    if generation != state.generation:
        violations.append(
            f"revision {revision}: barrier {name} released for generation {generation} while "
            f"the job was at {state.generation}"
        )
        return
    arrivals = state.arrivals.get(name, {})
    for worker, incarnation in sorted(state.live().items()):
        arrived = arrivals.get(worker)
        if arrived is None or arrived[0] != generation:
            violations.append(
                f"revision {revision}: barrier {name} released without live member {worker}"
            )
        elif arrived[1] not in (0, incarnation):
            violations.append(
                f"revision {revision}: barrier {name} released on an arrival of {worker}'s "
                f"incarnation {arrived[1]}; the live one is {incarnation}"
            )


def _stuck_steps(state: _State) -> list[str]:
    """Steps where every live member of one generation committed, yet no complete record."""
    stuck = []
    for step, parts in sorted(state.parts.items()):
        if step in state.complete or not parts:
            continue
        for generation in sorted(set(parts.values())):
            live = state.live_at.get(generation)
            committed = {w for w, g in parts.items() if g == generation}
            if live and committed >= live:
                stuck.append(
                    f"step {step}: every live member of generation {generation} committed "
                    f"({len(live)}), but the step never completed"
                )
    return stuck
