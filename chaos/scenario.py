"""Chaos scenarios, and the seeded generator that turns one into a fault schedule.

A ``Scenario`` is a frozen description of a run: the cluster's size, how
long the workload trains, which faults may strike and how often, how long
each lasts, how long the healed cluster settles. ``SCENARIOS`` holds the
built-in ones (``dtr chaos list`` prints them); they are Python values, not
YAML, so adding one needs no parser and no new dependency, and a typo fails
at import in a test rather than at run time.

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
    "SCENARIOS",
    "FaultKind",
    "Scenario",
    "ScheduledFault",
    "get_scenario",
    "schedule",
    "target_rng",
]

#: A fault lasts its scenario's ``fault_duration_s`` times a factor drawn in this range.
DURATION_JITTER = (0.8, 1.2)
#: A paused leader stays paused this much longer than its lease TTL, so it surely lapses.
ZOMBIE_MARGIN_S = 2.0
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class FaultKind(enum.StrEnum):
    """What the nemesis can do (``nemesis.py`` says how, and how each heals)."""

    LEADER_KILL = "leader-kill"
    REPLICA_KILL = "replica-kill"
    WORKER_KILL = "worker-kill"
    ZOMBIE_LEADER = "zombie-leader"
    PARTITION_WORKER = "partition-worker"
    PARTITION_WORKERS = "partition-workers"
    ETCD_MEMBER_KILL = "etcd-member-kill"


#: Faults that need another replica to take over.
_NEEDS_TWO_REPLICAS = frozenset(
    {FaultKind.LEADER_KILL, FaultKind.REPLICA_KILL, FaultKind.ZOMBIE_LEADER}
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
    ``with_duration`` scales the steps along. ``seed`` is the seed used when
    none is given. Invalid values are refused at construction.
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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidArgument(
                f"scenario name must be lowercase letters, digits and '-'; got {self.name!r}"
            )
        if not self.description.strip():
            raise InvalidArgument(f"scenario {self.name}: description must not be empty")
        _check_seed(self.seed)
        _check_faults(self.name, self.faults)
        self._check_numbers()
        self._check_faults_fit()

    def _check_numbers(self) -> None:
        for field in ("replicas", "etcd_members", "workers", "steps", "lease_ttl_s"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"scenario {self.name}: {field} must be >= 1; got {value!r}")
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
                raise InvalidArgument(
                    f"scenario {self.name}: {field} must be a positive number; got {value!r}"
                )
        if self.lease_ttl_s < 2:
            raise InvalidArgument(
                f"scenario {self.name}: lease_ttl_s must be >= 2; got {self.lease_ttl_s}"
            )

    def _check_faults_fit(self) -> None:
        kinds = self.kinds
        if FaultKind.ETCD_MEMBER_KILL in kinds and self.etcd_members < 3:
            raise InvalidArgument(
                f"scenario {self.name}: etcd-member-kill needs etcd_members >= 3 (quorum "
                f"must survive one loss); got {self.etcd_members}"
            )
        if kinds & _NEEDS_TWO_REPLICAS and self.replicas < 2:
            raise InvalidArgument(
                f"scenario {self.name}: leader and replica faults need replicas >= 2; "
                f"got {self.replicas}"
            )
        longest = self.longest_fault_s
        if self.duration_s < longest:
            raise InvalidArgument(
                f"scenario {self.name}: duration must be at least {longest:g} s (its longest "
                f"fault); got {self.duration_s:g} s"
            )

    @property
    def kinds(self) -> frozenset[FaultKind]:
        return frozenset(kind for kind, _ in self.faults)

    @property
    def zombie_pause_s(self) -> float:
        """The shortest pause that outlives the leader's lease (``zombie-leader``)."""
        return self.lease_ttl_s + ZOMBIE_MARGIN_S

    @property
    def longest_fault_s(self) -> float:
        """The longest a drawn fault can last: the run must be at least this long."""
        longest = self.fault_duration_s * DURATION_JITTER[1]
        if FaultKind.ZOMBIE_LEADER in self.kinds:
            longest = max(longest, self.zombie_pause_s * DURATION_JITTER[1])
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


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidArgument(f"seed must be a whole number >= 0; got {seed!r}")
    return seed


def _check_faults(name: str, faults: Iterable[tuple[FaultKind, float]]) -> None:
    seen: set[FaultKind] = set()
    for kind, weight in faults:
        if not isinstance(kind, FaultKind):
            raise InvalidArgument(f"scenario {name}: {kind!r} is not a fault kind")
        if kind in seen:
            raise InvalidArgument(f"scenario {name}: fault {kind.value} is listed twice")
        if not _is_positive(weight):
            raise InvalidArgument(
                f"scenario {name}: the weight of {kind.value} must be a positive number; "
                f"got {weight!r}"
            )
        seen.add(kind)
    if not seen:
        raise InvalidArgument(f"scenario {name}: faults must name at least one fault kind")


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
    return round(base * rng.uniform(*DURATION_JITTER), 3)


def target_rng(seed: int) -> random.Random:
    """The nemesis's generator for picking targets: seeded, apart from the schedule's."""
    return random.Random(f"dtr-chaos-targets:{_check_seed(seed)}")


_BUILT_IN = (
    Scenario(
        "leader-kill",
        "kill -9 the leader replica, restart it after the fault; failover under training",
        faults=((FaultKind.LEADER_KILL, 1.0),),
    ),
    Scenario(
        "zombie-leader",
        "SIGSTOP the leader past its lease TTL, then SIGCONT it: a deposed leader wakes up",
        faults=((FaultKind.ZOMBIE_LEADER, 1.0),),
    ),
    Scenario(
        "worker-kill",
        "kill -9 a worker process; it restarts with the same id and commit queue",
        faults=((FaultKind.WORKER_KILL, 1.0),),
    ),
    Scenario(
        "worker-partition",
        "cut one worker, or all of them, off from every coordinator (blackhole), then heal",
        faults=((FaultKind.PARTITION_WORKER, 2.0), (FaultKind.PARTITION_WORKERS, 1.0)),
    ),
    Scenario(
        "mixed",
        "every coordinator and worker fault: kills, zombie leaders, partitions",
        faults=(
            (FaultKind.LEADER_KILL, 2.0),
            (FaultKind.REPLICA_KILL, 1.0),
            (FaultKind.ZOMBIE_LEADER, 1.0),
            (FaultKind.WORKER_KILL, 1.0),
            (FaultKind.PARTITION_WORKER, 1.0),
            (FaultKind.PARTITION_WORKERS, 1.0),
        ),
        duration_s=45.0,
        steps=2250,
    ),
    Scenario(
        "etcd-member-kill",
        "kill -9 one member of a 3-member etcd, restart it; the leader must carry on",
        faults=((FaultKind.ETCD_MEMBER_KILL, 2.0), (FaultKind.LEADER_KILL, 1.0)),
        etcd_members=3,
    ),
)

#: The built-in scenarios by name, in the order ``dtr chaos list`` prints them.
SCENARIOS: dict[str, Scenario] = {scenario.name: scenario for scenario in _BUILT_IN}


def get_scenario(name: str) -> Scenario:
    """The built-in scenario ``name``; InvalidArgument naming the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise InvalidArgument(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
