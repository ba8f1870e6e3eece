"""``commit-lives``: a worker commits only a part it saved in the job life it commits in.

A commit record goes on a worker's queue when the save is made and is sent
later, possibly by a later process of the same worker id. When the job was
wiped in between (a new job life: "A new life of the job meets an old life's
commit queue", docs/failure-semantics.md), the old life's records must be set
aside, never sent: the new life's etcd would otherwise take a part of a model
it never trained, and complete a step with it.

``record-reports`` matches the record's parts to saves by worker and step,
and a new life that saved the same step later passes that match. This check
uses time instead: each commit a worker reported ``accepted`` or
``duplicate`` must follow a ``save`` ``ok`` of that step by the same worker
in the same job life (the life of the save, else of the ``register`` in
force; unknown lives match any). A save whose process died before its
outcome may still have been queued and committed by the next process, and a
history may report no saves at all (a hand-made one): such commits are
counted as unchecked. A worker that saved the step only in another life, or
only after the commit, is a violation.

It is what sees the ``replay-other-life`` mutant (``dtr.mutants``): the new
process sends the old life's queued commit without its life, and the new
life accepts it before the worker has saved that step again.
"""

from __future__ import annotations

from collections.abc import Sequence

from .checker_base import CheckResult, Findings, worker_id
from .checker_reports import COMMITTED, Registrations, saves_by_step
from .history import Event

NAME = "commit-lives"

#: (worker, step) → (time, job life or None) of each save ok.


def check_commit_lives(events: Sequence[Event]) -> CheckResult:
    """Judge each committed commit against the saves of its step before it, life by life."""
    found = Findings(NAME)
    registrations = Registrations(events)
    saves, unknown = saves_by_step(events, registrations)
    any_saves = any(saves.values()) or any(unknown.values())
    for event in events:
        worker = worker_id(event.process)
        if worker is None or event.f != "commit" or event.type != "ok":
            continue
        if event.value.get("outcome") not in COMMITTED or "step" not in event.value:
            continue
        step = int(event.value["step"])
        registered, _ = registrations.at(worker, event.time)
        life = registered.job_life if registered else None
        if any(t <= event.time and _same(life, s) for t, s in saves[(worker, step)]):
            found.checked += 1
        elif not any_saves or any(
            t <= event.time and _same(life, s) for t, s in unknown[(worker, step)]
        ):
            # A save of this life begun before the commit whose process died before it
            # recorded an outcome; or a history that records no saves at all.
            found.unchecked += 1
        else:
            found.checked += 1
            found.flag(
                f"{worker} reported its commit of step {step} {event.value['outcome']} "
                f"(t={event.time:.1f}s, job life {life}), but saved no step {step} in that "
                "life before it",
                [event],
            )
    return found.result()


def _same(commit_life: str | None, save_life: str | None) -> bool:
    return commit_life is None or save_life is None or commit_life == save_life
