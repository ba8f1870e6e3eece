"""Which workload a scenario runs, and what the DDP job's scenarios must hold.

A scenario trains either ``workers`` independent processes (``workload.py``,
each its own model) or, with ``ddp_agents`` > 0, one real data-parallel job:
``ddp_agents`` torchrun agents of ``ranks_per_agent`` ranks each on dtr's
rendezvous (``ddp_agents.py``). The two do not mix in one job: the
independent workers commit their own parts at their own steps, and a step of
the job completes only once every live member committed it, so a mixed
membership could hold every step of the other back. So a DDP scenario has
``workers: 0`` and ``sim_workers: 0``.

The faults aimed at an independent worker's process (kill, pause, cut off,
short deadlines, a new incarnation, the whole job restarted, a rack of
simulated ones) have no DDP meaning: the DDP job's processes are hurt by
``rank-kill`` (one rank's process SIGKILLed: torchrun restarts the group)
and ``agent-leave`` (one agent and its ranks gone for good: the job goes on
with fewer ranks). The faults on coordinators, etcd and storage apply to
both workloads.

This module imports only the standard library and ``scenario``: ``dtr chaos
list`` must stay light.
"""

from __future__ import annotations

from .scenario import FaultKind, Scenario, ScenarioError

#: The faults only a DDP job has targets for.
DDP_ONLY = frozenset({FaultKind.RANK_KILL, FaultKind.AGENT_LEAVE})
#: The faults aimed at independent workers' processes, refused in a DDP scenario.
WORKERS_ONLY = frozenset(
    {
        FaultKind.WORKER_KILL,
        FaultKind.WORKER_PAUSE,
        FaultKind.PARTITION_WORKER,
        FaultKind.CLIENT_CANCEL,
        FaultKind.WORKER_RESTART_SAME_ID,
        FaultKind.JOB_RESTART,
        FaultKind.RACK_FAILURE,
    }
)


def is_ddp(scenario: Scenario) -> bool:
    """Whether the scenario's workload is the DDP job."""
    return scenario.ddp_agents > 0


def check_workload(s: Scenario) -> None:
    """Refuse a workload that cannot run: counts, mixing, faults without a target."""
    for field, low in (("workers", 0), ("ddp_agents", 0), ("ranks_per_agent", 1)):
        value = getattr(s, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ScenarioError(
                f"scenario {s.name}: {field} must be a whole number >= {low}; got {value!r}",
                field,
            )
    if not is_ddp(s):
        if s.workers < 1:
            raise ScenarioError(
                f"scenario {s.name}: workers must be >= 1 (or give ddp_agents for a DDP job); "
                f"got {s.workers}",
                "workers",
            )
        ddp_faults = sorted(kind.value for kind in s.kinds & DDP_ONLY)
        if ddp_faults:
            raise ScenarioError(
                f"scenario {s.name}: {', '.join(ddp_faults)} needs the DDP workload "
                "(ddp_agents >= 1)",
                "ddp_agents",
            )
        return
    for field in ("workers", "sim_workers"):
        if getattr(s, field):
            raise ScenarioError(
                f"scenario {s.name}: with ddp_agents, {field} must be 0 (the DDP job is the "
                f"workload; other workers in its job would hold its steps back); "
                f"got {getattr(s, field)}",
                field,
            )
    refused = sorted(kind.value for kind in s.kinds & WORKERS_ONLY)
    if refused:
        raise ScenarioError(
            f"scenario {s.name}: {', '.join(refused)} aims at independent workers; a DDP job's "
            "processes are hurt with rank-kill and agent-leave",
            "faults",
        )
    if FaultKind.AGENT_LEAVE in s.kinds and s.ddp_agents < 2:
        raise ScenarioError(
            f"scenario {s.name}: agent-leave needs ddp_agents >= 2 (one must stay and train); "
            f"got {s.ddp_agents}",
            "ddp_agents",
        )


def world_size(scenario: Scenario) -> int:
    """Ranks of the whole job, every agent present."""
    return scenario.ddp_agents * scenario.ranks_per_agent
