"""The terminal summary of a chaos run, and the listing of the built-in scenarios.

Pure text from a ``RunResult`` (or the scenario registry), so ``dtr chaos``
only prints what these return and a test can read the same lines. The
summary leads with what decides the exit status — each invariant, pass or
fail with its first violations — after the facts that explain it: the faults
injected, the operations by outcome, the failover times.
"""

from __future__ import annotations

from collections.abc import Iterable

from .checker_base import CheckResult
from .runner import RunResult
from .scenario import Scenario

#: Violations printed per failed check; the rest are in results.json.
SHOWN_VIOLATIONS = 3


def format_scenarios(scenarios: Iterable[Scenario]) -> str:
    """One block per scenario: name and description, then its faults and sizes."""
    blocks = []
    for s in scenarios:
        blocks.append(
            f"{s.name}\n    {s.description}\n"
            f"    faults: {s.describe_faults()}; every ~{s.mean_interval_s:g} s, "
            f"~{s.fault_duration_s:g} s each\n"
            f"    {s.duration_s:g} s of faults, {s.settle_s:g} s to settle; "
            f"{s.replicas} replicas, etcd of {s.etcd_members}, {_workload(s)} x {s.steps} steps; "
            f"checkpoints to {s.storage}; default seed {s.seed}"
        )
    return "\n".join(blocks)


def _workload(s: Scenario) -> str:
    if s.ddp_agents:
        return f"a DDP job of {s.ddp_agents} torchrun agents x {s.ranks_per_agent} ranks"
    return f"{s.workers} workers{f' + {s.sim_workers} simulated' if s.sim_workers else ''}"


def format_summary(result: RunResult) -> str:
    """The run in a screenful: faults, operations, invariants, failover, workers, verdict."""
    lines = [f"== chaos run: scenario {result.scenario.name}, seed {result.seed} =="]
    lines += _faults(result)
    lines += _operations(result.operations)
    lines.append("invariants:")
    for check in result.checks:
        lines += _check(check)
    lines.append(_failover(result))
    if result.settled_s is not None:
        lines.append(
            f"settled: every worker still training trained again {result.settled_s:.2f} s "
            "after the last heal"
        )
    lines.append(
        "workers: "
        + "; ".join(
            f"{w} exit {o.exit_code}"
            + (f", {o.restarts} restart(s)" if o.restarts else "")
            + (", stopped at the deadline" if o.stopped else "")
            + (", killed for good by the nemesis" if o.killed else "")
            for w, o in result.workers.items()
        )
    )
    verdict = "PASS" if result.passed else "FAIL"
    lines.append(
        f"result: {verdict} in {result.elapsed_s:.1f} s "
        f"(history and results.json in {result.work_dir})"
    )
    return "\n".join(lines)


def _faults(result: RunResult) -> list[str]:
    injected = [f for f in result.faults if f.outcome != "skipped"]
    healed = sum(1 for f in injected if f.outcome == "healed")
    lines = [
        f"faults: {len(injected)} injected, {healed} healed, "
        f"{len(result.faults) - len(injected)} skipped (of {len(result.schedule)} scheduled)"
    ]
    for fault in result.faults:
        held = (
            f"{fault.healed_s - fault.started_s:.1f} s"
            if fault.healed_s is not None
            else "not held"
        )
        target = f" {fault.target}" if fault.target else ""
        detail = f": {fault.detail}" if fault.detail else ""
        lines.append(
            f"  t={fault.started_s:6.1f}s  {fault.kind.value}{target}  "
            f"{fault.outcome} ({held}){detail}"
        )
    return lines


def _operations(operations: dict[str, dict[str, int]]) -> list[str]:
    lines = ["operations:"]
    for f, outcomes in operations.items():
        counts = "  ".join(f"{outcome} {n}" for outcome, n in outcomes.items())
        lines.append(f"  {f:<12} {counts}")
    return lines


def _check(check: CheckResult) -> list[str]:
    mark = "PASS" if check.ok else "FAIL"
    counts = f"checked {check.checked}" + (
        f", unchecked {check.unchecked}" if check.unchecked else ""
    )
    lines = [f"  {mark}  {check.name:<12} ({counts})"]
    for violation in check.violations[:SHOWN_VIOLATIONS]:
        lines.append(f"        - {violation.message}")
    more = len(check.violations) - SHOWN_VIOLATIONS + check.left_off
    if more > 0:
        lines.append(f"        ... and {more} more (see results.json)")
    return lines


def _failover(result: RunResult) -> str:
    failovers = result.failovers
    if failovers.p50_s is None or failovers.max_s is None:
        measured = "none measured"
    else:
        measured = (
            f"{len(failovers.times_s)} measured, p50 {failovers.p50_s:.2f} s, "
            f"max {failovers.max_s:.2f} s"
        )
    unmeasured = f" ({failovers.unmeasured} without a later write)" if failovers.unmeasured else ""
    # The DDP job's ranks record no writes: a replica claiming the lead stands in (measures.py).
    after = "leader claim" if result.scenario.ddp_agents else "write"
    return f"failover (leader fault -> first {after} at a newer term): {measured}{unmeasured}"
