"""``record-reports``: what the workers reported agrees with etcd's record.

The worker-side checkers trust the workers' histories; the record checkers
trust etcd. This one holds each to the other, for real and simulated
workers alike (both record under ``worker:<id>``, ``sim_recorder.py``):

- a barrier a worker passed (``barrier`` ``ok`` with its name and
  generation) was released in the record for that generation, with the
  worker live at the release as the incarnation it was then: at least the
  one its last ``register`` reported, below the one its next ``register``
  reported (a worker may rejoin by itself, unrecorded, as a newer one);
- every commit a worker reported committed (``commit`` ``ok``, outcome
  ``accepted`` or ``duplicate``) put its part of that step in the record;
- every part in the record for worker W and step S was saved by W (a
  ``save`` ``ok`` of step S). A save whose process died before its outcome
  (an invoke without completion) may still have been queued and committed by
  the next process: such parts are counted as unchecked, not as violations.

Job lives: a worker's life is the ``job_life`` of its ``register`` (or of
the ``save`` itself) when the history carries one; the record's lives are
matched by their uid. Without it an event may match any life; without an
``incarnation`` in ``register`` the incarnation part is skipped.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .checker_base import CheckResult, Findings, operations, worker_id
from .history import Event
from .record_replay import RecordFacts, Release

COMMITTED = frozenset({"accepted", "duplicate"})


@dataclass(frozen=True)
class _Registration:
    time: float
    incarnation: int | None
    job_life: str | None


class Registrations:
    """Each worker's ``register`` answers in time order: who it was at any instant."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.by_worker: dict[str, list[_Registration]] = defaultdict(list)
        for event in events:
            worker = worker_id(event.process)
            if worker is None or event.f != "register" or event.type != "ok":
                continue
            incarnation = event.value.get("incarnation")
            life = event.value.get("job_life")
            self.by_worker[worker].append(
                _Registration(
                    event.time,
                    int(incarnation) if incarnation is not None else None,
                    str(life) if life else None,
                )
            )

    def at(self, worker: str, time: float) -> tuple[_Registration | None, int | None]:
        """The registration in force at ``time`` and the incarnation the next one reported."""
        registrations = self.by_worker.get(worker, [])
        index = bisect.bisect_right([r.time for r in registrations], time) - 1
        current = registrations[index] if index >= 0 else None
        following = registrations[index + 1] if index + 1 < len(registrations) else None
        return current, following.incarnation if following is not None else None


def check_reports(events: Sequence[Event], facts: RecordFacts) -> CheckResult:
    """Judge the workers' reports of barriers, commits and saves against the record."""
    findings = Findings("record-reports")
    registrations = Registrations(events)
    _check_barriers(events, facts, registrations, findings)
    _check_commits(events, facts, registrations, findings)
    _check_parts_saved(events, facts, registrations, findings)
    return findings.result()


def _lives(facts: RecordFacts, job_life: str | None) -> set[int] | None:
    """The record's lives a worker's ``job_life`` may mean; None: any (not reported)."""
    if job_life is None:
        return None
    life = facts.life_of(job_life)
    return set() if life is None else {life}


def _check_barriers(
    events: Sequence[Event], facts: RecordFacts, registrations: Registrations, out: Findings
) -> None:
    releases: dict[tuple[str, int], list[Release]] = defaultdict(list)
    for release in facts.releases:
        releases[(release.name, release.generation)].append(release)
    for op in operations(events, {"barrier"}):
        worker, event = worker_id(op.process), op.done
        if worker is None or event is None or not op.is_ok():
            continue
        name, generation = event.value.get("name"), event.value.get("generation")
        if name is None or generation is None:
            out.unchecked += 1
            continue
        out.checked += 1
        # The incarnation that arrived: registered when the call began (a release
        # answered after a rejoin was made for the incarnation before it).
        arrived_at = op.invoke.time if op.invoke is not None else event.time
        registered, bound = registrations.at(worker, arrived_at)
        lives = _lives(facts, registered.job_life if registered else None)
        found = [
            r
            for r in releases.get((str(name), int(generation)), [])
            if lives is None or r.life in lives
        ]
        passed = f"{worker} passed barrier {name} at generation {generation} (t={event.time:.1f}s)"
        if not found:
            out.flag(f"{passed}, which the record never released", [event])
        elif not any(_was_live(r, worker, registered, bound) for r in found):
            who = f"incarnation {registered.incarnation}" if registered else "any incarnation"
            out.flag(
                f"{passed}, but at its release (revision {found[-1].revision}) it was not a "
                f"live member as {who}",
                [event],
            )


def _was_live(
    release: Release, worker: str, registered: _Registration | None, bound: int | None
) -> bool:
    live = release.live.get(worker)
    if live is None:
        return False
    if registered is None or registered.incarnation is None:
        return True
    if bound is not None and bound > registered.incarnation and live >= bound:
        return False
    return live >= registered.incarnation


def _check_commits(
    events: Sequence[Event], facts: RecordFacts, registrations: Registrations, out: Findings
) -> None:
    for event in events:
        worker = worker_id(event.process)
        if worker is None or event.f != "commit" or event.type != "ok":
            continue
        if event.value.get("outcome") not in COMMITTED or "step" not in event.value:
            continue
        out.checked += 1
        step = int(event.value["step"])
        registered, _ = registrations.at(worker, event.time)
        lives = _lives(facts, registered.job_life if registered else None)
        if not any(
            (life, step, worker) in facts.parts
            for life in (range(len(facts.lives)) if lives is None else lives)
        ):
            outcome = event.value["outcome"]
            out.flag(
                f"{worker} reported its commit of step {step} {outcome} (t={event.time:.1f}s), "
                "but the record has no part of it for that step",
                [event],
            )


def _check_parts_saved(
    events: Sequence[Event], facts: RecordFacts, registrations: Registrations, out: Findings
) -> None:
    saved, unknown = saves_by_step(events, registrations)
    for life, step, worker in sorted(facts.parts):
        lives = [
            facts.life_of(saved_life) if saved_life else life
            for _, saved_life in saved[(worker, step)]
        ]
        if life in lives:
            out.checked += 1
        elif any(
            (facts.life_of(cut_life) if cut_life else life) == life
            for _, cut_life in unknown[(worker, step)]
        ):
            out.unchecked += 1  # a save of that life whose process died before its outcome
        else:
            out.checked += 1
            out.flag(
                f"the record holds {worker}'s part of step {step} (job life {life}), "
                f"but {worker} never reported saving step {step} in that life"
            )


#: (worker, step) -> every save of it: (time, job life or None).
Saves = dict[tuple[str, int], list[tuple[float, str | None]]]


def saves_by_step(events: Sequence[Event], registrations: Registrations) -> tuple[Saves, Saves]:
    """Saves that ended ok (at their outcome), and saves with no outcome (at their invoke).

    A save's life is the ``job_life`` its event carries, else the life of the
    registration in force then; a save with no outcome is one whose process
    died mid-save, which may still have queued its commit.
    """
    saves: Saves = defaultdict(list)
    unknown: Saves = defaultdict(list)
    for op in operations(events, {"save"}):
        worker = worker_id(op.process)
        event = op.done if op.done is not None and op.is_ok() else None
        into = saves
        if op.done is None and op.invoke is not None:
            event, into = op.invoke, unknown
        if worker is None or event is None or "step" not in event.value:
            continue
        registered, _ = registrations.at(worker, event.time)
        life = event.value.get("job_life") or (registered.job_life if registered else None)
        into[(worker, int(event.value["step"]))].append((event.time, str(life) if life else None))
    return saves, unknown
