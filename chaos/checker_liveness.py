"""Liveness after the settle phase: a leader, training progress, and drained commit queues.

Safety checkers hold on any prefix of a run; these hold only at its end,
once the nemesis healed every fault and the harness waited ``settle_s``.
The settle window starts at the harness's ``settle`` note (when it began to
wait for the workers) and lasts ``settle_s``; without the note, it is the
last ``settle_s`` seconds of the history.
"""

from __future__ import annotations

from collections.abc import Sequence

from .checker_base import CheckResult, FinalState, Findings, worker_id
from .history import Event


def check_liveness(events: Sequence[Event], final: FinalState, *, settle_s: float) -> CheckResult:
    """``checked``: the leader, each live worker's progress, and each worker's queue."""
    found = Findings("liveness")
    found.checked = 1 + len(final.live_workers) + len(final.pending_commits)
    if final.leader is None:
        found.flag("no leader at the end of the run")
    window_start = max((e.time for e in events), default=0.0) - settle_s
    window_end = float("inf")
    for event in events:
        if event.process == "harness" and event.f == "settle":
            window_start, window_end = event.time, event.time + settle_s
    before: dict[str, int] = {}
    during: dict[str, Event] = {}
    for event in events:
        worker = worker_id(event.process)
        if event.f != "train" or event.type != "ok" or worker is None:
            continue
        step = int(event.value["step"])
        if event.time < window_start:
            before[worker] = max(step, before.get(worker, step))
        elif event.time > window_end:
            continue  # trained while told to stop: not what the settle proved
        elif worker not in during or step > int(during[worker].value["step"]):
            during[worker] = event
    for worker in sorted(final.live_workers):
        latest = during.get(worker)
        if latest is None:
            found.flag(f"{worker} trained no step in the last {settle_s}s")
        elif worker in before and int(latest.value["step"]) <= before[worker]:
            found.flag(
                f"{worker} made no progress in the last {settle_s}s: step "
                f"{latest.value['step']}, it had reached {before[worker]} before",
                [latest],
            )
    for worker, pending in sorted(final.pending_commits.items()):
        if pending > 0:
            found.flag(f"{worker}: {pending} commits still pending after settle")
    return found.result()
