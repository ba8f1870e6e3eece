"""The DDP demo's pure parts, on recorded event lines: plan, summary, checks, live view.

The events are the lines ``examples/ddp/train.py`` writes (``--events DIR``),
here for a story of 3 worlds: 4 ranks from step 0; rank 1 killed at step 62
and the group back from step 50; one agent gone at step 140 and 2 ranks back
from step 125, training to 200 with one parameter hash. The demo itself runs
end to end in ``tests/chaos/test_ddp_rank_kill.py`` (one rank kill) and by hand.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from dtr.chaos.checker_base import CheckResult, Violation
from dtr.chaos.checker_ddp import check_ddp
from dtr.chaos.ddp_events import (
    RankEvent,
    formations,
    parse_line,
    processes,
    rank_worker_id,
    read_rank_events,
    to_history,
)
from dtr.chaos.demo_ddp import (
    AGENT_LEAVE_AT,
    LEADER_AFTER_LEAVE_S,
    LEADER_KILL_AT,
    RANK_KILL_AT,
    ddp_demo_plan,
    ddp_demo_scenario,
    format_ddp_summary,
    loss_events,
    new_leader_after,
    sparkline,
    summarize_ddp,
)
from dtr.chaos.history import Event
from dtr.chaos.live_view_ddp import DdpLiveView, DdpSnapshot, apply_fault, apply_rank, render_ddp
from dtr.chaos.loss_plot import loss_svg
from dtr.chaos.measures import Failovers
from dtr.chaos.nemesis import FaultRecord
from dtr.chaos.runner import RunResult
from dtr.chaos.scenario import FaultKind
from dtr.chaos.workers import WorkerOutcome
from dtr.errors import InvalidArgument

ZERO = 1_700_000_000.0  # the wall clock at the run's zero
SHA = "ab" * 32
STEP_S = 0.1


def line(event: str, t: float, rank: int, world: int, *, pid: int, rnd: int, **fields: Any) -> str:
    record = {
        "event": event,
        "t": ZERO + t,
        "rank": rank,
        "world": world,
        "pid": pid,
        "restart": rnd,
        "round": str(rnd),
        **fields,
    }
    return json.dumps(record)


def world_lines(
    world: int, rnd: int, start: float, resumed: int, last: int, *, done: str | None = None
) -> list[str]:
    """One world: every rank starts, joins, resumes, trains ``resumed+1..last``, maybe done."""
    lines = []
    for rank in range(world):
        pid = 1000 * (rnd + 1) + rank
        lines.append(line("start", start, rank, world, pid=pid, rnd=rnd))
        lines.append(line("joined", start + 4, rank, world, pid=pid, rnd=rnd, generation=rnd + 1))
        lines.append(
            line("resumed", start + 5, rank, world, pid=pid, rnd=rnd, step=resumed, epoch=0)
        )
        for i, step in enumerate(range(resumed + 1, last + 1)):
            loss = round(2.0 / step, 4)
            at = start + 6 + i * STEP_S
            lines.append(
                line("step", at, rank, world, pid=pid, rnd=rnd, step=step, loss=loss, epoch=0)
            )
        if done is not None:
            end = start + 6 + (last - resumed) * STEP_S
            lines.append(
                line("done", end, rank, world, pid=pid, rnd=rnd, step=last, param_sha256=done)
            )
    return lines


# round 0 trains 1..62 from t=0 (steps at 6.0 .. 12.1); rank 1 is killed at 12.2;
# round 1 starts at 15.0 from step 50 and trains to 140 (steps at 21.0 .. 29.9); one
# agent leaves at 30.0; round 2 (2 ranks) starts at 40.0 from step 125 to 200.
STORY = [
    *world_lines(4, 0, 0.0, 0, 62),
    *world_lines(4, 1, 15.0, 50, 140),
    *world_lines(2, 2, 40.0, 125, 200, done=SHA),
]
RANK_KILL_S, LEAVE_S, LEADER_S = 12.2, 30.0, 31.0
FAULTS = (
    FaultRecord(FaultKind.RANK_KILL, "healed", RANK_KILL_S, "rank 1", RANK_KILL_S + 0.5),
    FaultRecord(FaultKind.LEADER_KILL, "healed", 25.0, "replica-0", 27.0),
    FaultRecord(FaultKind.AGENT_LEAVE, "healed", LEAVE_S, "a1 (ranks 2, 3)", LEAVE_S + 0.5),
    FaultRecord(FaultKind.LEADER_KILL, "healed", LEADER_S, "replica-1", 33.0),
)


def events_of(lines: list[str]) -> list[RankEvent]:
    parsed = [parse_line(text) for text in lines]
    assert None not in parsed
    return sorted((e for e in parsed if e is not None), key=lambda e: e.t)


def claim(time: float, replica: str, term: int) -> Event:
    value = {"replica": replica, "is_leader": True, "term": term}
    return Event(time, "harness", "ok", "claim", value)


HISTORY = [claim(1.0, "replica-0", 2), claim(28.3, "replica-1", 3), claim(34.5, "replica-2", 4)]


def result_with(tmp_path: Path, *, checks_ok: bool = True) -> RunResult:
    scenario = ddp_demo_scenario(200, 0.1)
    checks = (CheckResult("record-fencing", True, 10, ()),)
    if not checks_ok:
        checks = (*checks, CheckResult("ddp-resume", False, 3, (Violation("bad"),)))
    return RunResult(
        scenario=scenario,
        seed=0,
        work_dir=tmp_path,
        schedule=tuple(ddp_demo_plan(scenario)),
        faults=FAULTS,
        operations={},
        checks=checks,
        failovers=Failovers((), 0),
        workers={"a0": WorkerOutcome(exit_code=0), "a1": WorkerOutcome(exit_code=1, killed=True)},
        elapsed_s=95.0,
    )


def test_the_plan_kills_a_rank_the_leader_an_agent_then_the_leader_inside_that_rendezvous() -> None:
    scenario = ddp_demo_scenario(500, 0.1)
    assert (scenario.ddp_agents, scenario.ranks_per_agent, scenario.workers) == (2, 2, 0)
    plan = ddp_demo_plan(scenario)
    assert [f.kind for f in plan] == [
        FaultKind.RANK_KILL,
        FaultKind.LEADER_KILL,
        FaultKind.AGENT_LEAVE,
        FaultKind.LEADER_KILL,
    ]
    fractions = [RANK_KILL_AT, LEADER_KILL_AT, AGENT_LEAVE_AT]
    assert [f.at_s for f in plan[:3]] == [pytest.approx(50.0 * x) for x in fractions]
    assert plan[3].at_s == pytest.approx(plan[2].at_s + LEADER_AFTER_LEAVE_S)
    assert ddp_demo_plan(scenario, faults=False) == []


@pytest.mark.parametrize(
    ("steps", "step_time", "message"),
    [(10, 0.1, "--steps must be a whole number >= 40"), (100, 20.0, "--step-time must be")],
)
def test_a_demo_that_cannot_run_is_refused(steps: int, step_time: float, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ddp_demo_scenario(steps, step_time)


def test_the_events_group_into_the_worlds_torchrun_formed() -> None:
    formed = formations(processes(events_of(STORY)))
    assert [(f.world, f.round, f.resumed) for f in formed] == [
        (4, "0", 0),
        (4, "1", 50),
        (2, "2", 125),
    ]
    assert formed[1].stepping_at == pytest.approx(ZERO + 21.0)
    assert {p.param_sha256 for p in formed[2].processes.values()} == {SHA}


def test_without_a_round_a_world_begins_when_a_rank_starts_again() -> None:
    no_round = [json.dumps({**json.loads(text), "round": None}) for text in STORY]
    formed = formations(processes(events_of(no_round)))
    assert [(f.world, f.resumed) for f in formed] == [(4, 0), (4, 50), (2, 125)]


def test_a_torn_last_line_is_skipped_and_the_rest_read(tmp_path: Path) -> None:
    (tmp_path / "rank-0.jsonl").write_text("\n".join(STORY[:5]) + "\n" + STORY[5][:20])
    (tmp_path / "zero.json").write_text("{}")  # not a rank's file: not read
    events = read_rank_events(tmp_path)
    assert [e.event for e in events] == ["start", "joined", "resumed", "step", "step"]
    assert parse_line('{"event": "step"}') is None


def test_the_ranks_become_load_and_train_events_on_the_runs_clock() -> None:
    history = to_history(events_of(world_lines(1, 3, 2.0, 0, 2)), ZERO)
    worker = f"worker:{rank_worker_id(0)}"
    assert [(e.time, e.process, e.type, e.f, e.value) for e in history] == [
        (pytest.approx(6.0), worker, "invoke", "load", {}),
        (pytest.approx(7.0), worker, "ok", "load", {"step": None}),
        (pytest.approx(8.0), worker, "ok", "train", {"step": 1, "loss": 2.0}),
        (pytest.approx(8.1), worker, "ok", "train", {"step": 2, "loss": 1.0}),
    ]
    assert history[0].op_id == history[1].op_id
    assert rank_worker_id(3, "gpu node_1") == "gpu-node_1-rank3"


def test_the_summary_shows_the_curve_each_faults_cost_and_one_hash_per_rank(
    tmp_path: Path,
) -> None:
    summary = summarize_ddp(result_with(tmp_path), events_of(STORY), HISTORY, ZERO)
    assert summary.ok and summary.finished and summary.identical
    assert (summary.worlds, summary.final_world, summary.final_step) == (3, 2, 200)
    assert summary.losses[0] == (1, 2.0) and summary.losses[-1] == (200, 0.01)
    rank_kill, leader, leave, leader_in_rdzv = summary.faults
    assert rank_kill.cost_s == pytest.approx(21.0 - RANK_KILL_S)
    assert "a world of 4 resumed from step 50; 12 steps trained again" in rank_kill.detail
    assert "longest step gap" in leader.detail and "new leader after 3.3 s" in leader.detail
    assert leave.cost_s == pytest.approx(46.0 - LEAVE_S)
    assert "a world of 2 resumed from step 125; 15 steps trained again" in leave.detail
    assert "during the re-rendezvous after agent-leave" in leader_in_rdzv.detail
    assert "the world formed 9.0 s later" in leader_in_rdzv.detail

    text = format_ddp_summary(summary, "loss.svg")
    assert text.startswith("== dtr demo: PASSED in 95 s ==")
    assert "3 worlds formed, the last of 2 ranks" in text
    assert "t=  12.2s  rank-kill rank 1: training again after 8.8 s" in text
    assert "agents: a0 exit 0, a1 left the job" in text
    assert f"  rank 0  {SHA}\n  rank 1  {SHA}\n" in text
    assert "every rank's parameters are bit-identical" in text
    assert "loss (rank 0, by step): 2.000 █" in text and text.endswith("loss curve: loss.svg")


def test_different_hashes_a_short_run_or_a_failed_check_fail_the_demo(tmp_path: Path) -> None:
    differ = [*STORY[:-1], STORY[-1].replace(SHA, "cd" * 32)]
    summary = summarize_ddp(result_with(tmp_path), events_of(differ), HISTORY, ZERO)
    assert summary.finished and not summary.identical and not summary.ok
    assert "the ranks' parameters are NOT identical" in format_ddp_summary(summary)

    short = [text for text in STORY if '"done"' not in text]
    summary = summarize_ddp(result_with(tmp_path), events_of(short), HISTORY, ZERO)
    assert not summary.finished and not summary.ok
    assert "none (did not finish)" in format_ddp_summary(summary)

    failed = summarize_ddp(result_with(tmp_path, checks_ok=False), events_of(STORY), [], ZERO)
    assert not failed.ok and "invariants FAILED: ddp-resume" in format_ddp_summary(failed)


def wall_faults() -> list[tuple[FaultKind, float]]:
    return [(f.kind, f.started_s + ZERO) for f in FAULTS]


def test_the_ddp_checks_pass_on_the_story() -> None:
    results = check_ddp(events_of(STORY), wall_faults(), steps=200)
    assert [(r.name, r.ok) for r in results] == [
        ("ddp-resume", True),
        ("ddp-recovery", True),
        ("ddp-params", True),
    ]
    assert [r.checked for r in results] == [3 + 10, 2, 2]


def test_ranks_that_disagree_or_skip_a_step_fail_the_resume_check() -> None:
    disagree = [
        text.replace('"step": 125,', '"step": 100,')
        if "resumed" in text and '"rank": 1' in text and '"round": "2"' in text
        else text
        for text in STORY
    ]
    result = check_ddp(events_of(disagree), wall_faults(), steps=200)[0]
    assert [v.message for v in result.violations] == [
        "world 2 (of 2) resumed from different steps: {0: 125, 1: 100}",
        "rank 1 (pid 3001) trained step 126 where 101 was next (it resumed from 100)",
    ]
    skip = [text for text in STORY if not ('"step": 70,' in text and '"rank": 2' in text)]
    result = check_ddp(events_of(skip), wall_faults(), steps=200)[0]
    assert [v.message for v in result.violations] == [
        "rank 2 (pid 2002) trained step 71 where 70 was next (it resumed from 50)"
    ]


def test_a_fault_the_job_never_recovered_from_fails_the_recovery_check() -> None:
    late = [*wall_faults(), (FaultKind.RANK_KILL, ZERO + 60.0)]
    result = check_ddp(events_of(STORY), late, steps=200)[1]
    assert [v.message for v in result.violations] == [
        f"rank-kill at {ZERO + 60.0:.3f}: no world formed after it trained again"
    ]
    same_size = [*world_lines(4, 0, 0.0, 0, 62), *world_lines(4, 1, 15.0, 50, 200, done=SHA)]
    left = [(FaultKind.AGENT_LEAVE, ZERO + RANK_KILL_S)]
    result = check_ddp(events_of(same_size), left, steps=200)[1]
    assert "no fewer than the 4 before" in result.violations[0].message


def test_unfinished_or_different_parameters_fail_the_params_check() -> None:
    differ = [*STORY[:-1], STORY[-1].replace(SHA, "cd" * 32)]
    result = check_ddp(events_of(differ), [], steps=200)[2]
    assert [v.message for v in result.violations] == [
        f"the ranks' parameters differ: rank 0 {SHA[:12]}, rank 1 {'cd' * 6}"
    ]
    result = check_ddp(events_of(STORY), [], steps=300)[2]
    assert "did not finish: it reached step 200" in result.violations[0].message


def test_a_new_leader_is_the_first_claim_at_a_newer_term() -> None:
    assert new_leader_after(HISTORY, 25.0) == pytest.approx(3.3)
    assert new_leader_after(HISTORY, 40.0) is None


def test_the_sparkline_falls_with_the_loss() -> None:
    line = sparkline([(step, 10.0 - step) for step in range(1, 9)], width=8)
    assert line == "9.000 █▇▆▅▄▃▂▁ 2.000 (steps 1-8)"
    assert sparkline([]) == "no step trained"


def test_the_picture_draws_rank_0s_loss_and_marks_the_faults() -> None:
    curve = loss_events(processes(events_of(STORY)), ZERO)
    assert {e.process for e in curve} == {"worker:rank 0"}
    root = ET.fromstring(loss_svg(curve, FAULTS, "ddp"))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 1
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "agent-leave a1 (ranks 2, 3)" in texts and "rank-kill rank 1" in texts


def test_the_live_view_shows_the_jobs_step_its_world_each_rank_and_the_faults() -> None:
    snapshot = DdpSnapshot()
    for text in world_lines(4, 0, 0.0, 0, 20):
        apply_rank(snapshot, json.loads(text))
    value: dict[str, Any] = {"kind": "rank-kill", "target": "rank 1", "rank": 1}
    apply_fault(snapshot, {"process": "nemesis", "type": "ok", "time": 12.2, "value": value})
    block = render_ddp(snapshot, 200, 13.0, leader="replica-0", term=2, generation=3)
    assert block == [
        "t= 13.0s  leader replica-0 (term 2)  generation 3  world 4",
        "  job   [###---------------------------]     20/200  loss 0.100",
        "  ranks 0:20  1:restarting  2:20  3:20",
        "  fault t=12.2s rank-kill rank 1",
    ]
    leave: dict[str, Any] = {"kind": "agent-leave", "target": "a1", "ranks": [2, 3]}
    apply_fault(snapshot, {"process": "nemesis", "type": "ok", "time": 30.0, "value": leave})
    for text in world_lines(2, 2, 40.0, 125, 126):
        apply_rank(snapshot, json.loads(text))
    block = render_ddp(snapshot, 200, 50.0)
    assert block[0].endswith("world 2") and block[2] == "  ranks 0:126  1:126  2:left  3:left"


def test_the_live_view_reads_the_files_a_run_writes(tmp_path: Path) -> None:
    (tmp_path / "ddp").mkdir()
    (tmp_path / "ddp" / "rank-0.jsonl").write_text("\n".join(world_lines(1, 0, 0, 0, 3)) + "\n")
    out = io.StringIO()
    view = DdpLiveView(tmp_path, steps=10, out=out, interactive=False)
    view.start()
    view.stop()
    last = out.getvalue().rstrip().splitlines()
    assert last[-2:] == [
        "  job   [#########---------------------]      3/10  loss 0.667",
        "  ranks 0:3",
    ]


def test_the_command_refuses_workers_for_the_ddp_job_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dtr.cli import main

    assert main(["demo", "--workload", "ddp", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "dtr demo: error: --workers is for --workload independent; the DDP job is 2 torchrun "
        "agents x 2 ranks\n"
    )
