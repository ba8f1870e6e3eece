"""``dtr demo``'s default: one real DDP job through rank, leader and agent faults.

The demo is a chaos run (``runner_ddp.py``) with a fixed plan: etcd, 3
replicas, 2 torchrun agents x 2 ranks (gloo) training ``dtr.examples.train``
on dtr's rendezvous, and, at fixed fractions of the undisturbed training
time ``T`` (``steps x step_time``):

- ``0.10 T``: a rank's process SIGKILLed; torchrun restarts the group
  through dtr's rendezvous, every rank resumes from the latest complete step;
- ``0.45 T``: the coordinator leader SIGKILLed while the job trains;
- ``0.65 T``: one agent leaves for good (``--nnodes=1:2``): the other's
  ranks fail their collective and torchrun forms a world of 2 ranks, the
  coordinators hand the shards out again;
- ``LEADER_AFTER_LEAVE_S`` later: the new leader SIGKILLed while that
  re-rendezvous waits for the left node's heartbeat to expire.

``summarize_ddp`` turns the run and the ranks' events into what the demo
ends with: one loss curve (rank 0's loss by step, as a line of blocks), the
time each fault cost (a rank or agent fault: from the fault until every rank
of the next world trained again; a leader kill: rank 0's longest wait for a
step, and when a replica claimed the lead at a newer term), and the check
that every rank of the last world ended with the same parameters (a SHA-256
per rank). ``ok`` only when that holds, training finished, and every check
(DESIGN §5 from etcd's record and the history, and ``checker_ddp``) held.

What is not here: the live view (``live_view_ddp.py``), the picture
(``loss_plot.py``), the command line (``dtr/cli/demo_command.py``).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from dtr.errors import InvalidArgument

from .ddp_events import (
    Formation,
    RankEvent,
    RankProcess,
    formations,
    last_step_before,
    longest_gap,
    processes,
    rank0_losses,
    recovered_after,
)
from .history import Event
from .measures import leader_claims
from .nemesis import FaultRecord
from .runner import RunResult
from .scenario import FaultKind, Scenario, ScheduledFault

DEFAULT_STEPS = 500
#: Simulated compute per step: 500 steps train for about a minute on 2 cores.
DEFAULT_STEP_TIME_S = 0.1
MIN_STEPS = 40
AGENTS, RANKS_PER_AGENT = 2, 2
#: Where in the undisturbed training time each fault strikes.
#: A rank kill costs about 10-12 s on 2 cores (T is 50 s by default): the leader kill
#: comes well after the group trains again, and the agent leaves well after that.
RANK_KILL_AT, LEADER_KILL_AT, AGENT_LEAVE_AT = 0.10, 0.45, 0.65
#: The leader kill after the agent left: inside the re-rendezvous, which waits 8 s or more.
LEADER_AFTER_LEAVE_S = 1.0
LEADER_DOWN_S = 2.0
#: How long the plan holds a rank or agent fault (nothing to heal: the job recovers).
PROCESS_FAULT_S = 0.5
#: How far after a leader kill rank 0's longest step gap is looked for, at most.
GAP_WINDOW_S = 15.0
SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40


def ddp_demo_scenario(
    steps: int = DEFAULT_STEPS, step_time_s: float = DEFAULT_STEP_TIME_S, storage: str = "file"
) -> Scenario:
    """The demo's cluster and job: 3 replicas, one etcd, 2 agents x 2 ranks, ``steps`` steps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < MIN_STEPS:
        raise InvalidArgument(f"--steps must be a whole number >= {MIN_STEPS}; got {steps!r}")
    if isinstance(step_time_s, bool) or not isinstance(step_time_s, int | float):
        raise InvalidArgument(f"--step-time must be a number of seconds; got {step_time_s!r}")
    if not 0.001 <= step_time_s <= 10:
        raise InvalidArgument(f"--step-time must be within 0.001-10 s; got {step_time_s:g}")
    duration = steps * step_time_s
    return Scenario(
        "demo-ddp",
        "a DDP job through a rank kill, leader kills and an agent leaving for good",
        faults=(
            (FaultKind.RANK_KILL, 1.0),
            (FaultKind.LEADER_KILL, 1.0),
            (FaultKind.AGENT_LEAVE, 1.0),
        ),
        duration_s=max(duration, LEADER_DOWN_S * 2),
        settle_s=120.0,
        workers=0,
        ddp_agents=AGENTS,
        ranks_per_agent=RANKS_PER_AGENT,
        steps=steps,
        step_time_s=step_time_s,
        storage=storage,
    )


def ddp_demo_plan(scenario: Scenario, *, faults: bool = True) -> list[ScheduledFault]:
    """The four faults at their fractions of the training time; none with ``faults`` off."""
    if not faults:
        return []
    t = scenario.duration_s

    def at(fraction: float) -> float:
        return round(t * fraction, 3)

    leave = at(AGENT_LEAVE_AT)
    return [
        ScheduledFault(at(RANK_KILL_AT), FaultKind.RANK_KILL, PROCESS_FAULT_S),
        ScheduledFault(at(LEADER_KILL_AT), FaultKind.LEADER_KILL, LEADER_DOWN_S),
        ScheduledFault(leave, FaultKind.AGENT_LEAVE, PROCESS_FAULT_S),
        ScheduledFault(
            round(leave + LEADER_AFTER_LEAVE_S, 3), FaultKind.LEADER_KILL, LEADER_DOWN_S
        ),
    ]


@dataclass(frozen=True)
class FaultCost:
    """One fault and what it cost the job; ``cost_s`` None: the job never recovered."""

    label: str
    at_s: float
    cost_s: float | None
    detail: str


@dataclass(frozen=True)
class DdpDemoSummary:
    """What the demo did, for the summary it ends with."""

    target_steps: int
    full_world: int
    worlds: int
    final_world: int
    final_step: int | None
    losses: tuple[tuple[int, float], ...]  # rank 0's loss by step (the last one trained)
    faults: tuple[FaultCost, ...]
    hashes: tuple[tuple[int, str | None], ...]  # the last world's ranks
    latest_step: int | None
    passed: bool
    checks: int
    failed_checks: tuple[str, ...]
    elapsed_s: float
    agents: dict[str, str]  # how each agent ended

    @property
    def finished(self) -> bool:
        return self.final_step == self.target_steps and len(self.hashes) == self.final_world

    @property
    def identical(self) -> bool:
        values = {sha for _, sha in self.hashes}
        return bool(self.hashes) and len(values) == 1 and None not in values

    @property
    def ok(self) -> bool:
        """Exit 0 only if training finished, every check held and the replicas are identical."""
        return self.passed and self.finished and self.identical


def summarize_ddp(
    result: RunResult, rank_events: Sequence[RankEvent], events: Sequence[Event], wall_zero: float
) -> DdpDemoSummary:
    """The demo's facts from its run, its ranks' events and its history.

    ``wall_zero`` is the wall clock at the run's zero (``runner_ddp``): a
    rank event at ``t`` happened at ``t - wall_zero`` on the run's clock.
    """
    procs = processes(rank_events)
    formed = formations(procs)
    last = formed[-1] if formed else Formation(0, None)
    hashes = tuple(
        (rank, p.param_sha256 if (p := last.processes.get(rank)) is not None else None)
        for rank in range(last.world)
    )
    done = [p.done_step for p in last.processes.values() if p.done_step]
    statuses = [e.value.get("latest_step") for e in events if e.f == "status" and e.type == "ok"]
    latest = max((s for s in statuses if isinstance(s, int)), default=None)
    return DdpDemoSummary(
        target_steps=result.scenario.steps,
        full_world=result.scenario.ddp_agents * result.scenario.ranks_per_agent,
        worlds=len(formed),
        final_world=last.world,
        final_step=min(done) if done and len(done) == last.world else None,
        losses=_loss_by_step(procs),
        faults=fault_costs(result.faults, procs, formed, events, wall_zero),
        hashes=hashes,
        latest_step=latest,
        passed=result.passed,
        checks=len(result.checks),
        failed_checks=tuple(c.name for c in result.checks if not c.ok),
        elapsed_s=result.elapsed_s,
        agents={
            a: "left the job" if o.killed else f"exit {o.exit_code}"
            for a, o in sorted(result.workers.items())
        },
    )


def _loss_by_step(procs: Sequence[RankProcess]) -> tuple[tuple[int, float], ...]:
    by_step: dict[int, float] = {}
    for _, step, loss in rank0_losses(procs):
        by_step[step] = loss  # a step trained again after a restart: its later loss
    return tuple(sorted(by_step.items()))


def fault_costs(
    faults: Sequence[FaultRecord],
    procs: Sequence[RankProcess],
    formed: Sequence[Formation],
    events: Sequence[Event],
    wall_zero: float,
) -> tuple[FaultCost, ...]:
    """What each injected fault cost, in the order they struck (``FaultCost``)."""
    injected = [f for f in faults if f.outcome != "skipped"]
    costs = []
    for index, fault in enumerate(injected):
        at = fault.started_s + wall_zero
        label = f"{fault.kind.value} {fault.target}".strip()
        if fault.kind in (FaultKind.RANK_KILL, FaultKind.AGENT_LEAVE):
            costs.append(_process_fault_cost(label, fault.started_s, at, procs, formed))
            continue
        if fault.kind is not FaultKind.LEADER_KILL:
            costs.append(FaultCost(label, fault.started_s, None, "not measured for this fault"))
            continue
        leader = new_leader_after(events, fault.started_s)
        elected = f"new leader after {leader:.1f} s" if leader is not None else "no new leader"
        during = _rendezvous_hit(injected[:index], at, formed, wall_zero)
        if during is not None:
            costs.append(FaultCost(label, fault.started_s, leader, f"{during}; {elected}"))
            continue
        until = injected[index + 1].started_s + wall_zero if index + 1 < len(injected) else None
        end = min(at + GAP_WINDOW_S, until) if until is not None else at + GAP_WINDOW_S
        gap = longest_gap(procs, at, end)
        typical = _typical_gap(procs)
        shown = f"longest step gap {gap:.2f} s" if gap is not None else "no step after it"
        if typical is not None:
            shown += f" (a step takes {typical:.2f} s)"
        costs.append(FaultCost(label, fault.started_s, gap, f"{shown}; {elected}"))
    return tuple(costs)


def _process_fault_cost(
    label: str, at_s: float, at: float, procs: Sequence[RankProcess], formed: Sequence[Formation]
) -> FaultCost:
    after = recovered_after(formed, at)
    if after is None or after.stepping_at is None:
        return FaultCost(label, at_s, None, "the job never trained again")
    reached = last_step_before(procs, at)
    resumed = after.resumed
    replayed = (
        f"; {reached - resumed} steps trained again"
        if reached is not None and resumed is not None and reached > resumed
        else ""
    )
    took = after.stepping_at - at
    detail = f"training again after {took:.1f} s: a world of {after.world} resumed from step "
    return FaultCost(label, at_s, took, f"{detail}{resumed}{replayed}")


def _rendezvous_hit(
    earlier: Sequence[FaultRecord], at: float, formed: Sequence[Formation], wall_zero: float
) -> str | None:
    """ "during the re-rendezvous after X" when ``at`` fell between a process fault and the
    next world's forming; None otherwise."""
    for fault in reversed(earlier):
        if fault.kind not in (FaultKind.RANK_KILL, FaultKind.AGENT_LEAVE):
            continue
        fault_at = fault.started_s + wall_zero
        nxt = next((f for f in formed if f.started > fault_at), None)
        if nxt is None or at < nxt.started:
            formed_after = f"; the world formed {nxt.started - at:.1f} s later" if nxt else ""
            return f"during the re-rendezvous after {fault.kind.value}{formed_after}"
        return None
    return None


def _typical_gap(procs: Sequence[RankProcess]) -> float | None:
    times = [t for t, _, _ in rank0_losses(procs)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return statistics.median(gaps) if gaps else None


def new_leader_after(events: Sequence[Event], at_s: float) -> float | None:
    """Seconds from ``at_s`` until a replica claimed the lead at a newer term than before it."""
    claims = leader_claims(events)
    before = max((term for t, term in claims if t <= at_s), default=0)
    return next((t - at_s for t, term in claims if t > at_s and term > before), None)


def sparkline(losses: Sequence[tuple[int, float]], width: int = SPARK_WIDTH) -> str:
    """Rank 0's loss by step as a line of blocks: ``2.31 ▇▆▅▄▃▂▁ 0.21 (steps 1-500)``."""
    if not losses:
        return "no step trained"
    buckets: list[list[float]] = [[] for _ in range(min(width, len(losses)))]
    for index, (_, loss) in enumerate(losses):
        buckets[index * len(buckets) // len(losses)].append(loss)
    means = [statistics.fmean(b) for b in buckets if b]
    low, high = min(means), max(means)
    span = (high - low) or 1.0
    line = "".join(SPARK[min(len(SPARK) - 1, int((m - low) / span * len(SPARK)))] for m in means)
    first, last = losses[0], losses[-1]
    return f"{first[1]:.3f} {line} {last[1]:.3f} (steps {first[0]}-{last[0]})"


def loss_events(procs: Sequence[RankProcess], wall_zero: float) -> list[Event]:
    """Rank 0's steps as ``train`` events on the run's clock, for ``loss_plot.loss_svg``."""
    return [
        Event(t - wall_zero, "worker:rank 0", "ok", "train", {"step": step, "loss": loss})
        for t, step, loss in rank0_losses(procs)
    ]


def format_ddp_summary(summary: DdpDemoSummary, picture: str | None = None) -> str:
    """The summary the demo ends with, and its verdict."""
    s = summary
    lines = [f"== dtr demo: {'PASSED' if s.ok else 'FAILED'} in {s.elapsed_s:.0f} s =="]
    lines.append(
        f"job: {AGENTS} torchrun agents x {RANKS_PER_AGENT} ranks (gloo) on dtr's rendezvous, "
        f"{s.target_steps} steps; {s.worlds} world{'s' if s.worlds != 1 else ''} formed, "
        f"the last of {s.final_world} ranks"
    )
    lines.append(f"loss (rank 0, by step): {sparkline(s.losses)}")
    lines.append("faults:" if s.faults else "faults: none")
    for cost in s.faults:
        lines.append(f"  t={cost.at_s:6.1f}s  {cost.label}: {cost.detail}")
    latest = s.latest_step if s.latest_step is not None else "none"
    lines.append(f"checkpoints: latest complete step {latest}")
    agents = ", ".join(f"{a} {ended}" for a, ended in s.agents.items())
    lines.append(f"agents: {agents}")
    if s.failed_checks:
        lines.append(f"invariants FAILED: {', '.join(s.failed_checks)}")
    else:
        lines.append(f"invariants: all {s.checks} checks held (DESIGN §5, and the job's own)")
    if not s.finished:
        reached = s.final_step if s.final_step is not None else "not every rank reported done"
        lines.append(f"training did not finish: {reached}")
    lines.append("parameters (sha256 per rank of the last world):")
    for rank, sha in s.hashes:
        lines.append(f"  rank {rank}  {sha or 'none (did not finish)'}")
    lines.append(
        "every rank's parameters are bit-identical"
        if s.identical
        else "the ranks' parameters are NOT identical"
    )
    if picture is not None:
        lines.append(f"loss curve: {picture}")
    return "\n".join(lines)
