"""A chaos run whose workload is one real DDP job: ``DdpRun``, picked by ``run_scenario``.

Everything of ``runner._Run`` holds (the cluster behind proxies, the
status poller, the schedule, the settle, etcd's record judged), with the
workers replaced by ``scenario.ddp_agents`` torchrun agents of
``ranks_per_agent`` ranks each (``ddp_agents.AgentPool``) training
``dtr.examples.train`` on dtr's rendezvous, the coordinators and the
run's checkpoint storage. The ranks write their events to ``work_dir/ddp``
(``ddp_events.py``); at the end of the run they are added to the history as
``load`` and ``train`` events on the harness's clock
(``history/ddp-ranks.jsonl``), so the history checkers judge the job's
loads and progress, and the DDP checks (``checker_ddp.py``) join the
verdict: every world resumed from one step, every rank or agent fault was
recovered from, and the last world's ranks finished with bit-identical
parameters.

The record checkers need nothing from the workload: the ranks are dtr
workers (``<host>-rank<R>``) like any other. The history checkers for
barriers, shards and commits see none of those operations (the script
records none) and judge nothing; ``record-*`` judge them from etcd instead.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from dtr.errors import DtrError

from .checker_base import CheckResult, FinalState
from .checker_ddp import check_ddp
from .cluster import ClusterError
from .ddp_agents import AgentPool, DdpConfig, script_from_environment
from .ddp_events import formations, processes, rank_worker_id, read_rank_events, to_history
from .history import Event
from .observer import StatusPoller, capture_final_state
from .runner import _Run
from .scenario_ddp import world_size
from .workers import WorkloadConfig

#: How long the agents may take to form the whole world and train a step (torch imports).
DDP_START_S = 180.0
ZERO_FILE = "zero.json"
_POLL_S = 0.2


class DdpRun(_Run):
    """``_Run`` with torchrun agents for workers, and the DDP job's checks."""

    pool: AgentPool

    def _start_workers(self, stack: ExitStack) -> None:
        s = self.scenario
        #: ``time.time()`` at the harness clock's zero: rank events are on the wall clock.
        self.wall_zero = time.time() - self.history.clock()
        self.events_dir = self.work_dir / "ddp"
        self.state_dir = self.work_dir / "state"
        environment = (
            *self.storage.environment,
            *self.mutant_env.items(),
            ("DTR_COORDINATORS", self.cluster.coordinators),
            ("DTR_JOB", self.cluster.job),
            ("DTR_STATE_DIR", str(self.state_dir)),
            ("OMP_NUM_THREADS", "1"),
        )
        config = WorkloadConfig(
            coordinators=self.cluster.coordinators,
            job=self.cluster.job,
            checkpoint_uri=self.storage.uri,
            start=self.history.start,
            steps=s.steps,
            step_time_s=s.step_time_s,
            environment=environment,
        )
        ddp = DdpConfig(
            agents=s.ddp_agents,
            ranks_per_agent=s.ranks_per_agent,
            rdzv_id=f"{self.cluster.job}-{uuid.uuid4().hex[:8]}",
            events_dir=self.events_dir,
            state_dir=self.state_dir,
            seed=self.seed,
            script=script_from_environment(),
        )
        self.pool = AgentPool(config, ddp, self.work_dir)
        write_wall_zero(self.events_dir, self.wall_zero)
        stack.callback(self.pool.stop_all)
        self.pool.start_all()
        self.sims = None
        self.poller = StatusPoller(self.cluster, self.history, interval_s=0.5).start()
        stack.callback(self.poller.stop)
        self._wait_training()
        self.say(
            f"ddp job: {s.ddp_agents} torchrun agents x {s.ranks_per_agent} ranks "
            f"(rendezvous {ddp.rdzv_id}) training {s.steps} steps"
        )

    def _wait_training(self) -> None:
        """Until the whole world formed and every rank trained a step: the schedule's zero."""
        deadline = time.monotonic() + DDP_START_S
        full = world_size(self.scenario)
        while True:
            for agent in self.pool.worker_ids:
                if not self.pool.is_running(agent):
                    raise ClusterError(
                        f"torchrun agent {agent} exited before training:\n"
                        f"{self.pool.log_tail(agent, 15)}"
                    )
            formed = formations(processes(read_rank_events(self.events_dir)))
            if formed and formed[-1].world == full and formed[-1].stepping_at is not None:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"the DDP job did not train with all {full} ranks within {DDP_START_S:g} s:\n"
                    f"{self.pool.log_tail(self.pool.worker_ids[0], 15)}"
                )
            time.sleep(_POLL_S)

    def finish(self) -> FinalState:
        final = super().finish()
        self._write_history()
        return final

    def _last_world(self) -> list[str]:
        """The worker ids of the last world's ranks (none formed: none)."""
        formed = formations(processes(read_rank_events(self.events_dir)))
        return [rank_worker_id(rank) for rank in range(formed[-1].world)] if formed else []

    def _running_workers(self) -> set[str]:
        """The ranks liveness judges: the last world's, while any agent still runs."""
        return set(self._last_world()) if self.pool.running_ids() else set()

    def _capture(self) -> FinalState:
        """The final state, with the commit queues of the last world's ranks."""
        queues = {
            worker: path
            for worker in self._last_world()
            if (path := self.state_dir / self.cluster.job / f"{worker}.commits.sqlite").exists()
        }
        try:
            return capture_final_state(self.cluster, self.storage.uri, queues, self.storage.options)
        except DtrError as err:  # recorded and reported as the base does
            self.history.record(
                Event(self.history.clock(), "harness", "info", "final", {"error": str(err)})
            )
            self.say(f"the final state could not be captured: {err}")
            return FinalState()

    def _write_history(self) -> None:
        """The ranks' loads and steps into ``history/ddp-ranks.jsonl`` for the checkers."""
        converted = to_history(read_rank_events(self.events_dir), self.wall_zero)
        path = self.work_dir / "history" / "ddp-ranks.jsonl"
        path.write_text("".join(event.to_json() + "\n" for event in converted))

    def report_checks(self, events: Sequence[Event]) -> list[CheckResult]:
        """The DDP job's checks in place of ``record-reports``.

        ``record-reports`` holds the workers' reported barriers, saves and
        commits to etcd's record; the script reports none of them, so it
        would only find parts nobody "reported" (``record-checkpoints`` and
        ``record-parts`` judge those parts from the record and storage).
        """
        faults = [
            (record.kind, record.started_s + self.wall_zero)
            for record in self.nemesis.records
            if record.outcome != "skipped"
        ]
        ddp = check_ddp(read_rank_events(self.events_dir), faults, steps=self.scenario.steps)
        return ddp


def write_wall_zero(events_dir: Path, wall_zero: float) -> None:
    """``events_dir/zero.json``: the wall clock at the run's zero, to read the events later."""
    (events_dir / ZERO_FILE).write_text(json.dumps({"wall_zero": wall_zero}) + "\n")


def read_wall_zero(events_dir: Path) -> float:
    """What ``write_wall_zero`` wrote: rank event time ``t`` is ``t - wall_zero`` in the run."""
    return float(json.loads((events_dir / ZERO_FILE).read_text())["wall_zero"])
