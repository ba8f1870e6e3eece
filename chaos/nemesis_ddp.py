"""Faults aimed at the DDP job's processes: rank-kill and agent-leave (``ddp_agents.py``).

- ``rank-kill``: SIGKILL one running rank's process, drawn with the
  nemesis's ``random.Random``. torchrun restarts the group through dtr's
  rendezvous and every rank resumes from the latest complete checkpoint;
  heal has nothing to undo (the restart is the job's own).
- ``agent-leave``: one of the running agents, drawn likewise, leaves for
  good with its ranks (``AgentPool.leave``); refused while it is the last
  one. torchrun forms a smaller world from the agents left; heal has
  nothing to undo (it is never started again).

Both need the run's workers to be an ``AgentPool``: a scenario of the
independent workers cannot name them (``scenario_ddp.py``), and a pool of
another kind is ``NoTarget``.
"""

from __future__ import annotations

import random

from .ddp_agents import AgentPool
from .nemesis_types import Injected, NoTarget, Targets


def _agents(targets: Targets) -> AgentPool:
    if not isinstance(targets.workers, AgentPool):
        raise NoTarget("the run's workload is not a DDP job: no ranks or agents")
    return targets.workers


def kill_rank(targets: Targets, rng: random.Random) -> Injected:
    """SIGKILL one running rank; the value names the rank, its PID, its agent, the world."""
    pool = _agents(targets)
    ranks = pool.ranks()
    if not ranks:
        raise NoTarget("no rank process is running")
    chosen = rng.choice(ranks)
    try:
        killed = pool.kill_rank(chosen.rank)
    except ProcessLookupError:
        raise NoTarget(f"rank {chosen.rank} exited before it could be killed") from None
    value = {
        "target": f"rank {killed.rank}",
        "rank": killed.rank,
        "pid": killed.pid,
        "agent": killed.agent,
        "world": len(ranks),
    }
    return Injected(value, lambda: None)


def leave_agent(targets: Targets, rng: random.Random) -> Injected:
    """One running agent and its ranks leave for good; refused while only one runs."""
    pool = _agents(targets)
    running = pool.running_ids()
    if len(running) < 2:
        raise NoTarget(f"only {len(running)} agent runs: the job needs one to train on")
    agent = rng.choice(running)
    ranks = sorted(r.rank for r in pool.ranks() if r.agent == agent)
    pids = pool.leave(agent)
    named = f"{agent} (ranks {', '.join(map(str, ranks))})" if ranks else agent
    value = {"target": named, "agent": agent, "ranks": ranks, "pids": pids}
    return Injected(value, lambda: None)
