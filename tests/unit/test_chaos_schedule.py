"""dtr.chaos.scenario: scenarios refuse what cannot work, and schedules depend on the seed only.

A failing chaos run is replayed from its seed, so the generator must be a
pure function of (scenario, seed): no global random state, no clock.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter
from typing import Any

import pytest

from dtr.chaos.scenario import FaultKind, Scenario, schedule, target_rng
from dtr.chaos.scenario_files import builtin_scenarios, get_scenario
from dtr.errors import InvalidArgument

BASE = Scenario(
    "probe",
    "a scenario for tests",
    faults=((FaultKind.LEADER_KILL, 1.0), (FaultKind.PARTITION_WORKER, 1.0)),
    duration_s=60.0,
)


def test_the_same_seed_gives_the_same_schedule() -> None:
    random.seed(1)
    first = schedule(BASE, 42)
    random.seed(2)  # the global generator plays no part
    assert schedule(BASE, 42) == first
    assert first  # and it is not trivially equal by being empty


def test_different_seeds_give_different_schedules() -> None:
    schedules = {tuple(schedule(BASE, seed)) for seed in range(20)}
    assert len(schedules) == 20


@pytest.mark.parametrize("seed", range(30))
def test_faults_never_overlap_and_all_heal_within_the_duration(seed: int) -> None:
    planned = schedule(BASE, seed)
    assert planned, "every run has at least one fault"
    for earlier, later in itertools.pairwise(planned):
        assert earlier.at_s + earlier.duration_s <= later.at_s
    last = planned[-1]
    assert last.at_s + last.duration_s <= BASE.duration_s
    assert all(f.at_s >= 0 and f.duration_s > 0 for f in planned)


def test_the_shortest_run_still_gets_one_fault() -> None:
    short = BASE.with_duration(BASE.longest_fault_s)
    assert all(len(schedule(short, seed)) >= 1 for seed in range(20))


def test_fault_kinds_are_drawn_roughly_by_their_weights() -> None:
    weighted = dataclasses.replace(
        BASE,
        faults=((FaultKind.WORKER_KILL, 3.0), (FaultKind.PARTITION_WORKERS, 1.0)),
        duration_s=20_000.0,
        mean_interval_s=1.0,
        fault_duration_s=1.0,
    )
    counts = Counter(f.kind for f in schedule(weighted, 7))
    total = sum(counts.values())
    assert total > 1000
    assert 0.70 < counts[FaultKind.WORKER_KILL] / total < 0.80


def test_a_zombie_leader_is_paused_past_its_lease() -> None:
    zombie = get_scenario("zombie-leader")
    for seed in range(20):
        for fault in schedule(zombie, seed):
            assert fault.duration_s > zombie.lease_ttl_s


def test_a_shorter_duration_scales_the_steps_along() -> None:
    half = BASE.with_duration(BASE.duration_s / 2)
    assert half.duration_s == 30.0
    assert half.steps == BASE.steps // 2
    assert BASE.with_duration(0.001 + BASE.longest_fault_s).steps >= 1


def test_target_choices_are_seeded_and_apart_from_the_schedule() -> None:
    assert target_rng(3).random() == target_rng(3).random()
    assert target_rng(3).random() != target_rng(4).random()
    assert target_rng(3).random() != random.Random(3).random()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"description": " "}, "description"),
        ({"faults": ()}, "at least one"),
        ({"faults": ((FaultKind.LEADER_KILL, 0.0),)}, "weight"),
        ({"faults": ((FaultKind.LEADER_KILL, float("nan")),)}, "weight"),
        ({"faults": ((FaultKind.LEADER_KILL, 1.0), (FaultKind.LEADER_KILL, 2.0))}, "twice"),
        ({"faults": (("leader-kill", 1.0),)}, "not a fault kind"),
        ({"duration_s": -1.0}, "duration_s"),
        ({"duration_s": 1.0}, "at least"),
        ({"workers": 0}, "workers"),
        ({"replicas": 1}, "replicas >= 2"),
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"mean_interval_s": float("inf")}, "mean_interval_s"),
        ({"settle_s": 0}, "settle_s"),
        ({"lease_ttl_s": 1}, "lease_ttl_s"),
        ({"faults": ((FaultKind.ETCD_MEMBER_KILL, 1.0),)}, "etcd_members >= 3"),
        ({"storage": "nfs"}, "storage must be one of file, s3"),
        ({"faults": ((FaultKind.SLOW_STORAGE, 1.0),)}, "slow-storage needs storage: s3"),
        ({"faults": ((FaultKind.DISK_FULL, 1.0),), "storage": "s3"}, "disk-full needs storage"),
        ({"sim_workers": 3, "sim_processes": 2, "step_time_s": 0.1}, "multiple of sim_processes"),
        ({"sim_workers": 10}, "step_time_s must be at least 0.05"),
        ({"sim_processes": 0}, "sim_processes"),
    ],
)
def test_a_scenario_that_cannot_work_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        dataclasses.replace(BASE, **change)


@pytest.mark.parametrize("duration_s", [0.0, -5.0, float("nan")])
def test_a_duration_override_that_cannot_work_is_refused(duration_s: float) -> None:
    with pytest.raises(InvalidArgument, match="duration"):
        BASE.with_duration(duration_s)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_a_seed_that_is_not_a_whole_number_from_zero_is_refused(seed: Any) -> None:
    with pytest.raises(InvalidArgument, match="seed"):
        schedule(BASE, seed)


SHIPPED = {
    "leader-crash-loop",
    "zombie-leader",
    "partition-worker-from-coordinators",
    "partition-leader-from-etcd",
    "etcd-member-loss",
    "worker-churn",
    "mixed-soak",
    "disk-full",
    "scale-200",
    "slow-storage",
    "identity-and-time",
    "pause-and-cancel",
    "rack-failure",
    "job-restart",
    "cancel-storm",
    "soak-fleet",
    "soak-job",
}


def test_the_built_in_scenarios_are_valid_and_unknown_names_list_them() -> None:
    scenarios = builtin_scenarios()
    assert set(scenarios) >= SHIPPED
    for name, scenario in scenarios.items():
        assert scenario.name == name
        assert schedule(scenario, scenario.seed)
    with pytest.raises(InvalidArgument, match="known: cancel-storm, disk-full, etcd-member-loss, "):
        get_scenario("no-such-scenario")


def test_the_soak_strikes_every_five_to_ten_seconds_for_ten_minutes() -> None:
    soak = get_scenario("mixed-soak")
    plan = schedule(soak, soak.seed)
    starts = [fault.at_s for fault in plan]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert soak.duration_s == 600
    assert 5.0 <= sum(gaps) / len(gaps) <= 10.0
    assert len({fault.kind for fault in plan}) == len(soak.faults)  # every kind strikes
