"""The DDP fault benchmark's analysis (benchmarks/ddp_faults_report.py, _summary.py).

Built from event lines as ``examples/ddp/train.py --events`` writes them
(no torchrun, no cluster: the benchmark itself runs those). Each phase of a
rank failure must be the moment the last rank got there, processes must be
told apart by pid (ranks swap across a restart), an incarnation that never
trained counts as a restart, and a leader kill's step gaps and restarts
must come out of the same lines.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:  # the summary imports its sibling, the report
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


report = _load("ddp_faults_report")
summary = _load("ddp_faults_summary")
T0 = 1_800_000_000.0
KILL = T0 + 7.05


def line(event: str, t: float, rank: int, pid: int, restart: int = 0, **fields: Any) -> str:
    record = {"event": event, "t": t, "rank": rank, "world": 2, "pid": pid}
    record |= {"restart": restart, "round": None, **fields}
    return json.dumps(record)


def run(rank: int, pid: int, start: float, first_step: int, last_step: int) -> list[str]:
    """One process: start, joined 1 s later, resumed at first_step - 1, a step every 0.1 s."""
    out = [line("start", start, rank, pid), line("joined", start + 1.0, rank, pid, generation=1)]
    out.append(line("resumed", start + 2.0, rank, pid, step=first_step - 1, epoch=0))
    for i, step in enumerate(range(first_step, last_step + 1)):
        out.append(line("step", start + 2.1 + 0.1 * i, rank, pid, step=step, loss=1.0, epoch=0))
    return out


def before_kill() -> list[str]:
    # Steps 1..50 at T0 + 2.1 ... 7.0 on both ranks; the kill comes at 7.05.
    return run(0, 100, T0, 1, 50) + run(1, 101, T0, 1, 50)


def test_a_rank_failure_breaks_down_into_phases_ended_by_the_last_rank() -> None:
    # The new processes come back with the ranks swapped between them.
    after = run(1, 200, T0 + 9.0, 41, 60) + run(0, 201, T0 + 9.2, 41, 60)
    events = report.parse_lines(before_kill() + after + ["", '{"event": "st'])  # torn line
    b = report.rank_failure(events, KILL, world=2)
    assert b.restart_s == pytest.approx(9.2 - 7.05, abs=1e-3)
    assert b.rendezvous_s == pytest.approx(1.0, abs=1e-3)
    assert b.load_s == pytest.approx(1.0, abs=1e-3)
    # Step 50 again: the 10th step after resuming at 40, on the later process.
    assert b.replay_s == pytest.approx(0.1 + 0.9, abs=1e-3)
    assert b.back_s == pytest.approx(b.restart_s + b.rendezvous_s + b.load_s + b.replay_s, abs=2e-3)
    assert b.total_s == pytest.approx(9.2 + 2.1 - 7.05, abs=1e-3)  # step 41 of the later one
    assert (b.reached_step, b.resumed_step, b.incarnations) == (50, 40, 2)
    assert b.detect_s is None  # no agent logs given


def test_an_incarnation_that_never_trained_counts_in_restart() -> None:
    failed = [line("start", T0 + 8.0, r, 150 + r, restart=1) for r in (0, 1)]
    after = run(0, 300, T0 + 12.0, 41, 55) + run(1, 301, T0 + 12.0, 41, 55)
    events = report.parse_lines(before_kill() + failed + after)
    b = report.rank_failure(events, KILL, world=2)
    assert b.incarnations == 4
    assert b.restart_s == pytest.approx(12.0 - 7.05, abs=1e-3)
    assert b.max_restart_count == 0  # the final processes' TORCHELASTIC_RESTART_COUNT


def test_a_resume_at_the_reached_step_has_no_replay() -> None:
    after = run(0, 200, T0 + 9.0, 51, 55) + run(1, 201, T0 + 9.0, 51, 55)
    b = report.rank_failure(report.parse_lines(before_kill() + after), KILL, world=2)
    assert b.replay_s == 0.0
    assert b.resumed_step == 50


def test_a_group_that_never_trained_again_is_incomplete() -> None:
    after = [*run(0, 200, T0 + 9.0, 41, 60), line("start", T0 + 9.0, 1, 201)]
    with pytest.raises(report.IncompleteTrial, match="1 of 2 ranks trained again"):
        report.rank_failure(report.parse_lines(before_kill() + after), KILL, world=2)


def glog(t: float, text: str, level: str = "I") -> str:
    stamp = dt.datetime.fromtimestamp(t).strftime("%m%d %H:%M:%S.%f")
    return f"{level}{stamp} 4242 torch/distributed/elastic/agent/server/api.py:707] {text}"


def test_agent_logs_split_the_restart_at_the_backends_rendezvous() -> None:
    agent_a = [
        glog(T0 + 1.0, "[default] Rendezvous'ing worker group"),  # the first round: ignored
        glog(T0 + 7.2, "[default] Rendezvous'ing worker group"),
        "[rank0]: Traceback (most recent call last):",
        glog(T0 + 8.5, "[default] Rendezvous complete for workers. Result:"),
    ]
    agent_b = [
        glog(T0 + 7.9, "[default] Rendezvous'ing worker group"),
        glog(T0 + 8.4, "[default] Rendezvous complete for workers. Result:"),
        glog(T0 + 8.6, "failed (exitcode: -9)", level="E"),
    ]
    year = dt.datetime.fromtimestamp(T0).year
    marks = [report.parse_agent_log(log, year) for log in (agent_a, agent_b)]
    assert [k for _, k in marks[0]] == ["rendezvousing", "rendezvousing", "complete"]
    after = run(1, 200, T0 + 9.0, 41, 60) + run(0, 201, T0 + 9.2, 41, 60)
    b = report.rank_failure(report.parse_lines(before_kill() + after), KILL, 2, marks)
    assert b.detect_s == pytest.approx(7.9 - 7.05, abs=2e-3)
    assert b.agents_rendezvous_s == pytest.approx(8.5 - 7.9, abs=2e-3)
    assert b.spawn_s == pytest.approx(9.2 - 8.5, abs=2e-3)


def steady(pid: int, rank: int, times: list[float]) -> list[str]:
    return [line("start", T0, rank, pid)] + [
        line("step", t, rank, pid, step=i + 1) for i, t in enumerate(times)
    ]


def test_a_leader_kill_reports_the_longest_step_gap_around_it_and_no_restart() -> None:
    times = [T0 + 0.1 * i for i in range(1, 71)]  # up to 7.0, then a 2.5 s stall
    times += [T0 + 9.5 + 0.1 * i for i in range(40)]
    events = report.parse_lines(steady(100, 0, times) + steady(101, 1, times))
    k = report.leader_kill(events, KILL, window_s=8.0)
    assert k.restarts == 0
    assert k.longest_gap_s == pytest.approx(2.5, abs=1e-3)
    assert k.gap_before_s == pytest.approx(0.1, abs=1e-3)
    assert k.steps_after_kill == 80
    restarted = events + report.parse_lines([line("start", KILL + 1.0, 1, 102, restart=1)])
    assert report.leader_kill(restarted, KILL, window_s=8.0).restarts == 1


def test_a_gap_after_the_window_is_not_the_kills() -> None:
    times = [T0 + 0.1 * i for i in range(1, 200)] + [T0 + 40.0]  # a stall long after the kill
    k = report.leader_kill(report.parse_lines(steady(100, 0, times)), KILL, window_s=8.0)
    assert k.longest_gap_s == pytest.approx(0.1, abs=1e-3)


def rank_row(backend: str, total: float, ok: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": "rank failure", "backend": backend, "ok": ok}
    figures = {"total_s": total, "restart_s": total / 2, "agents_rendezvous_s": total / 4}
    return row | (figures if ok else {})


def leader_row(restarts: int, gap: float) -> dict[str, Any]:
    return {"kind": "leader kill", "backend": "dtr", "ok": True, "restarts": restarts} | {
        "longest_gap_s": gap
    }


def test_summary_takes_medians_and_judges_each_target() -> None:
    rows = [rank_row("dtr", t) for t in (6.0, 7.0, 9.0)] + [
        rank_row("c10d", t) for t in (6.0, 6.5, 30.0)
    ]
    rows += [leader_row(0, 0.2), leader_row(0, 3.9)]
    s = summary.summarize(rows, lease_ttl_s=3)
    assert s["rank_failure"]["dtr"]["total_s"] == 7.0
    assert s["rank_failure"]["c10d"]["restart_s"] == 3.25
    assert s["rank_failure"]["dtr"]["agents_rendezvous_s"] == 1.75  # the restart's split too
    targets = s["targets"]
    assert targets["total_ratio"]["value"] == pytest.approx(7.0 / 6.5, abs=1e-3)
    assert targets["total_ratio"]["verdict"] == "PASS"
    assert targets["leader_kill_restarts"]["verdict"] == "PASS"
    assert targets["leader_kill_longest_gap_s"]["verdict"] == "PASS"


def test_summary_fails_a_slow_ratio_a_failed_trial_a_restart_and_a_long_gap() -> None:
    slow = [rank_row("dtr", 9.0), rank_row("c10d", 6.0)]
    assert summary.summarize(slow, 3)["targets"]["total_ratio"]["verdict"] == "FAIL"
    failed = [rank_row("dtr", 6.0), rank_row("dtr", 0.0, ok=False), rank_row("c10d", 6.0)]
    target = summary.summarize(failed, 3)["targets"]["total_ratio"]
    assert (target["value"], target["failed_trials"], target["verdict"]) == (1.0, 1, "FAIL")
    leader = summary.summarize([leader_row(1, 0.2), leader_row(0, 4.2)], 3)["targets"]
    assert leader["leader_kill_restarts"]["verdict"] == "FAIL"
    assert leader["leader_kill_longest_gap_s"]["verdict"] == "FAIL"
    assert summary.summarize([], 3)["targets"]["total_ratio"]["verdict"] == "n/a"


def test_finished_requires_every_rank_done_with_one_hash() -> None:
    done = [line("done", T0, r, 100 + r, step=80, param_sha256="ab") for r in (0, 1)]
    assert report.finished(report.parse_lines(done), 2) == (2, True)
    other = [*done[:1], line("done", T0, 1, 101, step=80, param_sha256="cd")]
    assert report.finished(report.parse_lines(other), 2) == (2, False)
    assert report.finished(report.parse_lines(done[:1]), 2) == (1, False)
