"""``record-deaths`` and ``slow-etcd-leadership`` on hand-made records, histories and logs."""

from __future__ import annotations

from pathlib import Path

from record_support import KEYS, LEADER, Record, joined, member

from dtr.chaos.checker_deaths import check_deaths
from dtr.chaos.checker_slow_etcd import StepDown, Window, check_slow_etcd, fault_windows, step_downs
from dtr.chaos.history import Event


def test_a_killed_member_still_alive_at_the_end_is_flagged() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["s0-0", "s0-1", "w0"], 1)
    record.leader_txn(term, member("s0-0", 1, alive=False), (KEYS.generation, 2))
    result = check_deaths(record.events, KEYS, ["s0-0", "s0-1"])
    assert not result.ok and result.checked == 2
    assert (
        "1 of 2 worker(s) killed for good were still live members" in result.violations[0].message
    )
    assert "s0-1" in result.violations[0].message


def test_killed_members_declared_dead_pass_and_no_rack_checks_nothing() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["s0-0", "w0"], 1)
    record.leader_txn(term, member("s0-0", 1, alive=False), (KEYS.generation, 2))
    assert check_deaths(record.events, KEYS, ["s0-0"]).ok
    nothing = check_deaths(record.events, KEYS, [])
    assert nothing.ok and nothing.checked == 0


def slow(start: float, end: float, delay_s: float) -> Window:
    return Window("etcd-slow", start, end, delay_s)


def test_a_step_down_inside_a_slow_etcd_within_budget_is_flagged() -> None:
    downs = [StepDown("replica-0", 11.0, "could not renew the lease within the renew deadline")]
    result = check_slow_etcd([slow(10.0, 12.0, 0.3)], downs)
    assert not result.ok
    assert "1 step-down(s) during etcd-slow t=10.0-12.0s (round trip 0.600 s" in (
        result.violations[0].message
    )


def test_step_downs_outside_the_budget_or_explained_by_another_fault_pass() -> None:
    downs = [StepDown("replica-0", 11.0, "deadline"), StepDown("replica-1", 21.0, "fenced")]
    beyond = slow(10.0, 12.0, 0.8)  # 1.6 s round trips: beyond the keep-alive budget
    paused = Window("zombie-leader", 19.0, 20.0, None)
    assert check_slow_etcd([beyond, slow(20.0, 22.0, 0.2), paused], downs).ok
    assert check_slow_etcd([slow(20.0, 22.0, 0.2)], downs[:1]).ok  # before the fault


def test_windows_and_step_downs_are_read_from_the_history_and_the_log(tmp_path: Path) -> None:
    value = {"kind": "etcd-slow", "delay_s": 0.2}
    events = [
        Event(5.0, "nemesis", "invoke", "delay", {"kind": "etcd-slow"}, "nemesis#1"),
        Event(5.1, "nemesis", "ok", "delay", value, "nemesis#1"),
        Event(7.1, "nemesis", "info", "delay", {**value, "healed": True}, "nemesis#1"),
        Event(8.0, "nemesis", "ok", "kill", {"kind": "leader-kill"}, "nemesis#2"),
    ]
    windows = fault_windows(events)
    assert windows[0] == Window("etcd-slow", 5.1, 7.1, 0.2)
    assert windows[1].kind == "leader-kill" and windows[1].end == float("inf")
    log = tmp_path / "replica-0.log"
    log.write_text(
        "2026-12-05 06:56:37,636 WARNING [term 2] dtr.coordinator.election: term 2: "
        "stepping down: could not renew the lease within the renew deadline\n"
        "2026-12-05 06:56:38,000 INFO [term 2] dtr.coordinator: something else\n"
    )
    zero = step_downs(log, 0.0)[0].at - 1.5  # the run started 1.5 s before the line
    (found,) = step_downs(log, zero)
    assert found.replica == "replica-0" and abs(found.at - 1.5) < 1e-6
    assert found.reason == "could not renew the lease within the renew deadline"
