"""Replaying etcd's record of a job: the job's keys as of each revision, life by life.

``checker_record.py`` judges each revision against the state this module
keeps (only what the checkers need), and collects ``RecordFacts`` for the
checks that also need storage or the workers' histories
(``checker_record_parts.py``, ``checker_reports.py``).

Job lives (docs/failure-semantics.md, "A new job over an old job's name"):
a ``job-restart`` may wipe the job's prefix and start the job again, whose
first leader writes a new ``<J>/life``. Every rule holds within one life;
across lives ``latest`` may move back, incarnations restart, steps complete
again. So the replay starts over (a fresh ``LifeState``) at the revision
the life key is deleted (the wipe) or put with a new value; only the
election's candidates, which belong to the replicas and not to the life,
carry over.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dtr.coordinator.election import decode_candidate
from dtr.keys import JobKeys

from .etcd_record import RecordEvent


@dataclass(frozen=True)
class Release:
    """One barrier release in the record, with who was live and who had arrived."""

    life: int
    name: str
    generation: int
    revision: int
    live: Mapping[str, int]  # worker -> incarnation, live at the release
    arrivals: Mapping[str, tuple[int, int]]  # worker -> (generation, incarnation)


@dataclass(frozen=True)
class RetainedStep:
    """A complete step still in the record at the end, and its parts of its generation."""

    step: int
    generation: int
    parts: Mapping[str, Mapping[str, Any]]  # worker -> the PartRecord's fields


@dataclass
class RecordFacts:
    """What the replay hands to the checks that look beyond etcd."""

    lives: list[str] = field(default_factory=lambda: [""])  # life index -> uid ("": none yet)
    releases: list[Release] = field(default_factory=list)
    parts: set[tuple[int, int, str]] = field(default_factory=set)  # (life, step, worker) put
    retained: list[RetainedStep] = field(default_factory=list)  # the last life's, at the end

    def life_of(self, job_life: str) -> int | None:
        """The index of a worker's ``<etcd cluster id>/<uid>`` life; None if never recorded."""
        uid = job_life.rpartition("/")[2]
        return next((i for i, known in enumerate(self.lives) if known and known == uid), None)


@dataclass
class LifeState:
    """The job's keys as of the revisions replayed so far, within one life."""

    keys: JobKeys
    life: int = 0
    uid: str | None = None
    candidates: dict[str, int] = field(default_factory=dict)  # key -> create revision
    members: dict[str, tuple[bool, int]] = field(default_factory=dict)  # id -> alive, incarnation
    generation: int = 0
    arrivals: dict[str, dict[str, tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # barrier -> worker -> (generation, incarnation)
    parts: dict[int, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # step -> worker -> PartRecord fields
    complete: dict[int, int] = field(default_factory=dict)  # step -> its generation
    live_at: dict[int, frozenset[str]] = field(default_factory=dict)  # generation -> live ids

    def next_life(self) -> LifeState:
        """A fresh state for the next life; the replicas' candidates carry over."""
        return LifeState(self.keys, life=self.life + 1, candidates=self.candidates)

    def apply(self, event: RecordEvent) -> None:
        keys, key, put = self.keys, event.key, event.kind == "put"
        if key.startswith(keys.election_prefix):
            if put and _is_candidate(event):
                self.candidates[key] = event.create_revision
            else:  # deleted, or a stray key the elector ignores too
                self.candidates.pop(key, None)
        elif key.startswith(keys.members_prefix):
            self._apply_member(key[len(keys.members_prefix) :], event)
        elif key == keys.generation and put:
            self.generation = int(event.value)
        elif key == keys.job_life and put:
            self.uid = event.value.decode()
        elif key.startswith(keys.barriers_prefix) and "/arrivals/" in key:
            self._apply_arrival(key[len(keys.barriers_prefix) :], event)
        elif key.startswith(keys.checkpoint_steps_prefix):
            step, _, worker = key[len(keys.checkpoint_steps_prefix) :].partition("/")
            if put:
                self.parts[int(step)][worker] = json.loads(event.value)
            else:  # retention deletes a step's prefix: one event per key
                self.parts[int(step)].pop(worker, None)
        elif key.startswith(keys.checkpoint_complete_prefix):
            done = int(key[len(keys.checkpoint_complete_prefix) :])
            if put:
                self.complete[done] = int(json.loads(event.value)["generation"])
            else:
                self.complete.pop(done, None)

    def _apply_member(self, worker: str, event: RecordEvent) -> None:
        if event.kind == "put":
            record = json.loads(event.value)
            self.members[worker] = (bool(record["alive"]), int(record["incarnation"]))
        else:
            self.members.pop(worker, None)

    def _apply_arrival(self, rest: str, event: RecordEvent) -> None:
        name, _, worker = rest.partition("/arrivals/")
        if event.kind == "put":
            arrival = json.loads(event.value)
            entry = (int(arrival["generation"]), int(arrival.get("incarnation", 0)))
            self.arrivals[name][worker] = entry
        else:
            self.arrivals[name].pop(worker, None)

    def live(self) -> dict[str, int]:
        return {w: inc for w, (alive, inc) in self.members.items() if alive}

    def leader_term(self) -> int | None:
        return min(self.candidates.values(), default=None)

    def retained(self) -> list[RetainedStep]:
        """The complete steps left, each with its parts of the generation it completed under."""
        return [
            RetainedStep(
                step,
                generation,
                {
                    w: part
                    for w, part in sorted(self.parts.get(step, {}).items())
                    if int(part["generation"]) == generation
                },
            )
            for step, generation in sorted(self.complete.items())
        ]


def by_revision(events: Iterable[RecordEvent]) -> Iterator[tuple[int, list[RecordEvent]]]:
    """The events grouped by revision: one group is one etcd transaction."""
    group: list[RecordEvent] = []
    for event in events:
        if group and event.revision != group[0].revision:
            yield group[0].revision, group
            group = []
        group.append(event)
    if group:
        yield group[0].revision, group


def is_wipe(keys: JobKeys, group: list[RecordEvent]) -> bool:
    """Whether this revision deleted the job's life: someone wiped the job's prefix."""
    return any(e.key == keys.job_life and e.kind == "delete" for e in group)


def starts_life(state: LifeState, group: list[RecordEvent]) -> bool:
    """Whether this revision ends the current life (a wipe, or a new life's uid)."""
    if is_wipe(state.keys, group):
        return True
    return any(
        e.key == state.keys.job_life
        and e.kind == "put"
        and state.uid is not None
        and e.value.decode() != state.uid
        for e in group
    )


def _is_candidate(event: RecordEvent) -> bool:
    """Whether the elector would count this key: it ignores keys it cannot decode."""
    try:
        decode_candidate(event.key, event.value, event.create_revision)
    except ValueError:
        return False
    return True
