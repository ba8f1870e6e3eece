"""The demo's pure parts: its plan, its summary, the live view and the loss picture.

The demo itself runs end to end in ``tests/integration/test_demo.py``; these
check, on hand-written histories, that what it prints and draws is right.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dtr.chaos.checker_base import CheckResult, Violation
from dtr.chaos.demo import (
    LEADER_KILL_AT,
    WORKER_KILL_AT,
    demo_plan,
    demo_scenario,
    format_demo_summary,
    summarize,
)
from dtr.chaos.history import Event
from dtr.chaos.live_view import HistoryTail, LiveView, Snapshot, apply, render
from dtr.chaos.loss_plot import loss_curves, loss_svg
from dtr.chaos.measures import Failovers
from dtr.chaos.nemesis import FaultRecord
from dtr.chaos.runner import RunResult
from dtr.chaos.scenario import FaultKind
from dtr.chaos.workers import WorkerOutcome
from dtr.errors import InvalidArgument


def train(time: float, worker: str, step: int, loss: float) -> Event:
    return Event(time, f"worker:{worker}", "ok", "train", {"step": step, "loss": loss})


def test_the_plan_kills_the_leader_at_30_percent_and_a_worker_at_60() -> None:
    scenario = demo_scenario(workers=4, steps=1500)
    plan = demo_plan(scenario)
    assert [f.kind for f in plan] == [FaultKind.LEADER_KILL, FaultKind.WORKER_KILL]
    assert plan[0].at_s == pytest.approx(scenario.duration_s * LEADER_KILL_AT)
    assert plan[1].at_s == pytest.approx(scenario.duration_s * WORKER_KILL_AT)
    assert demo_plan(scenario, faults=False) == []


@pytest.mark.parametrize(("workers", "steps"), [(0, 100), (2, 10), (2, True)])
def test_counts_that_cannot_make_a_demo_are_refused(workers: int, steps: int) -> None:
    with pytest.raises(InvalidArgument, match="must be a whole number"):
        demo_scenario(workers, steps)


def result_with(events_ok: bool, tmp_path: Path) -> RunResult:
    scenario = demo_scenario(workers=2, steps=100)
    loads = CheckResult("loads", True, 2, ())
    if not events_ok:
        loads = CheckResult("loads", False, 2, (Violation("bad"),))
    checks = (CheckResult("writes", True, 5, ()), loads)
    return RunResult(
        scenario=scenario,
        seed=0,
        work_dir=tmp_path,
        schedule=tuple(demo_plan(scenario)),
        faults=(
            FaultRecord(FaultKind.LEADER_KILL, "healed", 1.2, "replica-1", 3.2),
            FaultRecord(FaultKind.WORKER_KILL, "healed", 2.4, "w1", 4.4),
        ),
        operations={},
        checks=checks,
        failovers=Failovers((3.4,), 0),
        workers={"w0": WorkerOutcome(exit_code=0), "w1": WorkerOutcome(restarts=1, exit_code=0)},
        elapsed_s=42.0,
    )


EVENTS = [
    Event(0.1, "worker:w0", "ok", "load", {"step": None}, "w0#1"),
    Event(0.1, "worker:w1", "ok", "load", {"step": None}, "w1#1"),
    train(1.0, "w0", 50, 1.2),
    train(1.0, "w1", 50, 1.3),
    Event(1.1, "worker:w0", "ok", "commit", {"step": 40, "step_complete": True}),
    Event(5.0, "worker:w1", "ok", "load", {"step": 40}, "w1#1"),
    train(9.0, "w0", 100, 0.2),
    train(9.5, "w1", 100, 0.4),
    Event(9.6, "worker:w1", "ok", "commit", {"step": 100, "step_complete": True}),
]


def test_the_summary_names_steps_the_failover_the_resume_point_and_the_loss(
    tmp_path: Path,
) -> None:
    summary = summarize(result_with(True, tmp_path), EVENTS)
    assert summary.ok and summary.finished
    assert [w.steps for w in summary.workers] == [100, 100]
    assert summary.workers[1].resumed_from == (40,)
    assert summary.failovers == (("leader-kill replica-1", 1.2, 3.4),)
    assert (summary.complete_checkpoints, summary.latest_step) == (2, 100)
    assert summary.final_loss == pytest.approx(0.3)
    text = format_demo_summary(summary, "loss.svg")
    assert text.startswith("== dtr demo: PASSED in 42 s ==")
    assert "w1            100/100         1  step 40          0.400" in text
    assert "failover: leader-kill replica-1 at t=1.2s, writes accepted again after 3.40 s" in text
    assert "every one of DESIGN §5 held" in text and "loss curve: loss.svg" in text


def test_a_failed_check_or_a_short_worker_fails_the_demo(tmp_path: Path) -> None:
    failed = summarize(result_with(False, tmp_path), EVENTS)
    assert not failed.ok and "invariants FAILED: loads" in format_demo_summary(failed)
    short = summarize(result_with(True, tmp_path), EVENTS[:-3])
    assert not short.finished and not short.ok
    assert "training did not finish" in format_demo_summary(short)


def test_the_live_view_follows_the_files_a_run_writes(tmp_path: Path) -> None:
    history = tmp_path / "history"
    history.mkdir()
    lines = [
        json.dumps(
            {"process": "worker:w0", "type": "ok", "f": "train", "value": {"step": 7, "loss": 0.5}}
        ),
        json.dumps(
            {
                "process": "harness",
                "type": "ok",
                "f": "claim",
                "value": {"replica": "replica-2", "is_leader": True, "term": 9},
            }
        ),
        json.dumps(
            {
                "process": "harness",
                "type": "ok",
                "f": "membership",
                "value": {"generation": 3, "members": ["w0"]},
            }
        ),
        json.dumps(
            {
                "process": "nemesis",
                "type": "ok",
                "f": "kill",
                "value": {"kind": "worker-kill", "target": "w1"},
            }
        ),
    ]
    (history / "a.jsonl").write_text("\n".join(lines) + "\n" + '{"torn": ')
    tail = HistoryTail(history)
    snapshot = Snapshot()
    for event in tail.new_events():
        apply(snapshot, event)
    assert tail.new_events() == []  # nothing new, and the torn line waits for its end
    block = render(snapshot, steps=14, elapsed_s=3.0)
    assert block[0] == "t=  3.0s  leader replica-2 (term 9)  generation 3"
    assert block[1].startswith("  w0   [###############---------------]      7/14 loss 0.500")
    assert block[2].endswith("DOWN (restarting)")


def test_a_live_view_off_a_terminal_prints_plain_lines_and_a_final_block(tmp_path: Path) -> None:
    out = io.StringIO()
    view = LiveView(tmp_path, steps=10, out=out, interactive=False)
    view.start()
    view.say("cluster: up")
    view.stop()
    text = out.getvalue()
    assert "cluster: up\n" in text and "\x1b[" not in text
    assert text.rstrip().splitlines()[-1].startswith("t=")


def test_the_loss_picture_draws_a_line_per_worker_and_marks_each_fault() -> None:
    faults = [FaultRecord(FaultKind.LEADER_KILL, "healed", 3.0, "replica-<1>", 5.0)]
    svg = loss_svg(EVENTS, faults, "demo & test")
    root = ET.fromstring(svg)  # well-formed, every string escaped
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 2
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "leader-kill replica-<1>" in texts and "demo & test" in texts
    curves = loss_curves(EVENTS)
    assert [loss for _, loss in curves["w0"]] == [1.2, 0.2]
