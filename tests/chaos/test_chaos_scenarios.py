"""Short runs of the shipped scenarios, and the proof that the harness can fail.

Each run is a real cluster (etcd, three replicas behind proxies, each
dialling etcd through proxies of its own) with two training workers,
shortened to ``DURATION_S`` of faults. Every checker must pass, and each
scenario must have done what it is for: the leader cut off from etcd fenced
itself and another replica took over; the paused leader was replaced; the
full disk failed saves that succeeded again once freed; the slow link to S3
slowed saves.

The last test starts every replica with ``--unsafe-disable-fencing`` (a
test-only flag: no fence on writes, never steps down) and cuts the leader
off from etcd: the claims checker must report the split brain. A harness
that cannot fail proves nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtr.chaos.checker_base import CheckResult
from dtr.chaos.disk import MountError, TmpfsMount
from dtr.chaos.history import Event, read_history
from dtr.chaos.nemesis import SLOW_STORAGE_DELAY_S, FaultRecord
from dtr.chaos.runner import RunResult, run_scenario
from dtr.chaos.scenario import FaultKind, ScheduledFault
from dtr.chaos.scenario_files import get_scenario

pytestmark = pytest.mark.integration

DURATION_S = 8.0  # the longest of these faults lasts 6 s; about 35 s a run on 2 cores


def run(name: str, seed: int, tmp_path: Path, *coordinator_args: str) -> RunResult:
    return run_scenario(
        get_scenario(name),
        seed=seed,
        work_dir=tmp_path,
        duration_s=DURATION_S,
        coordinator_args=coordinator_args,
    )


def failures(result: RunResult) -> dict[str, list[str]]:
    return {c.name: [v.message for v in c.violations] for c in result.checks if not c.ok}


def check(result: RunResult, name: str) -> CheckResult:
    return next(c for c in result.checks if c.name == name)


def events_of(result: RunResult) -> list[Event]:
    return read_history(sorted((result.work_dir / "history").glob("*.jsonl")))


def assert_faults_healed(result: RunResult, kind: str) -> None:
    assert result.faults, "no fault injected"
    assert all(f.kind.value == kind and f.outcome == "healed" for f in result.faults)


@pytest.mark.parametrize(
    ("name", "seed"), [("partition-leader-from-etcd", 4), ("zombie-leader", 3)]
)
def test_a_leader_cut_off_or_paused_is_replaced_and_never_leads_beside_its_successor(
    name: str, seed: int, tmp_path: Path
) -> None:
    result = run(name, seed, tmp_path)

    assert result.passed, failures(result)
    assert_faults_healed(result, result.scenario.faults[0][0].value)
    assert check(result, "claims").checked > 0
    assert result.failovers.times_s, "the leader fault moved no write to a newer term"
    claimed = {e.value["replica"] for e in events_of(result) if e.f == "claim" and e.type == "ok"}
    assert len(claimed) == result.scenario.replicas  # every replica was asked, not just one
    assert all(outcome.exit_code == 0 for outcome in result.workers.values())


def test_a_worker_cut_off_from_every_coordinator_queues_its_commits_and_catches_up(
    tmp_path: Path,
) -> None:
    result = run("partition-worker-from-coordinators", 5, tmp_path)

    assert result.passed, failures(result)
    assert_faults_healed(result, result.faults[0].kind.value)
    events = events_of(result)
    saved = {
        (e.process, e.value["step"]): e.time for e in events if e.f == "save" and e.type == "ok"
    }
    committed = {
        (e.process, e.value["step"]): e.time for e in events if e.f == "commit" and e.type == "ok"
    }
    queued_across = [
        key
        for fault in result.faults
        for key, at in saved.items()
        if fault.healed_s is not None
        and fault.started_s < at < fault.healed_s
        and committed.get(key, 0.0) > fault.healed_s
    ]
    assert queued_across, "no commit saved during a partition was delivered after it healed"
    assert all(outcome.exit_code == 0 for outcome in result.workers.values())


def _can_mount_tmpfs(where: Path) -> bool:
    try:
        TmpfsMount(where / "probe", 1).mount().unmount()
    except MountError:
        return False
    return True


def test_a_full_checkpoint_disk_fails_saves_cleanly_and_they_succeed_once_freed(
    tmp_path: Path,
) -> None:
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("mounting a tmpfs needs root or CAP_SYS_ADMIN")
    result = run("disk-full", 6, tmp_path / "run")

    assert result.passed, failures(result)
    assert_faults_healed(result, "disk-full")
    saves = [e for e in events_of(result) if e.f == "save" and e.type in ("ok", "fail")]
    fault = result.faults[0]
    assert fault.healed_s is not None
    during = [e for e in saves if fault.started_s < e.time < fault.healed_s]
    after = [e for e in saves if e.time > fault.healed_s]
    assert any(e.type == "fail" for e in during), "the full disk failed no save"
    assert any(e.type == "ok" for e in after), "no save succeeded after the disk was freed"
    assert not (tmp_path / "run" / "checkpoints").is_mount()


def test_slow_s3_storage_slows_saves_and_every_complete_step_stays_whole(tmp_path: Path) -> None:
    result = run("slow-storage", 7, tmp_path)

    assert result.passed, failures(result)
    slowed = [f for f in result.faults if f.kind.value == "slow-storage"]
    assert slowed and all(f.outcome == "healed" for f in slowed)
    assert check(result, "checkpoints").checked > 0
    started: dict[str, float] = {}
    during: list[float] = []
    for event in events_of(result):
        if event.f != "save" or event.op_id is None:
            continue
        if event.type == "invoke":
            started[event.op_id] = event.time
        elif event.type == "ok" and event.op_id in started:
            at = started.pop(event.op_id)
            if any(f.healed_s and f.started_s <= at <= f.healed_s for f in slowed):
                during.append(event.time - at)
    assert during and max(during) >= SLOW_STORAGE_DELAY_S, during


def test_barriers_hold_while_the_leader_forgets_old_ones_through_leader_kills(
    tmp_path: Path,
) -> None:
    # Keep only 4 released barriers, so a retention pass runs after every
    # release: forgetting must never break a barrier its workers still use.
    result = run("leader-crash-loop", 5, tmp_path, "--keep-barriers", "4")

    assert result.passed, failures(result)
    assert check(result, "barriers").checked > 8
    logs = "".join(p.read_text() for p in (result.work_dir / "logs").glob("replica-*.log"))
    assert "barrier retention: forgot" in logs


def test_a_worker_restarted_under_its_own_id_and_a_slow_etcd_break_no_record_invariant(
    tmp_path: Path,
) -> None:
    result = run("identity-and-time", 12, tmp_path)  # seed 12: one fault of each new kind

    assert result.passed, failures(result)
    healed = {f.kind.value for f in result.faults if f.outcome == "healed"}
    assert healed == {"etcd-slow", "worker-restart-same-id"}
    restarted = next(f for f in result.faults if f.kind.value == "worker-restart-same-id")
    incarnations = [
        e.value["incarnation"]
        for e in events_of(result)
        if e.process == f"worker:{restarted.target}" and e.f == "register" and e.type == "ok"
    ]
    assert len(incarnations) >= 2 and incarnations == sorted(incarnations)
    assert check(result, "record-barriers").checked > 0
    assert check(result, "record-fencing").checked > 0


def healed_once(result: RunResult, kind: str) -> FaultRecord:
    """The one fault of ``kind`` the run injected; it must have healed, not been skipped."""
    matching = [f for f in result.faults if f.kind.value == kind]
    assert len(matching) == 1 and matching[0].outcome == "healed", result.faults
    return matching[0]


def memberships_after(result: RunResult, at_s: float) -> list[list[str]]:
    return [
        list(e.value["members"])
        for e in events_of(result)
        if e.f == "membership" and e.type == "ok" and e.time > at_s
    ]


def test_a_rack_of_150_simulated_workers_lost_at_once_is_declared_dead_and_the_rest_train_on(
    tmp_path: Path,
) -> None:
    # One fault, early: the rack (3 of 4 processes of 50 workers); the seeded
    # scenario adds leader kills (the soak runs those).
    plan = [ScheduledFault(0.5, FaultKind.RACK_FAILURE, 1.0)]
    scenario = get_scenario("rack-failure")
    result = run_scenario(scenario, seed=6, work_dir=tmp_path, duration_s=10, plan=plan)

    assert result.passed, failures(result)
    rack = healed_once(result, "rack-failure")
    killed = rack.target.split(", ")
    assert len(killed) == 3  # 150 workers: whole processes of 50
    for name in killed:  # the nemesis's kill, not a failure of the workers check
        assert result.workers[name].killed and result.workers[name].exit_code == -9
    prefixes = tuple(f"s{name.removeprefix('sim-')}-" for name in killed)
    # The leader declared all 150 dead: a membership of the 52 survivors, none of the rack.
    survivors = [m for m in memberships_after(result, rack.started_s) if len(m) == 52]
    assert survivors and not any(w.startswith(prefixes) for w in survivors[0])


def test_a_worker_paused_past_its_timeout_and_calls_cancelled_mid_write_break_nothing(
    tmp_path: Path,
) -> None:
    # client-cancel, then worker-pause past the 5 s heartbeat timeout (a fixed plan:
    # the seeded scenario adds a leader kill and takes twice as long).
    scenario = get_scenario("pause-and-cancel")
    plan = [
        ScheduledFault(0.5, FaultKind.CLIENT_CANCEL, 3.0),
        ScheduledFault(4.0, FaultKind.WORKER_PAUSE, scenario.worker_pause_s),
    ]
    duration_s = 4.0 + scenario.worker_pause_s + 1.0
    result = run_scenario(scenario, seed=10, work_dir=tmp_path, duration_s=duration_s, plan=plan)

    assert result.passed, failures(result)
    pause = healed_once(result, "worker-pause")
    healed_once(result, "client-cancel")
    events = events_of(result)
    paused = next(e for e in events if e.f == "pause" and e.type == "ok")
    assert paused.value["holding_arrival"] is True  # stopped inside a barrier call
    assert pause.healed_s is not None and pause.healed_s - pause.started_s > 5.0
    # Declared dead while frozen, a member again once resumed.
    during = [m for m in memberships_after(result, pause.started_s) if pause.target not in m]
    assert during, "the paused worker was never declared dead"
    back = memberships_after(result, pause.healed_s)
    assert any(pause.target in m for m in back), "the paused worker never came back"
    assert result.workers[pause.target].exit_code == 0
    # Every worker's calls ran out of their short deadlines while etcd was slow.
    healed = [e for e in events if e.f == "deadline" and e.value["short"] is False]
    assert {e.process for e in healed} == {f"worker:w{i}" for i in range(3)}
    assert sum(e.value["timed_out_attempts"] for e in healed) > 0
