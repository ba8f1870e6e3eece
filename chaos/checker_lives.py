"""Job lives: a history cut where the job was wiped and started again, each part judged alone.

A ``job-restart`` that wipes etcd (``nemesis_job.py``) starts the job as a
new life: the latest complete step, the generation, the barriers and maybe
the terms start over, and a worker trains from step 0 again. Facts that may
never go back within a life legitimately go back across lives, so the
worker-side checkers judge each life on its own (``checkers.check_all``). A
restart that kept etcd is no boundary: the job resumes where it was, and the
latest step never goes back across it.

Where the cut falls, per kind of process:

- a worker's events belong to the life its *process run* began in (a run
  begins at its ``register`` invoke): a process older than the restart is
  the old life's, even for the events it wrote while being killed;
- the harness's observations (``status``, ``membership``, ``claim``) and
  every other process's events are cut by time: before the restart's
  nemesis ``invoke`` the old life, from its ``ok`` (the job running again)
  the new one; in between the poller may have seen either, so those
  observations are left out.

``check_lives`` holds the cut to what the workers themselves were told at
registration (``job_life``, "<etcd cluster id>/<uid>"): one life per part,
and a new one after each wipe.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .checker_base import MAX_VIOLATIONS, CheckResult, Findings, Violation, worker_id
from .history import Event

#: The nemesis's process name (``nemesis.PROCESS``; not imported: checkers stay light).
NEMESIS = "nemesis"
JOB_RESTART = "job-restart"


@dataclass(frozen=True, order=True)
class Wipe:
    """A wiped ``job-restart``: begun (nemesis ``invoke``) and the job running again (``ok``)."""

    began: float
    ended: float


def wipes(events: Sequence[Event]) -> list[Wipe]:
    """The wiped job restarts the nemesis put in place (its ``ok`` events), in time order."""
    invoked = {
        e.op_id: e.time
        for e in events
        if e.process == NEMESIS and e.type == "invoke" and e.value.get("kind") == JOB_RESTART
    }
    return sorted(
        Wipe(invoked.get(e.op_id, e.time), e.time)
        for e in events
        if e.process == NEMESIS
        and e.type == "ok"
        and e.value.get("kind") == JOB_RESTART
        and e.value.get("etcd") == "wiped"
    )


def split_lives(events: Sequence[Event]) -> list[list[Event]]:
    """The history's job lives, oldest first (one, unless etcd was wiped); each in time order."""
    cuts = wipes(events)
    lives: list[list[Event]] = [[] for _ in range(len(cuts) + 1)]
    began = [cut.began for cut in cuts]
    ended = [cut.ended for cut in cuts]
    run_life: dict[str, int] = {}  # worker process -> the life its current run began in
    for event in events:
        if worker_id(event.process) is not None:
            if event.process not in run_life or (event.f == "register" and event.type == "invoke"):
                run_life[event.process] = bisect_right(began, event.time)
            lives[run_life[event.process]].append(event)
            continue
        life = bisect_right(ended, event.time)
        if life < len(cuts) and event.time >= began[life]:
            continue  # while the job restarted: either life's
        lives[life].append(event)
    return lives


def per_life(
    lives: Sequence[Sequence[Event]], check: Callable[[Sequence[Event], bool], CheckResult]
) -> CheckResult:
    """``check(life, is_last)`` on every life, as one result; violations name their life."""
    results = [check(life, i == len(lives) - 1) for i, life in enumerate(lives)]
    if len(results) == 1:
        return results[0]
    named = [
        Violation(f"life {i + 1} of {len(results)}: {v.message}", v.events)
        for i, result in enumerate(results)
        for v in result.violations
    ]
    return CheckResult(
        name=results[0].name,
        ok=all(result.ok for result in results),
        checked=sum(result.checked for result in results),
        violations=tuple(named[:MAX_VIOLATIONS]),
        unchecked=sum(result.unchecked for result in results),
        left_off=sum(result.left_off for result in results) + max(0, len(named) - MAX_VIOLATIONS),
    )


def check_lives(lives: Sequence[Sequence[Event]]) -> CheckResult:
    """Every registration of one life was told the same ``job_life``, and each wipe a new one.

    ``checked`` counts the lives judged; ``unchecked`` the registrations
    that did not name their life (a history from before lives were recorded).
    """
    found = Findings("lives")
    found.checked = len(lives)
    first_of: dict[str, int] = {}  # job_life -> the first life it was seen in
    for index, life in enumerate(lives):
        told: dict[str, list[Event]] = defaultdict(list)
        for event in life:
            if event.f == "register" and event.type == "ok" and worker_id(event.process):
                if event.value.get("job_life"):
                    told[str(event.value["job_life"])].append(event)
                else:
                    found.unchecked += 1
        if len(told) > 1:
            found.flag(
                f"life {index + 1}: workers were told {len(told)} job lives {sorted(told)} "
                "with no wipe between",
                [events[0] for events in told.values()],
            )
        for job_life, events in sorted(told.items()):
            earlier = first_of.setdefault(job_life, index)
            if earlier != index:
                found.flag(
                    f"life {index + 1}: workers were told job life {job_life!r} of life "
                    f"{earlier + 1}: the wipe did not start a new life",
                    events[:1],
                )
    return found.result()
