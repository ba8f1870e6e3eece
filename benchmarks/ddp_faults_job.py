"""The torchrun jobs of ``ddp_faults.py``: two agents, their ranks, the faults and CPU samples.

Split from the benchmark so that each file stays readable; nothing here
decides what is measured (``ddp_faults.py``) or how it is judged
(``ddp_faults_report.py``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddp_faults_report import Event, Mark, parse_agent_log, read_events

from dtr.chaos.cluster import LocalCluster
from dtr.errors import DtrError
from dtr.etcd import EtcdCluster, pick_free_ports

LOOPBACK = "127.0.0.1"
LEASE_TTL_S = 3  # LocalCluster's default, passed explicitly: the leader-kill target derives from it
WORLD = 2
TORCHRUN = Path(sys.executable).with_name("torchrun")
POLL_S = 0.05


@dataclass
class Job:
    """One torchrun job of two agents: its processes, directories and what happened to it."""

    name: str
    directory: Path
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kill_t: float | None = None
    note: dict[str, Any] = field(default_factory=dict)
    #: (wall clock, CPU s of the agents, the coordinators, the ranks) at every poll of run_job.
    cpu_timeline: list[tuple[float, float, float, float]] = field(default_factory=list)

    def cpu_between(self, begin: float, end: float) -> dict[str, float]:
        """CPU seconds the agents and the coordinators used from ``begin`` to ``end``."""
        before = [s for s in self.cpu_timeline if s[0] <= begin] or self.cpu_timeline[:1]
        after = [s for s in self.cpu_timeline if s[0] >= end] or self.cpu_timeline[-1:]
        if not before or not after:
            return {}
        first, last = before[-1], after[0]
        return {
            "agent_cpu_recovery_s": round(last[1] - first[1], 2),
            "coordinator_cpu_recovery_s": round(last[2] - first[2], 2),
            "rank_cpu_recovery_s": round(last[3] - first[3], 2),
        }

    @property
    def events_dir(self) -> Path:
        return self.directory / "events"

    def events(self) -> list[Event]:
        return read_events(self.events_dir) if self.events_dir.is_dir() else []

    def agent_marks(self) -> list[list[Mark]]:
        year = time.localtime(self.kill_t).tm_year
        return [
            parse_agent_log(
                (self.directory / f"agent-{i}.log").read_text(errors="replace").splitlines(), year
            )
            for i in range(len(self.agents))
        ]

    def running(self) -> bool:
        return any(a.poll() is None for a in self.agents)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM our agents (torchrun passes it to its ranks), SIGKILL what outlives grace_s."""
        for agent in self.agents:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
        for agent in self.agents:
            try:
                agent.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(timeout=30)


def start_job(job: Job, cluster: LocalCluster, backend: str, args: argparse.Namespace) -> None:
    """Start the two agents of ``job`` at once, each logging to a file of its own."""
    job.directory.mkdir(parents=True, exist_ok=True)
    # c10d: the first agent to bind this port hosts the store
    endpoint = cluster.coordinators if backend == "dtr" else f"{LOOPBACK}:{pick_free_ports(1)[0]}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DTR_COORDINATORS": cluster.coordinators,
        "DTR_JOB": cluster.job,
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "PYTHONUNBUFFERED": "1",
        "LOGLEVEL": "INFO",  # the agents log their rendezvous rounds (ddp_faults_report)
    }
    argv = [str(TORCHRUN), "--nnodes", str(WORLD), "--nproc-per-node", "1"]
    argv += ["--max-restarts", "3", "--rdzv-backend", backend, "--rdzv-endpoint", endpoint]
    argv += ["--rdzv-id", job.name, "--local-addr", LOOPBACK, str(args.script)]
    argv += ["--steps", str(job.note["steps"]), "--step-time", str(args.step_time)]
    argv += ["--save-every", str(args.save_every), "--events", str(job.events_dir)]
    argv += ["--checkpoint", (job.directory / "checkpoints").as_uri()]
    argv += ["--dataset", job.name]
    job.note["argv"] = argv
    for i in range(WORLD):
        with (job.directory / f"agent-{i}.log").open("wb") as log:
            job.agents.append(
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
            )


def run_job(
    job: Job,
    ready: Callable[[list[Event]], bool],
    fault: Callable[[list[Event]], None],
    deadline_s: float,
    cluster: LocalCluster,
) -> None:
    """Poll the events; once ``ready``, inject ``fault``; then wait for the agents to exit.

    Every poll also reads the CPU seconds our agents and the coordinators have
    used (``/proc``), so a backend that costs CPU on a 2-core machine shows.
    """
    deadline = time.monotonic() + deadline_s
    cpu: dict[str, dict[int, float]] = {
        "agent_cpu_s": {},
        "coordinator_cpu_s": {},
        "rank_cpu_s": {},
    }
    try:
        while job.running() and time.monotonic() < deadline:
            if job.kill_t is None and "error" not in job.note and ready(events := job.events()):
                try:
                    fault(events)
                except (OSError, RuntimeError, DtrError) as err:
                    job.note["error"] = f"injecting the fault failed: {err}"
            _sample_cpu(cpu["agent_cpu_s"], [a.pid for a in job.agents])
            _sample_cpu(cpu["coordinator_cpu_s"], [r.pid for r in cluster.replicas if r.pid])
            _sample_cpu(cpu["rank_cpu_s"], [c for a in job.agents for c in _children(a.pid)])
            agents, coordinators, ranks = (sum(used.values()) for used in cpu.values())
            job.cpu_timeline.append((time.time(), agents, coordinators, ranks))
            time.sleep(POLL_S)
    finally:
        timed_out = job.running()
        job.stop()
        job.note["timed_out"] = timed_out
        job.note["exit_codes"] = [a.returncode for a in job.agents]
        job.note |= {key: round(sum(used.values()), 2) for key, used in cpu.items()}


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s children, whichever of its threads started them."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def _sample_cpu(seen: dict[int, float], pids: list[int]) -> None:
    """The latest user + system CPU seconds of each pid (its own, not its children's)."""
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited: the last sample stands
        seen[pid] = (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime


def kill_rank(job: Job, rank: int) -> Callable[[list[Event]], None]:
    """SIGKILL the current process of ``rank``, once sure it is a child of one of our agents."""

    def fault(events: list[Event]) -> None:
        pid = [e for e in events if e.event == "start" and e.rank == rank][-1].pid
        parents = {a.pid for a in job.agents}
        if _parent(pid) not in parents:
            raise RuntimeError(f"rank {rank}'s pid {pid} is not a child of our agents {parents}")
        job.kill_t = time.time()
        os.kill(pid, signal.SIGKILL)
        job.note["killed_pid"] = pid

    return fault


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def kill_leader(job: Job, cluster: LocalCluster) -> Callable[[list[Event]], None]:
    """SIGKILL the coordinator leader; note which replica and how long until a new one led."""

    def fault(events: list[Event]) -> None:
        old = cluster.leader(timeout_s=10.0)
        job.kill_t = time.time()
        old.kill()
        new = cluster.wait_new_leader(old, timeout_s=30.0)
        job.note["failover_s"] = round(time.time() - job.kill_t, 3)
        job.note["killed_replica"], job.note["new_leader"] = old.replica_id, new.replica_id

    return fault


def start_cluster(etcd: EtcdCluster, job: Job) -> LocalCluster:
    """Three fresh coordinators of a job of the trial's own, on the run's etcd.

    A job of its own per trial: checkpoints are recorded per job and step, so a
    trial sharing a job would find the previous trial's steps as the latest.
    """
    return LocalCluster.start(
        replicas=3,
        etcd=etcd.endpoints,
        job=job.name,
        lease_ttl_s=LEASE_TTL_S,
        work_dir=job.directory / "cluster",
    )
