"""A real DDP job under the chaos harness: one rank SIGKILLed, the group back, hashes equal.

Two torchrun agents (one rank each, gloo) train ``dtr.examples.train`` on
dtr's rendezvous against a real cluster of 3 replicas behind proxies. The
nemesis kills one rank's process; torchrun restarts the group through dtr's
rendezvous, and every rank must resume from the same complete checkpoint
(not from the start), finish every step and end with bit-identical
parameters. Every checker, the record's, the history's and the DDP job's
own, must pass. About 40 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtr.chaos.ddp_events import formations, processes, read_rank_events
from dtr.chaos.runner import RunResult, run_scenario
from dtr.chaos.scenario import FaultKind, Scenario, ScheduledFault

pytestmark = pytest.mark.integration

STEPS = 150


def failures(result: RunResult) -> dict[str, list[str]]:
    return {c.name: [v.message for v in c.violations] for c in result.checks if not c.ok}


def test_a_killed_rank_restarts_the_group_which_resumes_and_ends_bit_identical(
    tmp_path: Path,
) -> None:
    scenario = Scenario(
        "ddp-rank-kill",
        "one rank of a DDP job killed",
        faults=((FaultKind.RANK_KILL, 1.0),),
        duration_s=8.0,
        settle_s=90.0,
        workers=0,
        ddp_agents=2,
        ranks_per_agent=1,
        steps=STEPS,
        step_time_s=0.05,
    )
    plan = [ScheduledFault(3.0, FaultKind.RANK_KILL, 0.5)]
    result = run_scenario(scenario, seed=0, work_dir=tmp_path, plan=plan)

    assert result.passed, failures(result)
    checked = {c.name: c.checked for c in result.checks}
    assert checked["ddp-recovery"] == 1 and checked["ddp-params"] == 2
    assert checked["loads"] >= 4  # both ranks' first load and their load after the restart
    assert [(f.kind, f.outcome) for f in result.faults] == [(FaultKind.RANK_KILL, "healed")]
    assert all(o.exit_code == 0 and not o.killed for o in result.workers.values())

    formed = formations(processes(read_rank_events(tmp_path / "ddp")))
    assert len(formed) >= 2, "torchrun did not form the group again after the kill"
    last = formed[-1]
    assert last.world == 2
    assert last.resumed is not None and last.resumed > 0, "the group restarted from scratch"
    # torchrun counts a restart on the killed rank's agent; the other re-forms on the news
    assert max(p.restart for p in last.processes.values()) >= 1
    hashes = {p.param_sha256 for p in last.processes.values()}
    assert len(hashes) == 1 and None not in hashes
    assert {p.done_step for p in last.processes.values()} == {STEPS}
