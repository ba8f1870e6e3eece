"""Invariants 4, 5 and 6 (DESIGN §5): complete steps, commit records, and resuming.

- ``check_checkpoints`` (4): every part of every complete step verifies and
  was committed by its worker; the latest complete step never moves
  backwards, as any one process sees it and up to the final pointer. For a
  workload whose processes record no commits (the DDP job's script),
  ``reported=False`` judges the parts' bytes only (etcd's record is held to
  who committed them by ``record-checkpoints``).
- ``check_commits`` (5): every save that reached a worker's queue left it
  with an outcome; nothing is pending after settle; no commit record (step
  and generation) accepted twice.
- ``check_loads`` (6): a (re)started worker resumes from the latest complete
  step known before it asked, unless its part of that step fails to verify.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence

from .checker_base import (
    CheckResult,
    FinalState,
    Findings,
    Op,
    operations,
    pair_events,
    per_process,
    regressions,
    worker_id,
)
from .history import Event

COMMIT_OUTCOMES = frozenset({"accepted", "duplicate", "superseded", "rejected"})
#: "No complete step yet" sorts before every step.
NO_STEP = -1


def check_checkpoints(
    events: Sequence[Event], final: FinalState | None, *, reported: bool = True
) -> CheckResult:
    """Invariant 4. ``checked``: verified parts plus latest-step observations.

    ``final`` None: a job life that ended before the run did (its etcd was
    wiped), so there are no end-of-run facts to hold its parts to.
    ``reported`` False: the workers record no commits, so a complete step's
    part is not looked for among them (its bytes are still verified).
    """
    found = Findings("checkpoints")
    if final is not None:
        _check_parts(operations(events, {"commit"}), final, found, reported=reported)
    observations = [op for op in operations(events, {"commit", "status"}) if op.is_ok()]
    grouped = per_process(observations, observed_latest)
    for process, observed in sorted(grouped.items()):
        found.checked += len(observed)
        for earlier, later in regressions(observed):
            found.flag(
                f"{process}: the latest complete step went back from "
                f"{observed_latest(earlier)} to {observed_latest(later)}",
                pair_events(earlier, later),
            )
    if final is not None:
        _check_final_pointer(grouped, final, found)
    return found.result()


def _check_final_pointer(
    grouped: dict[str, list[tuple[Op, int]]], final: FinalState, found: Findings
) -> None:
    """The final pointer is the newest complete step, and no older than any step reported."""
    complete_max = max(final.complete_steps, default=None)
    if final.latest_step != complete_max:
        found.flag(
            f"the final latest step is {final.latest_step}, "
            f"the newest complete step is {complete_max}"
        )
    seen = [(value, op) for items in grouped.values() for op, value in items]
    newest = max(seen, key=lambda item: item[0], default=None)
    final_latest = NO_STEP if final.latest_step is None else final.latest_step
    if newest is not None and newest[0] > final_latest and newest[1].done is not None:
        found.flag(
            f"step {newest[0]} was reported complete, the final latest step is {final.latest_step}",
            [newest[1].done],
        )


def _check_parts(
    commits: list[Op], final: FinalState, found: Findings, *, reported: bool = True
) -> None:
    """Each worker of a complete step committed it, and its part verified at the end."""
    by_part: dict[tuple[int, str], list[Event]] = defaultdict(list)
    for op in commits:
        worker = worker_id(op.process)
        for event in (op.invoke, op.done):
            if worker is not None and event is not None and "step" in event.value:
                by_part[(int(event.value["step"]), worker)].append(event)
    for step, workers in sorted(final.complete_steps.items()):
        for worker in sorted(workers):
            verified = final.verified_parts.get((step, worker))
            if reported and (step, worker) not in by_part:
                found.flag(f"step {step} is complete but {worker} never committed it")
            if verified is None:
                found.unchecked += 1
                continue
            found.checked += 1
            if not verified:
                found.flag(
                    f"step {step} is complete but {worker}'s part fails verification",
                    by_part.get((step, worker), ()),
                )


def observed_latest(op: Op) -> int | None:
    """The latest complete step an ok commit or status reports (NO_STEP: none yet)."""
    done = op.done
    if done is None or done.type != "ok":
        return None
    key = "latest_complete_step" if done.f == "commit" else "latest_step"
    if key not in done.value:
        return None
    step = done.value[key]
    return NO_STEP if step is None else int(step)


def check_commits(events: Sequence[Event], final: FinalState | None) -> CheckResult:
    """Invariant 5. ``checked``: ok saves; ``unchecked``: saves of workers dead at the end.

    ``final`` None (a life wiped before the end): a save with no outcome is
    unchecked, since its record was set aside with the life it was made for.
    """
    found = Findings("commits")
    ops = [op for op in operations(events, {"save", "commit"}) if worker_id(op.process)]
    acks: dict[tuple[str, int], list[Event]] = defaultdict(list)
    for op in ops:
        if op.is_ok() and op.done is not None and op.done.f == "commit":
            outcome = op.done.value.get("outcome")
            if outcome not in COMMIT_OUTCOMES:
                found.flag(f"commit answered with unknown outcome {outcome!r}", [op.done])
            acks[(op.process, int(op.done.value["step"]))].append(op.done)
    unacked: dict[str, list[Event]] = defaultdict(list)
    for op in ops:
        if op.is_ok() and op.done is not None and op.done.f == "save":
            found.checked += 1
            started = float("-inf") if op.start is None else op.start
            key = (op.process, int(op.done.value["step"]))
            if not any(ack.time > started for ack in acks.get(key, ())):
                unacked[op.process].append(op.done)
    if final is not None:
        _check_unacked(unacked, final, found)
    else:
        found.unchecked += sum(len(saves) for saves in unacked.values())
    _check_accepted_once(acks, found)
    return found.result()


def _check_accepted_once(acks: dict[tuple[str, int], list[Event]], found: Findings) -> None:
    """One commit record (job, step, worker, generation) is accepted at most once.

    A worker that restarted before its step completed trains the step again
    and commits a new part under its new generation: a second acceptance of
    the same step, but of another record, and correct (a 10-minute soak
    taught the checker that). A replay of the same record must be answered
    ``duplicate``.
    """
    for (process, step), answers in sorted(acks.items()):
        by_generation: dict[int | None, list[Event]] = defaultdict(list)
        for answer in answers:
            if answer.value.get("outcome") == "accepted":
                by_generation[answer.generation].append(answer)
        for generation, accepted in sorted(by_generation.items(), key=lambda kv: kv[0] or -1):
            if len(accepted) > 1:
                found.flag(
                    f"{process}: step {step} generation {generation} accepted "
                    f"{len(accepted)} times",
                    accepted,
                )


def _check_unacked(unacked: dict[str, list[Event]], final: FinalState, found: Findings) -> None:
    """Saves with no commit outcome: lost, or pending after settle (both violations)."""
    for worker, pending in sorted(final.pending_commits.items()):
        if pending > 0:
            found.flag(
                f"{worker}: {pending} commits still pending after settle",
                unacked.get(f"worker:{worker}", ()),
            )
    for process, saves in sorted(unacked.items()):
        worker = worker_id(process) or process
        if worker not in final.live_workers:
            found.unchecked += len(saves)
            continue
        lost = len(saves) - final.pending_commits.get(worker, 0)
        if lost > 0:
            found.flag(
                f"{worker}: {lost} of these saves were neither committed nor superseded, "
                "and are not pending",
                saves,
            )


def check_loads(events: Sequence[Event], final: FinalState | None) -> CheckResult:
    """Invariant 6. ``unchecked``: loads without an invoke, or whose newer part nobody verified.

    ``final`` None: a life wiped before the end, whose parts nobody verified.
    """
    found = Findings("loads")
    known = _known_complete(events)
    times = [time for time, _, _ in known]
    for op in operations(events, {"load"}):
        if not op.is_ok() or worker_id(op.process) is None:
            continue
        if op.start is None:
            found.unchecked += 1
            continue
        before = bisect_left(times, op.start)
        if before == 0:
            found.checked += 1  # nothing was known complete: any answer is fine
            continue
        _judge_load(op, known[before - 1], final or FinalState(), found)
    return found.result()


def _judge_load(
    op: Op, known: tuple[float, int, Event], final: FinalState, found: Findings
) -> None:
    """A load older than the newest known complete step is legal only if its part failed."""
    assert op.done is not None
    worker = worker_id(op.process) or op.process
    _, newest, evidence = known
    step = op.done.value.get("step")
    loaded = NO_STEP if step is None else int(step)
    verified = final.verified_parts.get((newest, worker))
    if loaded >= newest or verified is False:
        found.checked += 1
    elif verified is None:
        found.unchecked += 1
    else:
        found.flag(
            f"{worker} loaded step {step}, but step {newest} was complete before it asked "
            "and its part verifies",
            [e for e in (evidence, op.invoke, op.done) if e is not None],
        )


def _known_complete(events: Sequence[Event]) -> list[tuple[float, int, Event]]:
    """(time, newest complete step known by then, the event that first told it), by time."""
    known: list[tuple[float, int, Event]] = []
    for event in events:
        if event.type != "ok":
            continue
        if event.f == "load":
            step = event.value.get("step")
        elif event.f in ("commit", "status"):
            step = observed_latest(Op(None, event))
        else:
            continue
        if step is None or step == NO_STEP:
            continue
        if not known or int(step) > known[-1][1]:
            known.append((event.time, int(step), event))
        else:
            known.append((event.time, known[-1][1], known[-1][2]))
    return known
