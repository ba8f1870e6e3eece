"""What a chaos run reports, from hand-written histories: failover, counts, the summary.

The numbers a run prints are pure functions of its history, so they are
checked here on small histories whose answers are known, without processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dtr.chaos.checker_base import CheckResult, Violation
from dtr.chaos.history import Event, EventType
from dtr.chaos.measures import failover_times, operation_counts, settle_time
from dtr.chaos.nemesis import FaultRecord
from dtr.chaos.runner import RunResult, check_workers
from dtr.chaos.scenario import FaultKind, ScheduledFault
from dtr.chaos.scenario_files import get_scenario
from dtr.chaos.summary import format_scenarios, format_summary
from dtr.chaos.workers import WorkerOutcome


def write(time: float, term: int, process: str = "worker:w0") -> Event:
    return Event(time, process, "ok", "write", {"replica": "r"}, term=term)


def nemesis(time: float, kind: EventType, f: str, term: int | None = None, **value: Any) -> Event:
    return Event(time, "nemesis", kind, f, value, "nemesis#1", term=term)


def test_failover_is_the_time_from_a_leader_kill_to_the_first_write_at_a_newer_term() -> None:
    events = [
        write(1.0, 3),
        nemesis(2.0, "ok", "kill", term=3, role="leader"),
        write(3.0, 3),  # an old-term write still answered: the leader is not back yet
        write(6.5, 4),
        write(7.0, 4),
    ]
    failovers = failover_times(events)
    assert failovers.times_s == (4.5,)
    assert failovers.p50_s == 4.5 and failovers.max_s == 4.5
    assert failovers.unmeasured == 0


def test_a_follower_kill_or_a_partition_is_not_a_failover() -> None:
    events = [
        write(1.0, 3),
        nemesis(2.0, "ok", "kill", role="follower"),
        nemesis(3.0, "ok", "partition", target="w0"),
        write(4.0, 4),
    ]
    assert failover_times(events).times_s == ()


def test_a_leader_fault_with_no_newer_write_after_it_is_counted_unmeasured() -> None:
    events = [write(1.0, 5), nemesis(2.0, "ok", "pause", role="leader"), write(3.0, 5)]
    failovers = failover_times(events)
    assert failovers.times_s == () and failovers.unmeasured == 1
    assert failovers.p50_s is None


def test_a_leader_cut_off_from_etcd_is_a_failover() -> None:
    events = [write(1.0, 3), nemesis(2.0, "ok", "partition", term=3, role="leader"), write(5.0, 4)]
    assert failover_times(events).times_s == (3.0,)


def test_a_leader_keeping_its_term_through_a_short_cut_is_back_at_its_first_write_after_heal() -> (
    None
):
    events = [
        write(1.0, 3),
        nemesis(2.0, "ok", "partition", term=3, role="leader"),
        write(2.1, 3),  # answered before the cut took hold: not a recovery
        nemesis(4.0, "info", "partition", healed=True),
        write(4.5, 3),
        write(9.0, 5),
    ]
    assert failover_times(events).times_s == (2.5,)


def train(time: float, worker: str) -> Event:
    return Event(time, f"worker:{worker}", "ok", "train", {"step": 1})


def test_settling_ends_when_the_slowest_worker_still_training_trains_again() -> None:
    events = [
        train(1.0, "a"),
        nemesis(2.0, "info", "kill", healed=True),
        nemesis(5.0, "info", "partition", healed=True),  # the last heal
        train(4.0, "done"),  # finished before the last heal: not waiting for anything
        train(5.5, "a"),
        train(7.25, "b"),
        train(8.0, "a"),
    ]
    assert settle_time(sorted(events, key=lambda e: e.time)) == 2.25
    assert settle_time([train(1.0, "a")]) is None  # nothing healed


def test_operations_are_counted_by_outcome_without_the_nemesis_or_the_run_notes() -> None:
    events = [
        Event(0.0, "harness", "info", "run", {"seed": 1}),
        Event(1.0, "worker:w0", "invoke", "barrier", {"name": "b"}, "w0#1"),
        Event(2.0, "worker:w0", "ok", "barrier", {"name": "b"}, "w0#1"),
        Event(3.0, "worker:w1", "invoke", "barrier", {"name": "b"}, "w1#1"),
        Event(4.0, "worker:w0", "ok", "train", {"step": 1}),
        nemesis(5.0, "invoke", "kill"),
    ]
    assert operation_counts(events) == {
        "barrier": {"ok": 1, "unknown": 1},
        "train": {"ok": 1},
    }


def test_a_worker_that_failed_on_its_own_fails_the_workers_check() -> None:
    killed_then_fine = WorkerOutcome(restarts=1, exit_code=0, exit_codes=[-9, 0])
    crashed = WorkerOutcome(exit_code=1, exit_codes=[1])
    stopped = WorkerOutcome(exit_code=-9, stopped=True, exit_codes=[-9])
    result = check_workers({"w0": killed_then_fine, "w1": crashed, "w2": stopped})
    assert not result.ok
    assert [v.message for v in result.violations] == ["worker w1 exited with code 1"]
    assert check_workers({"w0": killed_then_fine, "w2": stopped}).ok


def test_the_summary_shows_faults_each_invariant_and_the_first_violations() -> None:
    failed = CheckResult(
        "barriers", False, 9, tuple(Violation(f"violation {i}") for i in range(5)), left_off=2
    )
    result = RunResult(
        scenario=get_scenario("leader-crash-loop"),
        seed=7,
        work_dir=Path("/tmp/run"),
        schedule=(ScheduledFault(1.0, FaultKind.LEADER_KILL, 3.0),),
        faults=(FaultRecord(FaultKind.LEADER_KILL, "healed", 5.0, "replica-1", 8.0),),
        operations={"train": {"ok": 10}},
        checks=(CheckResult("writes", True, 4, ()), failed),
        failovers=failover_times([write(1, 1), nemesis(5.0, "ok", "kill", role="leader")]),
        workers={"w0": WorkerOutcome(exit_code=0, exit_codes=[0])},
        elapsed_s=30.0,
    )
    text = format_summary(result)
    assert "seed 7" in text.splitlines()[0]
    assert "faults: 1 injected, 1 healed, 0 skipped (of 1 scheduled)" in text
    assert "leader-kill replica-1  healed (3.0 s)" in text
    assert "PASS  writes" in text and "FAIL  barriers" in text
    assert "violation 2" in text and "violation 3" not in text
    assert "... and 4 more" in text
    assert "none measured (1 without a later write)" in text
    assert text.splitlines()[-1].startswith("result: FAIL")
    assert not result.passed and result.as_dict()["seed"] == 7


def test_the_scenario_listing_names_each_scenario_and_its_faults() -> None:
    text = format_scenarios([get_scenario("mixed-soak")])
    assert text.startswith("mixed-soak\n")
    assert "leader-kill x2" in text and "default seed 2026" in text
