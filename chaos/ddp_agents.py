"""The DDP job's torchrun agents: started on dtr's rendezvous, their ranks killed, one let go.

Each agent is ``python -m torch.distributed.run --nnodes=1:<agents>
--nproc-per-node=<ranks> --rdzv-backend=dtr --rdzv-endpoint=<the replicas'
proxies> ... -m dtr.examples.train --events DIR ...`` in a session of its
own, with ``DTR_COORDINATORS`` / ``DTR_JOB`` set for the ranks' ``Worker``,
``DTR_STATE_DIR`` under the run's work dir (the ranks' commit queues),
and ``OMP_NUM_THREADS=1`` (dtr's handler gives each round a fresh store,
docs/torchrun.md). ``AgentPool`` is a ``WorkerPool`` whose
"workers" are the agents, so the runner's lifecycle (wait, stop at the
settle deadline, outcomes) and the nemesis's bookkeeping apply unchanged.

The ranks are the agents' children, each in a session of its own (torch
starts them so); they are found by the PIDs the script writes in its
events and signalled only after ``/proc`` confirms that PID is a child of
one of this pool's agents. What the nemesis does here:

- ``kill_rank``: SIGKILL one rank's process. Its agent sees the failure and
  restarts its local ranks, the other agent sees a node waiting (or its own
  ranks' collective fail) and does the same: torchrun re-forms the group
  through dtr's rendezvous and every rank resumes from the latest complete
  checkpoint. Nothing to heal.
- ``leave``: one agent goes for good (SIGTERM: torchrun stops its ranks
  and exits; whatever is left after ``LEAVE_GRACE_S`` is SIGKILLed), never
  restarted. The other agent's ranks fail their collective, and once the
  left node's rendezvous heartbeat expires (``keep_alive_interval`` x
  ``keep_alive_max_attempt``) torchrun forms a smaller world from the agents
  left (``--nnodes=1:N``), and the coordinators hand the shards out again.

The rendezvous settings (``RDZV_CONF``) are short so a demo's faults cost
seconds, not torch's default minute, yet the dead-node timeout (8 s)
outlives a leader failover (about 3-5 s with a 3 s lease), during which no
agent can write its heartbeat.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dtr.errors import InvalidArgument

from .ddp_events import read_rank_events
from .workers import WorkerPool, WorkloadConfig, wait_for

#: torch elastic's rendezvous settings for the agents (``--rdzv-conf``).
RDZV_CONF = (
    ("join_timeout", "300"),
    ("last_call_timeout", "3"),
    ("keep_alive_interval", "1"),
    ("keep_alive_max_attempt", "8"),
    ("connect_timeout", "60"),
)
#: Group restarts torchrun allows an agent (a rank kill costs one or two).
MAX_RESTARTS = 20
#: How long a leaving agent may take to stop its ranks before they are SIGKILLed.
LEAVE_GRACE_S = 15.0
#: The training script, as torchrun's entrypoint arguments.
DEFAULT_SCRIPT = ("-m", "dtr.examples.train")
#: A script of one's own for the agents to run instead (a path), e.g. while developing one.
SCRIPT_ENV = "DTR_CHAOS_DDP_SCRIPT"


@dataclass(frozen=True)
class DdpConfig:
    """What every agent is given: the job, the rendezvous, the script's flags."""

    agents: int
    ranks_per_agent: int
    rdzv_id: str
    events_dir: Path
    state_dir: Path
    save_every: int = 25
    seed: int = 0
    max_restarts: int = MAX_RESTARTS
    script: tuple[str, ...] = DEFAULT_SCRIPT
    rdzv_conf: tuple[tuple[str, str], ...] = RDZV_CONF


def script_from_environment() -> tuple[str, ...]:
    """``$DTR_CHAOS_DDP_SCRIPT`` (a path) if set, else the installed ``dtr.examples.train``."""
    path = os.environ.get(SCRIPT_ENV)
    if not path:
        return DEFAULT_SCRIPT
    if not Path(path).is_file():
        raise InvalidArgument(f"${SCRIPT_ENV}: no training script at {path}")
    return (str(Path(path).absolute()),)


@dataclass(frozen=True)
class RankProcessInfo:
    """A rank's running process, and the agent whose child it is."""

    rank: int
    pid: int
    agent: str


class AgentPool(WorkerPool):
    """torchrun agents by id (``a0``, ``a1``, ...): start, kill a rank, let one go for good."""

    def __init__(self, config: WorkloadConfig, ddp: DdpConfig, work_dir: Path) -> None:
        super().__init__([f"a{i}" for i in range(ddp.agents)], config, work_dir)
        self.ddp = ddp
        for folder in (ddp.events_dir, ddp.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.left: list[str] = []

    def argv(self, worker_id: str) -> list[str]:
        del worker_id  # every agent runs the same command; torchrun picks the ranks
        c, d = self.config, self.ddp
        conf = ",".join(f"{key}={value}" for key, value in d.rdzv_conf)
        return [
            *(sys.executable, "-m", "torch.distributed.run"),
            f"--nnodes=1:{d.agents}",
            f"--nproc-per-node={d.ranks_per_agent}",
            "--rdzv-backend=dtr",
            f"--rdzv-endpoint={c.coordinators}",
            f"--rdzv-id={d.rdzv_id}",
            f"--rdzv-conf={conf}",
            f"--max-restarts={d.max_restarts}",
            "--monitor-interval=0.5",
            "--local-addr=127.0.0.1",
            *d.script,
            *("--steps", str(c.steps), "--step-time", repr(c.step_time_s)),
            *("--save-every", str(d.save_every), "--checkpoint", c.checkpoint_uri),
            *("--events", str(d.events_dir), "--seed", str(d.seed)),
        ]

    # --- the ranks ------------------------------------------------------------------

    def ranks(self) -> list[RankProcessInfo]:
        """The ranks running now, by rank: the newest process of each that is our agents' child."""
        agents = {pid: a for a in self.running_ids() if (pid := self.pid(a)) is not None}
        newest: dict[int, int] = {}
        for event in read_rank_events(self.ddp.events_dir):
            newest[event.rank] = event.pid
        found = []
        for rank, pid in sorted(newest.items()):
            agent = agents.get(parent_of(pid) or -1)
            if agent is not None:
                found.append(RankProcessInfo(rank, pid, agent))
        return found

    def kill_rank(self, rank: int) -> RankProcessInfo:
        """SIGKILL rank ``rank``'s process (checked to be our agent's child first)."""
        for info in self.ranks():
            if info.rank == rank and parent_of(info.pid) == self.pid(info.agent):
                os.kill(info.pid, signal.SIGKILL)
                return info
        raise InvalidArgument(f"rank {rank} has no running process of this pool's agents")

    def leave(self, agent: str, grace_s: float = LEAVE_GRACE_S) -> list[int]:
        """Agent ``agent`` leaves for good: SIGTERM, SIGKILL what is left; its ranks' PIDs."""
        process = self._processes.get(agent)
        if process is None or not self.is_running(agent):
            raise InvalidArgument(f"agent {agent} is not running")
        children = identify(children_of(process.pid))
        self.left.append(agent)  # never started again, whatever happens next
        self.outcomes[agent].killed = True  # its exit status is the fault's, not a failure
        process.terminate()
        wait_for(lambda: not self.is_running(agent), time.monotonic() + grace_s)
        self._kill_with(agent, children)
        return [pid for pid, _ in children]

    def kill(self, worker_id: str) -> None:
        """SIGKILL an agent and its ranks (a node lost); the agent reaped, the ranks gone."""
        process = self._processes.get(worker_id)
        children = identify(children_of(process.pid)) if process is not None else []
        self._kill_with(worker_id, children)

    def _kill_with(self, agent: str, children: Sequence[tuple[int, int]]) -> None:
        super().kill(agent)
        for identity in children:
            kill_if_same(identity)

    def start(self, worker_id: str) -> None:
        if worker_id in self.left:
            raise InvalidArgument(f"agent {worker_id} left the job for good")
        super().start(worker_id)

    def finish_all(self, grace_s: float) -> list[str]:
        """SIGTERM the running agents (torchrun stops its ranks); SIGKILL after ``grace_s``."""
        children = [
            identity
            for agent in self.running_ids()
            if (pid := self.pid(agent)) is not None
            for identity in identify(children_of(pid))
        ]
        stopped = super().finish_all(grace_s)
        for identity in children:
            kill_if_same(identity)
        return stopped


def parent_of(pid: int) -> int | None:
    """The parent PID of ``pid`` from ``/proc`` (None: gone, or not readable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def children_of(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children (every thread's), from ``/proc``."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return sorted(set(found))


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, ``/proc``): a PID reused differs in it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def identify(pids: Sequence[int]) -> list[tuple[int, int]]:
    """(pid, start time) of each of ``pids`` still there, to be killed only if still the same."""
    return [(pid, started) for pid in pids if (started := start_time(pid)) is not None]


def kill_if_same(identity: tuple[int, int]) -> None:
    """SIGKILL a rank left behind by its agent, only if its PID is still that process.

    Once its agent is gone a rank is re-parented (to init or a subreaper), so
    the parent no longer tells; the start time recorded while it was the
    agent's child does. A PID already gone is fine.
    """
    pid, started = identity
    if start_time(pid) != started:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
