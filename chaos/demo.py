"""``dtr demo --workload independent``: independent workers through two faults.

(The default demo is one DDP job: ``demo_ddp.py``.)

The demo is a chaos run (``runner.py``) with a fixed plan instead of a seeded
schedule: etcd, 3 replicas, ``workers`` real training processes (the MLP of
``workload.py``, with ``ShardSampler`` and ``CheckpointManager``), the
leader killed at about 30% of the training time and a worker at about 60%
(restarted, it resumes from the latest complete checkpoint). Afterwards the
same checkers as every chaos run decide whether it passed, and
``summarize`` turns the run into the facts a newcomer wants to see: steps
done, the failovers and how long each took, checkpoints complete, the final
loss, the restarted worker's resume point.

What is not here: the live view (``live_view.py``), the loss picture
(``loss_plot.py``), the command line (``dtr/cli/demo_command.py``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from dtr.errors import InvalidArgument

from .checker_base import worker_id
from .history import Event
from .runner import RunResult
from .scenario import FaultKind, Scenario, ScheduledFault

#: Simulated compute per step: 1,500 steps train for a minute, whatever the machine.
STEP_TIME_S = 0.04
DEFAULT_STEPS = 1500
DEFAULT_WORKERS = 4
#: Where in the training time the faults strike.
LEADER_KILL_AT = 0.3
WORKER_KILL_AT = 0.6
FAULT_DURATION_S = 2.0


def demo_scenario(
    workers: int, steps: int, storage: str = "file", *, step_time_s: float = STEP_TIME_S
) -> Scenario:
    """The demo's cluster and workload: 3 replicas, one etcd, ``workers`` x ``steps``."""
    for name, value, low in (("workers", workers, 1), ("steps", steps, 40)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidArgument(f"--{name} must be a whole number >= {low}; got {value!r}")
    if not 0.001 <= step_time_s <= 10:
        raise InvalidArgument(f"--step-time must be within 0.001-10 s; got {step_time_s:g}")
    return Scenario(
        "demo",
        "dtr's whole job: training through a leader crash and a worker crash",
        faults=((FaultKind.LEADER_KILL, 1.0), (FaultKind.WORKER_KILL, 1.0)),
        duration_s=max(steps * step_time_s, FAULT_DURATION_S * 2),
        settle_s=90.0,
        workers=workers,
        steps=steps,
        step_time_s=step_time_s,
        storage=storage,
    )


def demo_plan(scenario: Scenario, *, faults: bool = True) -> list[ScheduledFault]:
    """The leader killed at 30% of the training time, a worker at 60%; nothing with no faults."""
    if not faults:
        return []
    return [
        ScheduledFault(
            round(scenario.duration_s * LEADER_KILL_AT, 3), FaultKind.LEADER_KILL, FAULT_DURATION_S
        ),
        ScheduledFault(
            round(scenario.duration_s * WORKER_KILL_AT, 3), FaultKind.WORKER_KILL, FAULT_DURATION_S
        ),
    ]


@dataclass(frozen=True)
class WorkerSummary:
    """One worker at the end: steps trained, restarts, the step each restart resumed from."""

    worker_id: str
    steps: int
    restarts: int
    resumed_from: tuple[int | None, ...]
    final_loss: float | None
    exit_code: int | None


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did, for the table it ends with."""

    workers: tuple[WorkerSummary, ...]
    target_steps: int
    failovers: tuple[tuple[str, float, float | None], ...]  # (fault, at_s, seconds to writes)
    complete_checkpoints: int
    latest_step: int | None
    passed: bool
    failed_checks: tuple[str, ...]
    elapsed_s: float

    @property
    def finished(self) -> bool:
        return all(w.steps >= self.target_steps and w.exit_code == 0 for w in self.workers)

    @property
    def final_loss(self) -> float | None:
        losses = [w.final_loss for w in self.workers if w.final_loss is not None]
        return statistics.fmean(losses) if losses else None

    @property
    def ok(self) -> bool:
        """Exit 0 only if training finished with every invariant holding."""
        return self.passed and self.finished


def summarize(result: RunResult, events: Sequence[Event]) -> DemoSummary:
    """The demo's facts from its run and history."""
    leader_faults = [f for f in result.faults if f.kind is FaultKind.LEADER_KILL]
    times = list(result.failovers.times_s)
    failovers = tuple(
        (f"{f.kind.value} {f.target}", f.started_s, times.pop(0) if times else None)
        for f in leader_faults
        if f.outcome == "healed"
    )
    complete = {
        int(e.value["step"])
        for e in events
        if e.f == "commit" and e.type == "ok" and e.value.get("step_complete")
    }
    return DemoSummary(
        workers=tuple(_worker_summary(w, result, events) for w in sorted(result.workers)),
        target_steps=result.scenario.steps,
        failovers=failovers,
        complete_checkpoints=len(complete),
        latest_step=max(complete) if complete else None,
        passed=result.passed,
        failed_checks=tuple(c.name for c in result.checks if not c.ok),
        elapsed_s=result.elapsed_s,
    )


def _worker_summary(wid: str, result: RunResult, events: Sequence[Event]) -> WorkerSummary:
    mine = [e for e in events if worker_id(e.process) == wid]
    trained = [e for e in mine if e.f == "train" and e.type == "ok"]
    loads = [e.value.get("step") for e in mine if e.f == "load" and e.type == "ok"]
    outcome = result.workers[wid]
    return WorkerSummary(
        worker_id=wid,
        steps=max((int(e.value["step"]) for e in trained), default=0),
        restarts=outcome.restarts,
        resumed_from=tuple(loads[1:]),  # the first load is the fresh start
        final_loss=float(trained[-1].value["loss"]) if trained else None,
        exit_code=outcome.exit_code,
    )


def format_demo_summary(summary: DemoSummary, picture: str | None = None) -> str:
    """The table the demo ends with, and its verdict."""
    lines = [f"== dtr demo: {'PASSED' if summary.ok else 'FAILED'} in {summary.elapsed_s:.0f} s =="]
    lines.append(f"{'worker':<8}{'steps':>13}  {'restarts':>8}  {'resumed from':<14}{'loss':>8}")
    for w in summary.workers:
        resumed = ", ".join("start" if s is None else f"step {s}" for s in w.resumed_from) or "-"
        loss = f"{w.final_loss:.3f}" if w.final_loss is not None else "-"
        steps = f"{w.steps}/{summary.target_steps}"
        lines.append(f"{w.worker_id:<8}{steps:>13}  {w.restarts:>8}  {resumed:<14}{loss:>8}")
    for fault, at_s, took_s in summary.failovers:
        took = (
            f"writes accepted again after {took_s:.2f} s" if took_s is not None else "no new leader"
        )
        lines.append(f"failover: {fault} at t={at_s:.1f}s, {took}")
    if not summary.failovers:
        lines.append("failover: none (no leader fault)")
    latest = summary.latest_step if summary.latest_step is not None else "none"
    lines.append(f"checkpoints: {summary.complete_checkpoints} complete steps, latest {latest}")
    if summary.final_loss is not None:
        lines.append(f"final loss (mean over workers): {summary.final_loss:.3f}")
    if summary.failed_checks:
        lines.append(f"invariants FAILED: {', '.join(summary.failed_checks)}")
    else:
        lines.append("invariants: every one of DESIGN §5 held")
    if not summary.finished:
        lines.append("training did not finish: a worker fell short of its steps or failed")
    if picture is not None:
        lines.append(f"loss curve: {picture}")
    return "\n".join(lines)
