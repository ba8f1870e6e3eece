"""Chaos scenarios, and the seeded generator that turns one into a fault schedule.

A ``Scenario`` is a frozen description of a run: the cluster's size, how
long the workload trains, which faults may strike and how often, how long
each lasts, how long the healed cluster settles. ``SCENARIOS`` holds the
built-in ones are YAML files under ``chaos/scenarios/`` read by
``scenario_files.py``; every value is checked here, at construction, and the
loader names the file and line of a value refused.

``schedule(scenario, seed)`` is pure: the same scenario and seed give the
same faults at the same times, whatever machine runs them, so a failing run
is replayed from its recorded seed. Randomness comes from ``random.Random``
instances seeded here, never from the global generator; the nemesis picks its
targets with ``target_rng(seed)``, a second stream of the same seed, so
choosing a target never shifts the schedule.

What is not here: injecting the faults (``nemesis.py``) and running them
against a cluster (``runner.py``). This module imports only the standard
library and ``dtr.errors``: ``dtr chaos list`` must stay light.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dtr.errors import InvalidArgument

__all__ = [
    "FaultKind",
    "Scenario",
    "ScenarioError",
    "ScheduledFault",
    "schedule",
    "target_rng",
]

#: A fault lasts its scenario's ``fault_duration_s`` times a factor drawn in this range.
DURATION_JITTER = (0.8, 1.2)
#: A paused leader stays paused this much longer than its lease TTL, so it surely lapses.
ZOMBIE_MARGIN_S = 2.0
#: Where a run's checkpoints can go (``Scenario.storage``).
STORAGES = ("file", "s3")
#: The shortest step simulated workers take: hundreds must share one process and core.
SIM_MIN_STEP_TIME_S = 0.05
#: No delay a scenario gives (``etcd_slow_s``, ``slow_storage_s``, ...) exceeds this.
MAX_DELAY_S = 10.0
#: The default delays: ``etcd-slow``'s one-way range (round trips of 0.1-0.8 s), what
#: ``slow-storage`` adds to each chunk (a saturated link), ``client-cancel``'s deadlines.
ETCD_SLOW_DELAY_S = (0.05, 0.4)
SLOW_STORAGE_DELAY_S = 0.5
CLIENT_DEADLINE_S = (0.05, 0.2)
#: A paused worker stays stopped at least this much longer than its heartbeat timeout.
PAUSE_MARGIN_S = 2.0
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class ScenarioError(InvalidArgument):
    """A scenario value that cannot run; ``field`` names it (a file's loader adds the line)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class FaultKind(enum.StrEnum):
    """What the nemesis can do (``nemesis.py`` says how, and how each heals)."""

    LEADER_KILL = "leader-kill"
    REPLICA_KILL = "replica-kill"
    WORKER_KILL = "worker-kill"
    ZOMBIE_LEADER = "zombie-leader"
    PARTITION_WORKER = "partition-worker"
    PARTITION_WORKERS = "partition-workers"
    ETCD_MEMBER_KILL = "etcd-member-kill"
    PARTITION_LEADER_ETCD = "partition-leader-etcd"
    DISK_FULL = "disk-full"
    SLOW_STORAGE = "slow-storage"
    WORKER_RESTART_SAME_ID = "worker-restart-same-id"
    ETCD_SLOW = "etcd-slow"
    RACK_FAILURE = "rack-failure"
    CLIENT_CANCEL = "client-cancel"
    JOB_RESTART = "job-restart"
    WORKER_PAUSE = "worker-pause"
    RANK_KILL = "rank-kill"
    AGENT_LEAVE = "agent-leave"


#: Faults that need another replica to take over.
_NEEDS_TWO_REPLICAS = frozenset(
    {
        FaultKind.LEADER_KILL,
        FaultKind.REPLICA_KILL,
        FaultKind.ZOMBIE_LEADER,
        FaultKind.PARTITION_LEADER_ETCD,
    }
)


@dataclass(frozen=True)
class ScheduledFault:
    """One fault of a schedule: ``at_s`` seconds after the workload started training."""

    at_s: float
    kind: FaultKind
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"at_s": self.at_s, "kind": self.kind.value, "duration_s": self.duration_s}


@dataclass(frozen=True)
class Scenario:
    """A chaos run, described: the cluster, the workload, the faults and their pace.

    ``faults`` pairs each fault kind with its weight (how often it is drawn,
    relative to the others). ``mean_interval_s`` is the mean quiet time
    between one fault's healing and the next fault. Each worker trains
    ``steps`` steps of ``step_time_s`` simulated compute each: undisturbed
    that takes about ``duration_s``, so the workload trains through every
    fault, and the time the faults cost it is made up within ``settle_s``;
    ``with_duration`` scales the steps along. ``sim_workers`` simulated
    workers (asyncio, ``sim_workload.py``) run beside the real ones, spread
    over ``sim_processes`` processes, with the same steps (they meet the real
    ones at the same ``step-<n>`` barriers). ``seed`` is the seed used when
    none is given. ``storage`` is where checkpoints go: ``file`` (the work
    dir) or ``s3`` (a ``moto_server`` the run starts, behind a proxy the
    ``slow-storage`` fault delays). ``rack_size`` is how many simulated
    workers a ``rack-failure`` kills at least. The delays (seconds, 0-10):
    ``etcd_slow_s`` the one-way range ``etcd-slow`` and ``client-cancel`` draw
    from, ``slow_storage_s`` what ``slow-storage`` adds per chunk,
    ``client_deadline_s`` the range of ``client-cancel``'s per-attempt
    deadlines. ``ddp_agents`` > 0 makes the workload a real data-parallel
    job instead of the independent workers: that many torchrun agents of
    ``ranks_per_agent`` ranks each (``scenario_ddp.py``, ``ddp_agents.py``).
    Invalid values are refused at construction.
    """

    name: str
    description: str
    faults: tuple[tuple[FaultKind, float], ...]
    seed: int = 0
    duration_s: float = 30.0
    replicas: int = 3
    etcd_members: int = 1
    workers: int = 2
    steps: int = 1500
    step_time_s: float = 0.02
    mean_interval_s: float = 5.0
    fault_duration_s: float = 3.0
    settle_s: float = 20.0
    lease_ttl_s: int = 3
    heartbeat_timeout_s: float = 5.0
    sim_workers: int = 0
    sim_processes: int = 1
    storage: str = "file"
    rack_size: int = 150
    etcd_slow_s: tuple[float, float] = ETCD_SLOW_DELAY_S
    slow_storage_s: float = SLOW_STORAGE_DELAY_S
    client_deadline_s: tuple[float, float] = CLIENT_DEADLINE_S
    ddp_agents: int = 0
    ranks_per_agent: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ScenarioError(
                f"scenario name must be lowercase letters, digits and '-'; got {self.name!r}",
                "name",
            )
        if not isinstance(self.description, str) or not self.description.strip():
            raise ScenarioError(
                f"scenario {self.name}: description must not be empty", "description"
            )
        try:
            _check_seed(self.seed)
        except InvalidArgument as err:
            raise ScenarioError(str(err), "seed") from None
        _check_faults(self.name, self.faults)
        self._check_numbers()
        self._check_delays()
        self._check_faults_fit()

    def _check_numbers(self) -> None:
        for field in (
            "replicas",
            "etcd_members",
            "steps",
            "lease_ttl_s",
            "sim_processes",
            "rack_size",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ScenarioError(
                    f"scenario {self.name}: {field} must be a whole number >= 1; got {value!r}",
                    field,
                )
        for field in (
            "duration_s",
            "mean_interval_s",
            "fault_duration_s",
            "settle_s",
            "heartbeat_timeout_s",
            "step_time_s",
        ):
            value = getattr(self, field)
            if not _is_positive(value):
                raise ScenarioError(
                    f"scenario {self.name}: {field} must be a positive number; got {value!r}",
                    field,
                )
        if isinstance(self.sim_workers, bool) or not isinstance(self.sim_workers, int):
            raise ScenarioError(
                f"scenario {self.name}: sim_workers must be a whole number; "
                f"got {self.sim_workers!r}",
                "sim_workers",
            )
        if self.sim_workers < 0 or self.sim_workers % self.sim_processes:
            raise ScenarioError(
                f"scenario {self.name}: sim_workers must be >= 0 and a multiple of sim_processes "
                f"({self.sim_processes}); got {self.sim_workers}",
                "sim_workers",
            )
        if self.sim_workers and self.step_time_s < SIM_MIN_STEP_TIME_S:
            raise ScenarioError(
                f"scenario {self.name}: with sim_workers, step_time_s must be at least "
                f"{SIM_MIN_STEP_TIME_S:g} s (hundreds share one core); got {self.step_time_s:g}",
                "step_time_s",
            )
        if self.lease_ttl_s < 2:
            raise ScenarioError(
                f"scenario {self.name}: lease_ttl_s must be >= 2; got {self.lease_ttl_s}",
                "lease_ttl_s",
            )

    def _check_delays(self) -> None:
        """Every delay within 0-``MAX_DELAY_S`` s; a range is ``[min, max]`` with min <= max."""
        for field in ("etcd_slow_s", "client_deadline_s", "slow_storage_s"):
            value = getattr(self, field)
            bounds = value if field != "slow_storage_s" else (value, value)
            if not (
                isinstance(bounds, tuple)
                and len(bounds) == 2
                and all(_is_delay(b) for b in bounds)
                and bounds[0] <= bounds[1]
            ):
                shape = "a number" if field == "slow_storage_s" else "[min, max] with min <= max"
                raise ScenarioError(
                    f"scenario {self.name}: {field} must be {shape} within 0-{MAX_DELAY_S:g} s; "
                    f"got {list(value) if isinstance(value, tuple) else value!r}",
                    field,
                )

    def _check_rack(self) -> None:
        """``rack-failure`` kills whole simulated processes: 2+ of them, and enough workers.

        A rack may take every simulated process (the training workers still
        survive it): the issue-15 break it re-enacts needs 150+ deaths at once,
        not survivors among the simulated ones.
        """
        if self.sim_processes < 2:
            raise ScenarioError(
                f"scenario {self.name}: rack-failure needs sim_processes >= 2 (a rack is whole "
                f"processes drawn from several); got {self.sim_processes}",
                "sim_processes",
            )
        if self.rack_size > self.sim_workers:
            raise ScenarioError(
                f"scenario {self.name}: rack_size ({self.rack_size}) is larger than the "
                f"simulated workers ({self.sim_workers})",
                "rack_size",
            )

    def _check_faults_fit(self) -> None:
        from .scenario_ddp import check_workload  # it needs this module complete

        check_workload(self)
        kinds = self.kinds
        if FaultKind.RACK_FAILURE in kinds:
            self._check_rack()
        if FaultKind.JOB_RESTART in kinds and self.sim_workers:
            raise ScenarioError(  # the nemesis restarts real workers only (nemesis_job.py)
                f"scenario {self.name}: job-restart needs sim_workers: 0 (simulated workers "
                f"would go on against the restarted job); got {self.sim_workers}",
                "sim_workers",
            )
        if self.storage not in STORAGES:
            raise ScenarioError(
                f"scenario {self.name}: storage must be one of {', '.join(STORAGES)}; "
                f"got {self.storage!r}",
                "storage",
            )
        for kind, storage in ((FaultKind.SLOW_STORAGE, "s3"), (FaultKind.DISK_FULL, "file")):
            if kind in kinds and self.storage != storage:
                raise ScenarioError(
                    f"scenario {self.name}: {kind.value} needs storage: {storage}; "
                    f"got {self.storage}",
                    "storage",
                )
        if FaultKind.ETCD_MEMBER_KILL in kinds and self.etcd_members < 3:
            raise ScenarioError(
                f"scenario {self.name}: etcd-member-kill needs etcd_members >= 3 (quorum "
                f"must survive one loss); got {self.etcd_members}",
                "etcd_members",
            )
        if kinds & _NEEDS_TWO_REPLICAS and self.replicas < 2:
            raise ScenarioError(
                f"scenario {self.name}: leader and replica faults need replicas >= 2; "
                f"got {self.replicas}",
                "replicas",
            )
        longest = self.longest_fault_s
        if self.duration_s < longest:
            raise ScenarioError(
                f"scenario {self.name}: duration_s must be at least {longest:g} s (its longest "
                f"fault); got {self.duration_s:g} s",
                "duration_s",
            )

    @property
    def kinds(self) -> frozenset[FaultKind]:
        return frozenset(kind for kind, _ in self.faults)

    @property
    def zombie_pause_s(self) -> float:
        """The shortest pause that outlives the leader's lease (``zombie-leader``)."""
        return self.lease_ttl_s + ZOMBIE_MARGIN_S

    @property
    def worker_pause_s(self) -> float:
        """A ``worker-pause``'s base: even its shortest jitter outlives the heartbeat timeout."""
        return round((self.heartbeat_timeout_s + PAUSE_MARGIN_S) / DURATION_JITTER[0], 3)

    @property
    def longest_fault_s(self) -> float:
        """The longest a drawn fault can last: the run must be at least this long."""
        longest = self.fault_duration_s * DURATION_JITTER[1]
        if FaultKind.ZOMBIE_LEADER in self.kinds:
            longest = max(longest, self.zombie_pause_s * DURATION_JITTER[1])
        if FaultKind.WORKER_PAUSE in self.kinds:
            longest = max(longest, self.worker_pause_s * DURATION_JITTER[1])
        return round(longest, 3)

    def with_duration(self, duration_s: float) -> Scenario:
        """This scenario for ``duration_s`` of faults, the workload's steps scaled to match."""
        if not _is_positive(duration_s):
            raise InvalidArgument(
                f"duration must be a positive number of seconds; got {duration_s}"
            )
        steps = max(1, round(self.steps * duration_s / self.duration_s))
        return dataclasses.replace(self, duration_s=duration_s, steps=steps)

    def describe_faults(self) -> str:
        """``leader-kill x2, partition-worker x1``: the kinds and their weights, for listings."""
        return ", ".join(f"{kind.value} x{weight:g}" for kind, weight in self.faults)


def _is_positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _is_delay(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_DELAY_S
    )


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidArgument(f"seed must be a whole number >= 0; got {seed!r}")
    return seed


def _check_faults(name: str, faults: Iterable[tuple[FaultKind, float]]) -> None:
    seen: set[FaultKind] = set()
    for kind, weight in faults:
        if not isinstance(kind, FaultKind):
            raise ScenarioError(
                f"scenario {name}: {kind!r} is not a fault kind; known: "
                f"{', '.join(k.value for k in FaultKind)}",
                "faults",
            )
        if kind in seen:
            raise ScenarioError(f"scenario {name}: fault {kind.value} is listed twice", "faults")
        if not _is_positive(weight):
            raise ScenarioError(
                f"scenario {name}: the weight of {kind.value} must be a positive number; "
                f"got {weight!r}",
                f"faults.{kind.value}",
            )
        seen.add(kind)
    if not seen:
        raise ScenarioError(f"scenario {name}: faults must name at least one fault kind", "faults")


def schedule(scenario: Scenario, seed: int) -> list[ScheduledFault]:
    """The faults of one run: pure, the same for the same scenario and seed.

    Faults never overlap: each starts after the previous one healed plus an
    exponential quiet time of mean ``scenario.mean_interval_s``, and every
    fault heals within ``scenario.duration_s``. The first starts in the first
    ``mean_interval_s`` (or as late as still fits), so every run has at least
    one fault.
    """
    rng = random.Random(_check_seed(seed))
    kinds = [kind for kind, _ in scenario.faults]
    weights = [weight for _, weight in scenario.faults]
    latest_first = scenario.duration_s - scenario.longest_fault_s
    at_s = rng.uniform(0.0, min(scenario.mean_interval_s, latest_first))
    planned: list[ScheduledFault] = []
    while True:
        kind = rng.choices(kinds, weights)[0]
        duration_s = _duration_of(scenario, kind, rng)
        if at_s + duration_s > scenario.duration_s:
            return planned
        planned.append(ScheduledFault(round(at_s, 3), kind, duration_s))
        at_s += duration_s + rng.expovariate(1.0 / scenario.mean_interval_s)


def _duration_of(scenario: Scenario, kind: FaultKind, rng: random.Random) -> float:
    base = scenario.fault_duration_s
    if kind is FaultKind.ZOMBIE_LEADER:
        base = max(base, scenario.zombie_pause_s)
    elif kind is FaultKind.WORKER_PAUSE:
        base = max(base, scenario.worker_pause_s)
    return round(base * rng.uniform(*DURATION_JITTER), 3)


def target_rng(seed: int) -> random.Random:
    """The nemesis's generator for picking targets: seeded, apart from the schedule's."""
    return random.Random(f"dtr-chaos-targets:{_check_seed(seed)}")
