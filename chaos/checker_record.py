"""Checkers of etcd's own record (DESIGN §5), as pure functions of its revisions.

The other checkers judge what workers and the harness *reported*; these judge
what etcd *recorded*, revision by revision (``etcd_record.read_record``,
replayed life by life by ``record_replay.py``), so a write nobody noticed
still counts:

- ``record-fencing`` (invariant 1): every leader transaction carries the
  writer stamp (``<J>/writer``: replica and term), and its term is the
  create revision of the lowest live candidate key at that revision, i.e.
  the term that was current; terms never go back.
- ``record-barriers`` (invariant 2): at the revision a barrier is released,
  every live member is at the barrier's generation and arrived there as its
  current incarnation; a barrier generation is released once per life (the
  coordinator writes a state key only when its value changes, so any second
  ``released`` put for one generation, even an identical one, is a second
  release).
- ``record-checkpoints`` (invariant 4): ``latest`` never moves back; a step
  completes once per life, under the job's current generation, with exactly
  one part of that generation per live member (no part missing, none from a
  worker that is not a live member) and ``num_workers`` their count; no step
  is left where every live member of one generation committed a part but
  the step never completed.
- ``record-members``: a member record never goes back to an older
  incarnation (unless it was deleted in between: a deregistered id starts
  again).

Every rule holds within one job life; a wipe of the job's prefix or a new
``<J>/life`` starts the replay over. Writes that are not leader
transactions are skipped: the election's and replicas' lease-bound keys,
expiries under ``rendezvous/``, the harness's marker and a wipe.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from dtr.keys import JobKeys

from .checker_base import MAX_VIOLATIONS, CheckResult, Violation
from .etcd_record import MARKER_SUFFIX, RecordEvent
from .record_replay import LifeState, RecordFacts, Release, by_revision, is_wipe, starts_life


def _result(name: str, checked: int, violations: list[str]) -> CheckResult:
    kept = tuple(Violation(v) for v in violations[:MAX_VIOLATIONS])
    left = max(0, len(violations) - MAX_VIOLATIONS)
    return CheckResult(name, not violations, checked, kept, left_off=left)


@dataclass(frozen=True)
class RecordReplay:
    """The record checks' verdicts, and the facts the storage and report checks need."""

    results: list[CheckResult]
    facts: RecordFacts


def check_record(events: Sequence[RecordEvent], keys: JobKeys) -> list[CheckResult]:
    """Replay etcd's record once and judge every record invariant."""
    return replay_record(events, keys).results


def replay_record(events: Sequence[RecordEvent], keys: JobKeys) -> RecordReplay:
    """Replay etcd's record once: the verdicts, and the facts for the later checks."""
    audit = _Audit(keys)
    for revision, group in by_revision(events):
        audit.revision(revision, group)
    return audit.finish()


class _Audit:
    """The replay's state and what each checker found so far."""

    def __init__(self, keys: JobKeys) -> None:
        self.keys = keys
        self.state = LifeState(keys)
        self.facts = RecordFacts()
        self.fencing: list[str] = []
        self.barriers: list[str] = []
        self.checkpoints: list[str] = []
        self.members: list[str] = []
        self.writes = self.member_puts = self.steps = 0
        self.last_term, self.last_latest = 0, -1
        self.released: dict[tuple[str, int], int] = {}  # (barrier, generation) -> revision, a life

    def revision(self, revision: int, group: list[RecordEvent]) -> None:
        if starts_life(self.state, group):
            self._end_life()
            self.state = self.state.next_life()
            self.facts.lives.append("")
            self.last_latest = -1
            self.released = {}
        state = self.state
        term = state.leader_term()  # the term current when the transaction ran
        before = dict(state.members)
        was_complete = set(state.complete)
        for event in group:
            state.apply(event)
        if state.uid:
            self.facts.lives[state.life] = state.uid
        if not is_wipe(self.keys, group) and any(_is_leader_write(self.keys, e) for e in group):
            self.writes += 1
            self.last_term = _check_stamp(
                self.keys, revision, group, term=term, last_term=self.last_term, out=self.fencing
            )
        for event in group:
            self._judge(revision, event, before, was_complete)

    def _judge(
        self,
        revision: int,
        event: RecordEvent,
        before: dict[str, tuple[bool, int]],
        was_complete: set[int],
    ) -> None:
        keys, state = self.keys, self.state
        if event.kind != "put":
            return
        if event.key == keys.generation:
            state.live_at[state.generation] = frozenset(state.live())
        elif event.key == keys.latest_checkpoint:
            step = int(json.loads(event.value)["step"])
            if step < self.last_latest:
                self.checkpoints.append(
                    f"revision {revision}: latest moved back {self.last_latest} -> {step}"
                )
            self.last_latest = max(self.last_latest, step)
        elif event.key.startswith(keys.members_prefix):
            self.member_puts += 1
            _check_member(keys, revision, event, before, self.members)
        elif event.key.startswith(keys.checkpoint_steps_prefix):
            worker = event.key.rpartition("/")[2]
            self.facts.parts.add((state.life, keys.step_of(event.key), worker))
        elif event.key.startswith(keys.checkpoint_complete_prefix):
            self.steps += 1
            self.checkpoints += _check_completion(keys, revision, event, state, was_complete)
        elif _is_release(keys, event):
            release = _release(keys, revision, event, state)
            self.facts.releases.append(release)
            self.barriers += _check_release(release, state.generation)
            self.barriers += self._check_once(release)

    def _check_once(self, release: Release) -> list[str]:
        """A barrier generation is released once per life (the leader never re-puts a release)."""
        first = self.released.setdefault((release.name, release.generation), release.revision)
        if first == release.revision:
            return []
        return [
            f"revision {release.revision}: barrier {release.name} released again for generation "
            f"{release.generation} in the same job life (first at revision {first})"
        ]

    def _end_life(self) -> None:
        self.checkpoints += _stuck_steps(self.state)

    def finish(self) -> RecordReplay:
        self._end_life()
        self.facts.retained = self.state.retained()
        results = [
            _result("record-fencing", self.writes, self.fencing),
            _result("record-barriers", len(self.facts.releases), self.barriers),
            _result("record-checkpoints", self.steps + len(self.facts.parts), self.checkpoints),
            _result("record-members", self.member_puts, self.members),
        ]
        return RecordReplay(results, self.facts)


def _is_leader_write(keys: JobKeys, event: RecordEvent) -> bool:
    """Whether only a leader transaction may have made ``event``."""
    key = event.key
    if key.startswith((keys.election_prefix, keys.replicas_prefix)):
        return False  # candidates and replica addresses: each replica's own, on leases
    if key == f"{keys.prefix}{MARKER_SUFFIX}":
        return False
    rendezvous = f"{keys.prefix}rendezvous/"
    return not (key.startswith(rendezvous) and event.kind == "delete")  # lease expiry


def _check_stamp(
    keys: JobKeys,
    revision: int,
    group: list[RecordEvent],
    *,
    term: int | None,
    last_term: int,
    out: list[str],
) -> int:
    stamps = [e for e in group if e.key == keys.writer and e.kind == "put"]
    written = ", ".join(sorted({e.key for e in group})[:5])
    if not stamps:
        out.append(f"revision {revision}: a leader write without the writer stamp ({written})")
        return last_term
    stamp = json.loads(stamps[0].value)
    stamped = int(stamp["term"])
    if stamped != term:
        out.append(
            f"revision {revision}: {stamp['replica']} wrote under term {stamped} while the "
            f"current term was {term} ({written})"
        )
    if stamped < last_term:
        out.append(f"revision {revision}: term went back {last_term} -> {stamped}")
    return max(last_term, stamped)


def _check_member(
    keys: JobKeys,
    revision: int,
    event: RecordEvent,
    before: dict[str, tuple[bool, int]],
    out: list[str],
) -> None:
    worker = event.key[len(keys.members_prefix) :]
    incarnation = int(json.loads(event.value)["incarnation"])
    previous = before.get(worker)
    if previous is not None and incarnation < previous[1]:
        out.append(
            f"revision {revision}: member {worker} went back from incarnation "
            f"{previous[1]} to {incarnation}"
        )


def _check_completion(
    keys: JobKeys, revision: int, event: RecordEvent, state: LifeState, was_complete: set[int]
) -> list[str]:
    """A complete record: once per life, current generation, one part per live member."""
    step = int(event.key[len(keys.checkpoint_complete_prefix) :])
    record = json.loads(event.value)
    generation = int(record["generation"])
    count = int(record.get("num_workers", len(record.get("workers", ()))))
    at = f"revision {revision}: step {step}"
    if step in was_complete:
        return [f"{at} completed again in the same job life"]
    if generation != state.generation:
        return [
            f"{at} completed under generation {generation} while the job was at {state.generation}"
        ]
    live = set(state.live())
    having = {w for w, p in state.parts.get(step, {}).items() if int(p["generation"]) == generation}
    found = []
    if missing := sorted(live - having):
        found.append(f"{at} completed without the part of live member(s) {_names(missing)}")
    if extra := sorted(having - live):
        found.append(
            f"{at} completed with parts of generation {generation} from non-members {_names(extra)}"
        )
    if count != len(live):
        found.append(f"{at} complete record counts {count} workers; {len(live)} were live members")
    return found


def _names(workers: list[str]) -> str:
    shown = ", ".join(workers[:10])
    return shown + (f" and {len(workers) - 10} more" if len(workers) > 10 else "")


def _is_release(keys: JobKeys, event: RecordEvent) -> bool:
    if event.kind != "put" or not event.key.startswith(keys.barriers_prefix):
        return False
    if not event.key.endswith("/state"):
        return False
    return bool(json.loads(event.value).get("released"))


def _release(keys: JobKeys, revision: int, event: RecordEvent, state: LifeState) -> Release:
    name = event.key[len(keys.barriers_prefix) : -len("/state")]
    generation = int(json.loads(event.value)["generation"])
    arrivals = dict(state.arrivals.get(name, {}))
    return Release(state.life, name, generation, revision, state.live(), arrivals)


def _check_release(release: Release, current: int) -> list[str]:
    at = f"revision {release.revision}: barrier {release.name}"
    if release.generation != current:
        return [f"{at} released for generation {release.generation} while the job was at {current}"]
    found = []
    for worker, incarnation in sorted(release.live.items()):
        arrived = release.arrivals.get(worker)
        if arrived is None or arrived[0] != release.generation:
            found.append(f"{at} released without live member {worker}")
        elif arrived[1] not in (0, incarnation):
            found.append(
                f"{at} released on an arrival of {worker}'s incarnation {arrived[1]}; "
                f"the live one is {incarnation}"
            )
    return found


def _stuck_steps(state: LifeState) -> list[str]:
    """Steps where every live member of one generation committed, yet no complete record."""
    stuck = []
    for step, parts in sorted(state.parts.items()):
        if step in state.complete or not parts:
            continue
        for generation in sorted({int(p["generation"]) for p in parts.values()}):
            live = state.live_at.get(generation)
            committed = {w for w, p in parts.items() if int(p["generation"]) == generation}
            if live and committed >= live:
                stuck.append(
                    f"step {step}: every live member of generation {generation} committed "
                    f"({len(live)}), but the step never completed"
                )
    return stuck
