"""Planted bugs the harness must find (issue 16 item 3): one short run per mutant.

Each test runs the cheapest scenario known to catch one mutant of
``dtr.mutants`` (every replica and worker of the run carries it) with a fixed
fault plan, and asserts that the checker named in docs/chaos.md's mutant
table fails, with the violation it names. A mutant no checker sees is a hole
in the harness: every mutant of ``dtr.mutants`` has its test here.

Plans are fixed (``run_scenario(plan=...)``) rather than seeded so each run
does the one thing that exposes its mutant, early, and stays short.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dtr import mutants
from dtr.chaos.checker_base import CheckResult
from dtr.chaos.runner import RunResult, run_scenario
from dtr.chaos.scenario import FaultKind, ScheduledFault
from dtr.chaos.scenario_files import get_scenario
from dtr.errors import InvalidArgument

pytestmark = pytest.mark.integration


def check(result: RunResult, name: str) -> CheckResult:
    return next(c for c in result.checks if c.name == name)


def test_unfenced_writes_are_caught_by_record_fencing_and_claims(tmp_path: Path) -> None:
    """The paused leader wakes and writes under its old term: etcd's record names it."""
    plan = [ScheduledFault(0.5, FaultKind.ZOMBIE_LEADER, 5.0)]
    result = run_scenario(
        get_scenario("zombie-leader"),
        seed=1,
        work_dir=tmp_path,
        duration_s=8.0,
        plan=plan,
        mutant=mutants.UNFENCED_WRITES,
    )
    assert result.mutant == mutants.UNFENCED_WRITES
    fencing = check(result, "record-fencing")
    assert not fencing.ok
    assert any("while the current term was" in v.message for v in fencing.violations)
    # The replica that never stepped down still claims its old term after waking.
    assert not check(result, "claims").ok


def test_latest_without_last_part_is_caught_by_record_checkpoints(tmp_path: Path) -> None:
    """No fault needed: the first complete step lacks a live member's part."""
    result = run_scenario(
        get_scenario("zombie-leader"),
        seed=1,
        work_dir=tmp_path,
        duration_s=6.0,
        plan=[],
        mutant=mutants.LATEST_WITHOUT_LAST_PART,
    )
    checkpoints = check(result, "record-checkpoints")
    assert not checkpoints.ok
    assert any("completed without the part" in v.message for v in checkpoints.violations)


def test_incarnation_blind_barriers_are_caught_by_record_generations(tmp_path: Path) -> None:
    """A worker restarted under its id while still a live member: the generation must move.

    The heartbeat timeout is raised so the restarted process (imports take
    seconds on a loaded machine) registers while its predecessor is still a
    live member, which is the case the mutant gets wrong.
    """
    scenario = dataclasses.replace(get_scenario("identity-and-time"), heartbeat_timeout_s=20.0)
    plan = [ScheduledFault(0.5, FaultKind.WORKER_RESTART_SAME_ID, 1.0)]
    result = run_scenario(
        scenario,
        seed=1,
        work_dir=tmp_path,
        duration_s=8.0,
        plan=plan,
        mutant=mutants.INCARNATION_BLIND_BARRIERS,
    )
    generations = check(result, "record-generations")
    assert not generations.ok
    assert any("incarnation 1 -> 2" in v.message for v in generations.violations)


def test_unbounded_mark_dead_is_caught_by_record_deaths(tmp_path: Path) -> None:
    """A rack of 150 dies and the leader is killed a second later: one txn would hold all 150.

    The new leader's grace starts every member's clock at once, so all 150
    expire in one leader cycle; a transaction of them all is over etcd's 128
    operations and is refused on every cycle, so none is ever declared dead.
    Three processes of 50, all killed, keep the run small (the real workers
    train on with the real code: 22 s on the shared 2-core machine).
    """
    scenario = dataclasses.replace(
        get_scenario("rack-failure"),
        sim_workers=150,
        sim_processes=3,
        rack_size=150,
        settle_s=5.0,
    )
    plan = [
        ScheduledFault(1.0, FaultKind.RACK_FAILURE, 1.0),
        ScheduledFault(2.0, FaultKind.LEADER_KILL, 1.0),
    ]
    result = run_scenario(
        scenario,
        seed=1,
        work_dir=tmp_path,
        duration_s=8.0,
        plan=plan,
        mutant=mutants.UNBOUNDED_MARK_DEAD,
    )
    deaths = check(result, "record-deaths")
    assert not deaths.ok
    assert any("150 of 150 worker(s) killed for good" in v.message for v in deaths.violations)


def test_short_keepalive_is_caught_by_slow_etcd_leadership(tmp_path: Path) -> None:
    """0.6-0.8 s round trips to etcd for 4 s: the 0.2 s keep-alive steps the leader down."""
    scenario = dataclasses.replace(
        get_scenario("identity-and-time"), etcd_slow_s=(0.3, 0.4), settle_s=5.0
    )
    result = run_scenario(
        scenario,
        seed=1,
        work_dir=tmp_path,
        duration_s=8.0,
        plan=[ScheduledFault(1.0, FaultKind.ETCD_SLOW, 4.0)],
        mutant=mutants.SHORT_KEEPALIVE,
    )
    leadership = check(result, "slow-etcd-leadership")
    assert not leadership.ok
    assert any("step-down(s) during etcd-slow" in v.message for v in leadership.violations)


def test_cancelled_write_is_caught_by_record_completion(tmp_path: Path) -> None:
    """cancel-storm's deadlines lie between one and two etcd round trips: writes are cut.

    The step's first commit loads the step (one 0.4 s round trip) and is
    cancelled during its write (0.5-0.7 s deadline), which etcd still applies;
    the checkpoint book never learns of it, so the last member's commit does
    not complete the step and the cancelled worker's retry is a duplicate.
    """
    scenario = dataclasses.replace(get_scenario("cancel-storm"), settle_s=8.0)
    result = run_scenario(
        scenario,
        seed=1,
        work_dir=tmp_path,
        duration_s=14.0,
        plan=[ScheduledFault(1.0, FaultKind.CLIENT_CANCEL, 10.0)],
        mutant=mutants.CANCELLED_WRITE,
    )
    completion = check(result, "record-completion")
    assert not completion.ok
    assert any("but the step was not completed" in v.message for v in completion.violations)


def test_replay_other_life_is_caught_by_commit_lives(tmp_path: Path) -> None:
    """The job restarted with etcd wiped: an old life's queued commit reaches the new life.

    Seed 3's target generator wipes etcd on the first job restart. Each worker
    holds one unanswered commit; the mutant sends it without its life, and
    the new life accepts one whose generation matches its own by then.
    """
    scenario = dataclasses.replace(get_scenario("job-restart"), settle_s=20.0)
    result = run_scenario(
        scenario,
        seed=3,
        work_dir=tmp_path,
        duration_s=10.0,
        plan=[ScheduledFault(3.0, FaultKind.JOB_RESTART, 1.0)],
        mutant=mutants.REPLAY_OTHER_LIFE,
    )
    lives = check(result, "commit-lives")
    assert not lives.ok
    assert any("but saved no step" in v.message for v in lives.violations)


def test_parts_overwritten_is_caught_by_record_part_names(tmp_path: Path) -> None:
    """Workers restarted under their id replay and save a step again: same name, new bytes.

    A worker killed after its part of step S was recorded, but before S
    completed, loads an older step, trains to S again and commits S under
    the new generation. Every save differs (the workload's nonce), so the
    record names one fixed object name with two checksums. Three restarts
    make at least one land in that window.
    """
    plan = [
        ScheduledFault(2.0, FaultKind.WORKER_RESTART_SAME_ID, 1.0),
        ScheduledFault(4.5, FaultKind.WORKER_RESTART_SAME_ID, 1.0),
        ScheduledFault(7.0, FaultKind.WORKER_RESTART_SAME_ID, 1.0),
    ]
    scenario = dataclasses.replace(get_scenario("identity-and-time"), settle_s=8.0)
    result = run_scenario(
        scenario,
        seed=1,
        work_dir=tmp_path,
        duration_s=12.0,
        plan=plan,
        mutant=mutants.PARTS_OVERWRITTEN,
    )
    names = check(result, "record-part-names")
    assert not names.ok
    assert any("the object was overwritten" in v.message for v in names.violations)


def test_an_unknown_mutant_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown mutant 'unfenced'"):
        run_scenario(get_scenario("zombie-leader"), seed=1, work_dir=tmp_path, mutant="unfenced")
    assert not (tmp_path / "history").exists()
