"""The chaos run's HTML report, from hand-written histories: what the timeline shows, and where.

Lanes (``report_lanes``) and geometry (``report_timeline.Scale``) are pure,
so the picture is checked as data first and as markup second; the page is
parsed to show it is one document with an inline SVG and no script, and
that strings from a history stay text.
"""

from __future__ import annotations

import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dtr.chaos.checker_base import CheckResult, Violation
from dtr.chaos.history import Event, EventType, History, read_history
from dtr.chaos.measures import Failovers
from dtr.chaos.nemesis import FaultRecord
from dtr.chaos.report import render_report, replay_command, write_report
from dtr.chaos.report_lanes import (
    MAX_WORKER_LANES,
    Lane,
    Span,
    Timeline,
    build_timeline,
    natural_key,
    stack_rows,
)
from dtr.chaos.report_timeline import MIN_SPAN_PX, Scale, fit, render_svg, ticks
from dtr.chaos.runner import RunResult
from dtr.chaos.scenario import FaultKind, Scenario, ScheduledFault
from dtr.chaos.workers import WorkerOutcome

SCRIPT = "<script>alert(1)</script>"


def ev(
    time_s: float,
    process: str,
    type_: EventType,
    f: str,
    *,
    op: str | None = None,
    term: int | None = None,
    **value: Any,
) -> Event:
    return Event(time_s, process, type_, f, value, op, term=term)


def worker_steps(wid: str, start_s: float, end_s: float) -> list[Event]:
    """A training step every 0.1 s from ``start_s`` until ``end_s``."""
    steps = round((end_s - start_s) * 10)
    return [ev(start_s + i / 10, f"worker:{wid}", "ok", "train", step=i) for i in range(steps)]


def nem(time_s: float, type_: EventType, f: str, op: str, **value: Any) -> Event:
    return ev(time_s, "nemesis", type_, f, op=op, **value)


def faults() -> list[Event]:
    """A leader kill (term 1 -> 2), w0 killed and restarted, a partition skipped."""
    return [
        nem(4.0, "invoke", "kill", "nemesis#1", kind="leader-kill"),
        nem(4.0, "ok", "kill", "nemesis#1", term=1, kind="leader-kill", target="replica-0"),
        nem(7.0, "info", "kill", "nemesis#1", kind="leader-kill", healed=True),
        nem(8.0, "ok", "kill", "nemesis#2", kind="worker-kill", target="w0"),
        nem(9.0, "info", "kill", "nemesis#2", kind="worker-kill", target="w0"),
        nem(11.0, "invoke", "partition", "nemesis#3", kind="partition-worker"),
        nem(11.0, "fail", "partition", "nemesis#3", kind="partition-worker", error="x"),
    ]


def synthetic_history() -> list[Event]:
    """Two workers training through ``faults()``, with barriers, commits and status polls."""
    p0, p1 = "worker:w0", "worker:w1"
    events = [
        *faults(),
        ev(0.5, "harness", "ok", "status", latest_step=None),
        ev(0.5, "harness", "ok", "membership", generation=1, members=["w0", "w1"]),
        ev(1.0, p0, "ok", "write", term=1, replica="replica-0"),
        ev(1.2, p1, "ok", "write", term=1, replica="replica-0"),
        ev(2.0, "harness", "ok", "claim", replica="replica-0", term=1, is_leader=True),
        ev(2.0, "harness", "ok", "claim", replica="replica-1", term=1, is_leader=False),
        *worker_steps("w0", 1.5, 8.0),
        *worker_steps("w1", 1.5, 12.0),
        ev(2.5, p0, "ok", "barrier", op="b1", name="step-10", generation=1),
        ev(2.5, p1, "ok", "barrier", op="b2", name="step-10", generation=1),
        ev(2.6, p0, "ok", "save", op="s1", step=10),
        ev(2.7, p0, "ok", "commit", step=10, outcome="accepted", step_complete=False),
        ev(2.8, p1, "ok", "commit", step=10, outcome="accepted", step_complete=True),
        ev(3.0, "harness", "ok", "status", latest_step=10),
        ev(3.5, p0, "ok", "write", term=1, replica="replica-0"),
        ev(5.0, p1, "fail", "barrier", op="b3", name="step-20", error=f"Membership {SCRIPT}"),
        ev(6.0, p1, "ok", "write", term=2, replica="replica-1"),
        ev(6.5, "harness", "ok", "claim", replica="replica-1", term=2, is_leader=True),
        ev(8.5, "harness", "ok", "membership", generation=2, members=["w1"]),
        ev(9.5, p0, "ok", "load", op="l2", step=10),
        *worker_steps("w0", 9.6, 11.0),
        ev(10.0, "harness", "ok", "membership", generation=3, members=["w0", "w1"]),
        ev(11.5, "harness", "ok", "status", latest_step=20),
        ev(11.8, p1, "ok", "write", term=2, replica="replica-1"),
    ]
    return sorted(events, key=lambda e: e.time)


def result_dict() -> dict[str, Any]:
    failed = CheckResult(
        "barriers",
        False,
        4,
        (Violation(f"w1 released {SCRIPT} twice", (ev(5.0, "worker:w1", "ok", "barrier"),)),),
    )
    return {
        "scenario": "leader-crash-loop",
        "seed": 12,
        "passed": False,
        "duration_s": 10.0,
        "settle_s": 20.0,
        "steps": 500,
        "elapsed_s": 24.351,
        "work_dir": "/tmp/run",
        "schedule": [],
        "faults": [
            FaultRecord(FaultKind.LEADER_KILL, "healed", 4.0, "replica-0", 7.0).as_dict(),
            FaultRecord(FaultKind.PARTITION_WORKER, "skipped", 11.0, detail="x").as_dict(),
        ],
        "operations": {"barrier": {"ok": 2, "fail": 1}, "train": {"ok": 179}},
        "checks": [CheckResult("writes", True, 5, ()).as_dict(), failed.as_dict()],
        "failover": Failovers((2.0,), 0).as_dict(),
        "workers": {"w0": WorkerOutcome(1, 0, False, [-9, 0]).as_dict()},
    }


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser.tags


def lane(timeline: Timeline, name: str) -> Lane:
    return next(lane for lane in timeline.lanes if lane.name == name)


def test_the_report_is_one_page_with_an_inline_svg_and_nothing_fetched() -> None:
    page = render_report(result_dict(), synthetic_history())
    tags = parse(page)
    names = [tag for tag, _ in tags]
    assert page.startswith("<!DOCTYPE html>") and names.count("svg") >= 1
    assert "script" not in names and "link" not in names and "img" not in names
    assert not [a for _, attrs in tags for k, a in attrs.items() if k in ("src", "href")]
    assert '<span class="verdict failed">FAILED</span>' in page
    assert "dtr chaos run leader-crash-loop --seed 12 --duration 10" in page


def test_the_scale_maps_seconds_linearly_and_keeps_an_instant_visible() -> None:
    scale = Scale(20.0, left_px=100.0, width_px=1000.0)
    assert scale.extent(5.0, 10.0) == (350.0, 250.0)
    assert scale.extent(3.0, 3.0) == (250.0, MIN_SPAN_PX)
    assert scale.x(-1.0) == 100.0 and scale.x(30.0) == 1100.0


def test_ticks_are_round_seconds_covering_the_run() -> None:
    assert ticks(23.5) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]
    assert ticks(50.0) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert ticks(1.0)[:3] == [0, 0.1, 0.2] and len(ticks(1.0)) == 11
    assert len(ticks(7200.0)) <= 12 + 1


def test_a_fault_bar_runs_from_in_place_to_healed_with_its_kind_and_target() -> None:
    events = synthetic_history()
    timeline = build_timeline(events)
    bars = [s for s in lane(timeline, "faults").spans if s.key == "leader-kill"]
    assert [(b.start_s, b.end_s, b.label) for b in bars] == [(4.0, 7.0, "leader-kill replica-0")]
    x, width = Scale(timeline.end_s).extent(4.0, 7.0)
    rects = [a for tag, a in parse(render_svg(timeline)) if tag == "rect"]
    drawn = [a for a in rects if a.get("data-key") == "leader-kill"]
    assert [(a["x"], a["width"]) for a in drawn] == [(f"{x:.1f}", f"{width:.1f}")]
    assert ">leader-kill replica-0</text>" in render_svg(timeline)


def test_a_skipped_fault_is_a_hollow_mark_not_a_bar() -> None:
    faults = lane(build_timeline(synthetic_history()), "faults")
    assert [(m.style, m.label) for m in faults.marks] == [("skipped", "partition-worker")]
    assert "partition-worker" not in {s.key for s in faults.spans}


def test_each_term_is_a_segment_from_its_first_to_its_last_observation() -> None:
    events = synthetic_history()
    leader = lane(build_timeline(events), "leader")
    assert [(s.label, s.start_s, s.end_s) for s in leader.spans] == [
        ("term 1 · replica-0", 1.0, 3.5),
        ("term 2 · replica-1", 6.0, 11.8),
    ]
    page = render_report(result_dict(), events)
    assert "term 1 · replica-0" in page and "term 2 · replica-1" in page


def test_two_leaders_at_once_are_stacked_on_two_rows() -> None:
    spans = stack_rows([Span(0, 5, "term", "1"), Span(4, 8, "term", "2"), Span(6, 9, "term", "3")])
    assert [s.row for s in spans] == [0, 1, 0]


def test_a_worker_lane_splits_at_its_kill_and_marks_its_operations() -> None:
    timeline = build_timeline(synthetic_history())
    w0, w1 = lane(timeline, "w0"), lane(timeline, "w1")
    assert [(s.start_s, s.end_s) for s in w0.spans] == [(1.0, pytest.approx(7.9)), (9.5, 10.9)]
    assert {"barrier", "save", "commit", "killed"} <= {m.style for m in w0.marks}
    assert {"barrier-fail", "commit-complete"} <= {m.style for m in w1.marks}
    assert w0.density is not None and sum(w0.density.counts) == 65 + 14


def test_checkpoint_and_membership_changes_are_marked_once_each() -> None:
    timeline = build_timeline(synthetic_history())
    assert [m.label for m in lane(timeline, "checkpoints").marks] == ["step 10", "step 20"]
    assert [m.label for m in lane(timeline, "membership").marks] == [
        "gen 1 (2 members)",
        "gen 2 (1 member)",
        "gen 3 (2 members)",
    ]


def test_a_failed_check_shows_its_violation_escaped_and_highlighted() -> None:
    page = render_report(result_dict(), synthetic_history())
    assert SCRIPT not in page
    assert "w1 released &lt;script&gt;alert(1)&lt;/script&gt; twice" in page
    assert "Membership &lt;script&gt;" in page  # the history's strings, in the SVG's titles
    assert '<tr class="bad"><td>barriers</td>' in page
    assert '<tr><td>writes</td><td><span class="ok-mark">' in page


def test_labels_are_cut_to_their_room() -> None:
    assert fit("term 12 · replica-2", 1000) == "term 12 · replica-2"
    assert fit("term 12 · replica-2", 60) == "term 12…"
    assert fit("term 12 · replica-2", 12) == ""


def test_hundreds_of_workers_fold_past_the_cap_and_the_page_stays_small() -> None:
    events: list[Event] = [
        nem(5.0, "ok", "kill", "nemesis#1", kind="worker-kill", target="s0-250"),
        nem(6.0, "info", "kill", "nemesis#1", kind="worker-kill", target="s0-250"),
    ]
    for n in range(300):
        process = f"worker:s0-{n}"
        events += [ev(i * 0.1, process, "ok", "train", step=i) for i in range(190)]
        for i in range(5):
            events.append(ev(i * 4.0, process, "ok", "barrier", name=f"b{i}"))
            events.append(ev(i * 4.0 + 0.1, process, "ok", "commit", step=i, step_complete=i == 2))
    events.sort(key=lambda e: e.time)
    page = render_report(result_dict(), events)
    assert len(page.encode()) < 3_000_000
    names = [lane.name for lane in build_timeline(events).lanes]
    workers = names[2:-2]
    assert len(workers) == MAX_WORKER_LANES + 1
    assert workers[-1] == f"{300 - MAX_WORKER_LANES} more workers"
    assert "s0-250" in workers  # the one the nemesis hurt is never folded away
    assert workers[:3] == ["s0-0", "s0-1", "s0-2"]
    featured = [lane.name for lane in build_timeline(events, featured={"s0-299"}).lanes]
    assert "s0-299" in featured  # a run's real training worker is never folded away


def test_worker_ids_sort_by_their_numbers() -> None:
    assert sorted(["s0-17", "s0-2", "s1-0", "w10", "w9"], key=natural_key) == [
        "s0-2",
        "s0-17",
        "s1-0",
        "w9",
        "w10",
    ]


def test_the_replay_command_carries_the_seed_and_the_duration() -> None:
    assert replay_command({"scenario": "zombie-leader", "seed": 3, "duration_s": 12.5}) == (
        "dtr chaos run zombie-leader --seed 3 --duration 12.5"
    )


def run_result(work_dir: Path) -> RunResult:
    return RunResult(
        scenario=Scenario("probe", "a report test", ((FaultKind.LEADER_KILL, 1.0),)),
        seed=5,
        work_dir=work_dir,
        schedule=(ScheduledFault(1.0, FaultKind.LEADER_KILL, 3.0),),
        faults=(FaultRecord(FaultKind.LEADER_KILL, "healed", 4.0, "replica-0", 7.0),),
        operations={"train": {"ok": 3}},
        checks=(CheckResult("writes", True, 5, ()),),
        failovers=Failovers((2.0,), 0),
        workers={"w0": WorkerOutcome(exit_code=0, exit_codes=[0])},
        elapsed_s=12.0,
    )


def test_write_report_reads_the_run_history_and_replaces_the_page_atomically(
    tmp_path: Path,
) -> None:
    (tmp_path / "history").mkdir()
    with History(tmp_path / "history" / "w0.jsonl") as history:
        for event in synthetic_history():
            history.record(event)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("an older report")
    written = write_report(out / "report.html", run_result(tmp_path))
    assert written == out / "report.html" and os.listdir(out) == ["report.html"]
    assert written.stat().st_mode & 0o777 == 0o644  # readable by whoever it is shared with
    page = written.read_text(encoding="utf-8")
    assert "PASSED" in page and "term 2 · replica-1" in page


def test_a_failed_write_leaves_the_old_page_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "history").mkdir()
    (tmp_path / "report.html").write_text("an older report")

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path / "report.html", run_result(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["history", "report.html"]
    assert (tmp_path / "report.html").read_text() == "an older report"


#: An excerpt of a real run's history (leader-kill, seed 12): the schema as recorded.
RECORDED = """\
{"f": "run", "process": "harness", "time": 0.0, "type": "info", "value": {"scenario": "leader-kill", "seed": 12}}
{"f": "membership", "generation": 2, "process": "harness", "time": 1.85, "type": "ok", "value": {"generation": 2, "members": ["w0", "w1"]}}
{"f": "write", "generation": 2, "process": "worker:w0", "term": 2, "time": 2.7403852319985162, "type": "ok", "value": {"method": "HeartbeatStream", "replica": "replica-1"}}
{"f": "load", "op_id": "worker:w0#2", "process": "worker:w0", "time": 3.8363625409983797, "type": "ok", "value": {"step": null}}
{"f": "train", "process": "worker:w0", "time": 3.8649366089994146, "type": "ok", "value": {"loss": 1.4946, "step": 1}}
{"f": "train", "process": "worker:w0", "time": 3.8861495359997207, "type": "ok", "value": {"loss": 1.4164, "step": 2}}
{"f": "barrier", "op_id": "worker:w1#4", "process": "worker:w1", "time": 4.241348610998102, "type": "invoke", "value": {"generation": 2, "name": "step-20"}}
{"f": "commit", "generation": 2, "process": "worker:w1", "time": 4.252617394999106, "type": "ok", "value": {"latest_complete_step": null, "outcome": "accepted", "step": 20, "step_complete": false}}
{"f": "barrier", "op_id": "worker:w1#4", "process": "worker:w1", "time": 4.278456612999435, "type": "ok", "value": {"generation": 2, "name": "step-20"}}
{"f": "status", "op_id": "harness#7", "process": "harness", "time": 4.388413695000054, "type": "ok", "value": {"latest_step": 20}}
{"f": "kill", "op_id": "nemesis#1", "process": "nemesis", "time": 6.619222232999164, "type": "invoke", "value": {"kind": "leader-kill"}}
{"f": "kill", "op_id": "nemesis#1", "process": "nemesis", "term": 2, "time": 6.6369560370003455, "type": "ok", "value": {"kind": "leader-kill", "role": "leader", "target": "replica-1"}}
{"f": "write", "generation": 2, "process": "worker:w1", "term": 3, "time": 9.966758154998388, "type": "ok", "value": {"method": "HeartbeatStream", "replica": "replica-0"}}
{"f": "kill", "op_id": "nemesis#1", "process": "nemesis", "time": 10.15631549599857, "type": "info", "value": {"healed": true, "kind": "leader-kill", "role": "leader", "target": "replica-1"}}
{"f": "write", "generation": 2, "process": "worker:w0", "term": 4, "time": 15.653247833997739, "type": "ok", "value": {"method": "Barrier", "replica": "replica-2"}}
"""  # noqa: E501


def test_a_recorded_history_renders_every_lane(tmp_path: Path) -> None:
    (tmp_path / "h.jsonl").write_text(RECORDED)
    events = read_history([tmp_path / "h.jsonl"])
    timeline = build_timeline(events)
    assert [lane.name for lane in timeline.lanes] == [
        "faults",
        "leader",
        "w0",
        "w1",
        "checkpoints",
        "membership",
    ]
    leader = [s.label for s in lane(timeline, "leader").spans]
    assert leader == ["term 2 · replica-1", "term 3 · replica-0", "term 4 · replica-2"]
    assert "leader-kill replica-1" in render_report(result_dict(), events)


def test_a_fault_never_healed_runs_to_the_end_and_says_so() -> None:
    events = [
        nem(2.0, "ok", "pause", "nemesis#1", kind="zombie-leader", target="replica-0"),
        ev(9.0, "worker:w0", "ok", "train", step=1),
    ]
    timeline = build_timeline(events)
    [bar] = lane(timeline, "faults").spans
    assert (bar.style, bar.start_s, bar.end_s) == ("fault-unhealed", 2.0, 9.0)
    assert "never healed" in bar.title
    assert "fault never healed" in render_report(result_dict(), events)
