"""The DDP job's own invariants, judged from its ranks' events (``ddp_events.py``).

The history and record checkers judge dtr (the coordinators, etcd, the
checkpoints); these judge what the job did with it, from what every rank
wrote:

- ``ddp-resume``: the ranks of every world torchrun formed resumed from the
  same step; no world resumed from an older step than an earlier world
  (the latest complete step never goes back, and every world starts from
  it); every process trained consecutive steps from where it resumed, none
  skipped or repeated.
- ``ddp-recovery``: after every ``rank-kill`` and ``agent-leave`` the group
  re-formed (a world torchrun formed after the fault, every rank of it
  training again), and after an ``agent-leave`` in a smaller world.
- ``ddp-params``: the last world trained every step and each of its ranks
  reported its parameters' SHA-256 at the end, all equal: data parallelism
  kept the replicas bit-identical through every restart.

Pure functions of the events and the faults (with their wall-clock times).
"""

from __future__ import annotations

from collections.abc import Sequence

from .checker_base import CheckResult, Findings
from .ddp_events import (
    Formation,
    RankEvent,
    RankProcess,
    formations,
    processes,
    recovered_after,
)
from .scenario import FaultKind

#: A fault as the DDP checks see it: its kind and wall-clock time.
WallFault = tuple[FaultKind, float]


def check_ddp(
    events: Sequence[RankEvent], faults: Sequence[WallFault], *, steps: int
) -> list[CheckResult]:
    """Every DDP check, in order: resume, recovery, params."""
    procs = processes(events)
    formed = formations(procs)
    return [
        check_resume(procs, formed),
        check_recovery(formed, faults),
        check_params(formed, steps=steps),
    ]


def check_resume(procs: Sequence[RankProcess], formed: Sequence[Formation]) -> CheckResult:
    """``checked``: worlds whose resume step was judged, plus processes whose steps were."""
    found = Findings("ddp-resume")
    previous: tuple[int, Formation] | None = None
    for index, formation in enumerate(formed):
        resumed = {p.rank: p.resumed for p in formation.processes.values() if p.resumed is not None}
        if not resumed:
            continue
        found.checked += 1
        if len(set(resumed.values())) > 1:
            found.flag(
                f"world {index} (of {formation.world}) resumed from different steps: {resumed}"
            )
        step = min(resumed.values())
        if previous is not None and step < previous[0]:
            found.flag(
                f"world {index} resumed from step {step}, older than the step {previous[0]} "
                "an earlier world resumed from"
            )
        previous = (step, formation)
    for p in procs:
        if p.resumed is None or not p.steps:
            continue
        found.checked += 1
        expected = p.resumed + 1
        for _, step, _ in p.steps:
            if step != expected:
                found.flag(
                    f"rank {p.rank} (pid {p.pid}) trained step {step} where {expected} was next "
                    f"(it resumed from {p.resumed})"
                )
                break
            expected += 1
    return found.result()


def check_recovery(formed: Sequence[Formation], faults: Sequence[WallFault]) -> CheckResult:
    """``checked``: the rank and agent faults followed (each must be recovered from)."""
    found = Findings("ddp-recovery")
    for kind, at in faults:
        if kind not in (FaultKind.RANK_KILL, FaultKind.AGENT_LEAVE):
            continue
        found.checked += 1
        before = [f for f in formed if f.started <= at]
        after = recovered_after(formed, at)
        if after is None:
            found.flag(f"{kind.value} at {at:.3f}: no world formed after it trained again")
        elif kind is FaultKind.AGENT_LEAVE and before and after.world >= before[-1].world:
            found.flag(
                f"agent-leave at {at:.3f}: the world after it has {after.world} ranks, "
                f"no fewer than the {before[-1].world} before"
            )
    return found.result()


def check_params(formed: Sequence[Formation], *, steps: int) -> CheckResult:
    """``checked``: the last world's ranks, each of which must report the same hash at ``steps``."""
    found = Findings("ddp-params")
    if not formed:
        found.flag("no rank of the DDP job reported anything")
        return found.result()
    last = formed[-1]
    hashes: dict[int, str] = {}
    for rank in range(last.world):
        found.checked += 1
        p = last.processes.get(rank)
        if p is None:
            found.flag(f"rank {rank} of the last world (of {last.world}) never started")
        elif p.done_step != steps or p.param_sha256 is None:
            reached = p.last_step if p.last_step is not None else p.resumed
            found.flag(f"rank {rank} of the last world did not finish: it reached step {reached}")
        else:
            hashes[rank] = p.param_sha256
    if len(set(hashes.values())) > 1:
        listed = ", ".join(f"rank {r} {h[:12]}" for r, h in sorted(hashes.items()))
        found.flag(f"the ranks' parameters differ: {listed}")
    return found.result()
