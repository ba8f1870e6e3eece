"""One chaos run from start to verdict: ``run_scenario``.

The run, in order: etcd and the replicas, each replica behind a ``TcpProxy``
it advertises (so workers and leader hints go through the proxies, while the
harness's own probes dial the replicas); ``scenario.workers`` training
workers (``workers.py``); the status poller; then the schedule
(``scenario.schedule``): each fault injected, held for its duration, healed
(``nemesis.py``), until the duration ends. Then everything is healed and the
run settles: the workers get ``settle_s`` to finish their steps (one still
running then is stopped, and counted). The final state is captured, every
checker runs on the merged history, and the result is written to
``work_dir/results.json`` beside ``work_dir/history/*.jsonl``.

The seed is recorded in the history (a ``harness`` ``run`` event) and in the
result, so a failing run is replayed with ``--seed``. Everything started here
is stopped before ``run_scenario`` returns or raises (one ``ExitStack``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtr import mutants
from dtr.errors import DtrError, InvalidArgument
from dtr.etcd import pick_free_ports
from dtr.keys import JobKeys

from .checker_base import CheckResult, FinalState, Violation
from .checker_completion import check_completion
from .checker_deaths import check_deaths, killed_workers
from .checker_generations import check_generations
from .checker_part_names import check_part_names
from .checker_record import replay_record
from .checker_record_parts import check_parts, storage_verifier
from .checker_reports import check_reports
from .checker_slow_etcd import check_slow_etcd_in
from .checkers import check_all
from .cluster import ClusterError, LocalCluster
from .etcd_record import RecordReader
from .history import Event, History, read_history
from .measures import Failovers, failover_times, operation_counts, settle_time
from .nemesis import FaultRecord, Nemesis
from .nemesis_types import Targets
from .observer import StatusPoller, capture_final_state
from .proxy import TcpProxy
from .record_replay import RecordFacts
from .run_storage import start_storage
from .scenario import Scenario, ScheduledFault, schedule, target_rng
from .sim_pool import SimWorkerPool
from .workers import WorkerOutcome, WorkerPool, WorkloadConfig

__all__ = ["RunResult", "run_scenario"]

Progress = Callable[[str], None]
#: How long the workers may take to train their first step (imports, registration).
TRAINING_START_S = 90.0
_POLL_S = 0.2
#: How long a worker told to stop at the settle deadline may take to drain and leave.
FINISH_GRACE_S = 30.0


@dataclass(frozen=True)
class RunResult:
    """What a run did and found; ``passed`` when every check held."""

    scenario: Scenario
    seed: int
    work_dir: Path
    schedule: tuple[ScheduledFault, ...]
    faults: tuple[FaultRecord, ...]
    operations: dict[str, dict[str, int]]
    checks: tuple[CheckResult, ...]
    failovers: Failovers
    workers: dict[str, WorkerOutcome]
    elapsed_s: float
    settled_s: float | None = None
    #: The planted bug the run carried (``dtr.mutants``), None for the real code.
    mutant: str | None = None

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "seed": self.seed,
            "mutant": self.mutant,
            "passed": self.passed,
            "duration_s": self.scenario.duration_s,
            "settle_s": self.scenario.settle_s,
            "steps": self.scenario.steps,
            "elapsed_s": round(self.elapsed_s, 3),
            "work_dir": str(self.work_dir),
            "schedule": [fault.as_dict() for fault in self.schedule],
            "faults": [fault.as_dict() for fault in self.faults],
            "operations": self.operations,
            "checks": [check.as_dict() for check in self.checks],
            "failover": self.failovers.as_dict(),
            "settled_s": None if self.settled_s is None else round(self.settled_s, 3),
            "workers": {w: outcome.as_dict() for w, outcome in self.workers.items()},
        }


def run_scenario(
    scenario: Scenario,
    *,
    seed: int,
    work_dir: Path,
    duration_s: float | None = None,
    progress: Progress | None = None,
    coordinator_args: Sequence[str] = (),
    plan: Sequence[ScheduledFault] | None = None,
    s3_endpoint: str | None = None,
    ports: Sequence[int] | None = None,
    mutant: str | None = None,
) -> RunResult:
    """Run ``scenario`` with ``seed`` against a fresh local cluster; check every invariant.

    ``duration_s`` overrides the scenario's (its steps scale along).
    ``work_dir`` keeps the logs, histories, checkpoints and ``results.json``;
    it must not hold an earlier run's history. ``progress`` is told what
    happens, a line at a time. ``coordinator_args`` are more ``dtr
    coordinator`` flags for every replica (the tests start a deliberately
    broken one with ``--unsafe-disable-fencing``). ``plan`` replaces the
    seeded schedule (``dtr demo``'s two faults at fixed points). With
    ``storage: s3``, ``s3_endpoint`` names an S3 server to use instead of
    starting one. ``ports`` are the addresses the replicas advertise (the
    proxies in front of them), one per replica; free ports by default.
    ``mutant`` plants one bug of ``dtr.mutants`` in every replica and worker
    the run starts (``DTR_UNSAFE_MUTANT``): the checkers must then fail.
    """
    mutant = mutants.parse(mutant)  # a misspelt mutant is refused before anything starts
    if duration_s is not None:
        scenario = scenario.with_duration(duration_s)
    plan = list(plan) if plan is not None else schedule(scenario, seed)
    work_dir = _fresh_work_dir(work_dir)
    say = progress or (lambda _: None)
    say(
        f"seed {seed}: scenario {scenario.name}, {len(plan)} faults over "
        f"{scenario.duration_s:g} s, then up to {scenario.settle_s:g} s to settle; "
        f"work dir {work_dir}"
    )
    started = time.monotonic()
    run = _run_class(scenario)(
        scenario,
        seed,
        work_dir,
        say,
        coordinator_args=tuple(coordinator_args),
        s3_endpoint=s3_endpoint,
        front_ports=ports,
        mutant=mutant,
    )
    with ExitStack() as stack:
        run.start(stack, plan)
        run.execute(plan)
        final = run.finish()
    events = read_history(sorted((work_dir / "history").glob("*.jsonl")))
    result = RunResult(
        scenario=scenario,
        seed=seed,
        work_dir=work_dir,
        schedule=tuple(plan),
        faults=tuple(run.nemesis.records),
        operations=operation_counts(events),
        checks=(
            *check_all(
                events, final, settle_s=scenario.settle_s, reported_commits=not scenario.ddp_agents
            ),
            *run.record_checks,
            *run.report_checks(events),
            check_workers(run.outcomes),
        ),
        failovers=failover_times(events),
        workers=run.outcomes,
        elapsed_s=time.monotonic() - started,
        settled_s=settle_time(events),
        mutant=mutant,
    )
    (work_dir / "results.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return result


def _run_class(scenario: Scenario) -> type[_Run]:
    """The independent workers' run, or the DDP job's (``runner_ddp.py``)."""
    if scenario.ddp_agents:
        from .runner_ddp import DdpRun  # it builds on this module

        return DdpRun
    return _Run


def _fresh_work_dir(work_dir: Path) -> Path:
    """``work_dir`` made absolute with an empty ``history/``: one run's events, never two."""
    work_dir = Path(work_dir).resolve()
    history_dir = work_dir / "history"
    if history_dir.exists() and any(history_dir.iterdir()):
        raise InvalidArgument(f"{work_dir} already holds a run's history; give a fresh --work-dir")
    history_dir.mkdir(parents=True, exist_ok=True)
    return work_dir


def check_workers(outcomes: dict[str, WorkerOutcome]) -> CheckResult:
    """The harness's own check: no worker process failed (exited non-zero on its own).

    A worker the nemesis killed shows -9 among its exit codes and then ran
    again; one stopped at the settle deadline is judged by liveness, not here.
    """
    violations = tuple(
        Violation(f"worker {worker_id} exited with code {outcome.exit_code}")
        for worker_id, outcome in sorted(outcomes.items())
        if not (outcome.stopped or outcome.killed) and outcome.exit_code not in (0, None)
    )
    return CheckResult("workers", not violations, len(outcomes), violations)


class _Run:
    """The processes, proxies and recorders of one run, and its phases."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        work_dir: Path,
        say: Progress,
        *,
        coordinator_args: tuple[str, ...] = (),
        s3_endpoint: str | None = None,
        front_ports: Sequence[int] | None = None,
        mutant: str | None = None,
    ) -> None:
        self.scenario, self.seed, self.work_dir, self.say = scenario, seed, work_dir, say
        #: What every process of the run gets in its environment for the planted bug.
        self.mutant_env = {mutants.ENV: mutant} if mutant is not None else {}
        self.coordinator_args = coordinator_args
        self.s3_endpoint, self.front_ports = s3_endpoint, front_ports
        self.history = History(work_dir / "history" / "harness.jsonl")

    def start(self, stack: ExitStack, plan: list[ScheduledFault]) -> None:
        """Proxies, cluster, workers, poller; each registered on ``stack`` to be stopped."""
        stack.callback(self.history.close)
        value = {
            "scenario": self.scenario.name,
            "seed": self.seed,
            "mutant": self.mutant_env.get(mutants.ENV),
            "schedule": [fault.as_dict() for fault in plan],
        }
        self.history.record(Event(0.0, "harness", "info", "run", value))
        job = f"chaos-{self.scenario.name}-{self.seed}"
        self.keys = JobKeys(job)
        self.record_checks: list[CheckResult] = []
        self.storage = start_storage(stack, self.scenario, self.work_dir, job, self.s3_endpoint)
        self._start_cluster(stack, job)
        # etcd's record, followed from revision 1 as it is written (``_audit_record``).
        self.record_reader = RecordReader(self.cluster.etcd_endpoints, self.keys).start()
        stack.callback(self.record_reader.close)
        self._start_workers(stack)
        targets = Targets(
            self.cluster,
            self.proxies,
            self.pool,
            self.etcd_proxies,
            self.storage.mount,
            self.storage.proxy,
            self.sims,
            self.scenario,
        )
        self.nemesis = Nemesis(
            targets,
            self._nemesis_history(stack),
            target_rng(self.seed),
        )
        # No heal on the way out: stopping undoes every fault (a paused replica is
        # continued, proxies close), and a restart just to stop again costs seconds.

    def _route_etcd(self, replica: int, endpoints: list[str]) -> list[str]:
        """Replica ``replica`` dials etcd through proxies of its own (partition-leader-etcd)."""
        del replica  # proxies are appended in replica order
        proxies = [TcpProxy(endpoint).start() for endpoint in endpoints]
        self.etcd_proxies.append(proxies)
        return [proxy.address for proxy in proxies]

    def _start_cluster(self, stack: ExitStack, job: str) -> None:
        """etcd and the replicas: each behind a proxy it advertises, dialling etcd via its own."""
        s = self.scenario
        ports = pick_free_ports(2 * s.replicas)  # one call: no port handed out twice
        listen, fronts = ports[: s.replicas], ports[s.replicas :]
        if self.front_ports is not None:
            fronts = list(self.front_ports)
        self.proxies: list[TcpProxy] = []
        self.etcd_proxies: list[list[TcpProxy]] = []
        stack.callback(self._close_proxies)
        for port, front in zip(listen, fronts, strict=True):
            self.proxies.append(TcpProxy(f"127.0.0.1:{port}", listen_port=front).start())
        self.cluster = LocalCluster.start(
            replicas=s.replicas,
            etcd_members=s.etcd_members,
            job=job,
            lease_ttl_s=s.lease_ttl_s,
            renew_deadline_s=round(s.lease_ttl_s * 2 / 3, 3),
            heartbeat_timeout_s=s.heartbeat_timeout_s,
            ports=listen,
            advertise_ports=fronts,
            work_dir=self.work_dir / "logs",
            route_etcd=self._route_etcd,
            extra_args=self.coordinator_args,
            environment=self.mutant_env,
        )
        stack.callback(self.cluster.stop)
        self.say(
            f"cluster: {s.replicas} replicas behind proxies, etcd of {s.etcd_members}, "
            f"job {self.cluster.job}; leader {self.cluster.leader().replica_id}"
        )

    def _nemesis_history(self, stack: ExitStack) -> History:
        history = History(self.work_dir / "history" / "nemesis.jsonl", start=self.history.start)
        stack.callback(history.close)
        return history

    def _start_workers(self, stack: ExitStack) -> None:
        s = self.scenario
        config = WorkloadConfig(
            coordinators=self.cluster.coordinators,
            job=self.cluster.job,
            checkpoint_uri=self.storage.uri,
            start=self.history.start,
            steps=s.steps,
            step_time_s=s.step_time_s,
            environment=(*self.storage.environment, *self.mutant_env.items()),
        )
        self.pool = WorkerPool([f"w{i}" for i in range(s.workers)], config, self.work_dir)
        stack.callback(self.pool.stop_all)
        self.pool.start_all()
        self.sims: SimWorkerPool | None = None
        if s.sim_workers:
            per_process = s.sim_workers // s.sim_processes
            self.sims = SimWorkerPool(s.sim_processes, per_process, config, self.work_dir)
            stack.callback(self.sims.stop_all)
            self.sims.start_all()
        self.poller = StatusPoller(self.cluster, self.history, interval_s=0.5).start()
        stack.callback(self.poller.stop)
        self._wait_training()
        self.say(f"workers: {', '.join(self.pool.worker_ids)} training {s.steps} steps each")
        if self.sims is not None:
            self.say(f"simulated workers: {s.sim_workers} in {s.sim_processes} processes")

    def _wait_training(self) -> None:
        """Until every worker trained a step: the schedule's zero is a training cluster."""
        deadline = time.monotonic() + TRAINING_START_S
        waiting = set(self.pool.worker_ids)
        while waiting:
            for worker_id in sorted(waiting):
                if not self.pool.is_running(worker_id):
                    raise ClusterError(
                        f"worker {worker_id} exited before training:\n"
                        f"{self.pool.log_tail(worker_id)}"
                    )
                if _has_trained(self.pool.history_path(worker_id)):
                    waiting.discard(worker_id)
            if waiting and time.monotonic() >= deadline:
                raise ClusterError(
                    f"workers {sorted(waiting)} trained no step within {TRAINING_START_S:g} s"
                )
            time.sleep(_POLL_S)

    def execute(self, plan: list[ScheduledFault]) -> None:
        """The fault phase: each fault at its time, held, healed; ends early if all finished."""
        zero = time.monotonic()
        self.say(f"fault phase: from t={self.history.clock():.1f}s")
        for fault in plan:
            if not self._wait_until(zero + fault.at_s):
                self.say("every worker finished: the fault phase ends early")
                return
            active = self.nemesis.inject(fault.kind)
            if active is None:
                self.say(f"t={self.history.clock():.1f}s {fault.kind.value}: skipped, no target")
                continue
            target = active.injected.value.get("target", "")
            self.say(f"t={active.started_s:.1f}s {fault.kind.value} {target}")
            time.sleep(fault.duration_s)  # the fault lasting is the workload here
            record = self.nemesis.heal(active)
            self.say(f"t={record.healed_s or 0:.1f}s {record.outcome} {fault.kind.value}")
        self._wait_until(zero + self.scenario.duration_s)

    def _wait_until(self, deadline: float) -> bool:
        """Let the workload run until ``deadline``; False as soon as every worker has exited."""
        while (remaining := deadline - time.monotonic()) > 0:
            if self.all_exited():
                return False
            time.sleep(min(_POLL_S, remaining))
        return True

    def all_exited(self) -> bool:
        return self.pool.all_exited() and (self.sims is None or self.sims.all_exited())

    @property
    def outcomes(self) -> dict[str, WorkerOutcome]:
        """Each real worker's outcome, and each simulated workers' process's."""
        return {**self.pool.outcomes, **(self.sims.outcomes if self.sims is not None else {})}

    def finish(self) -> FinalState:
        """Heal, settle, stop the workers still training, then capture the final state.

        Workers still training at the settle deadline are told to finish
        (SIGTERM: they drain their commit queues and leave) before anything is
        captured, so the final state is not a snapshot of a moving target; the
        liveness check judges them on what they trained during the settle.
        """
        self.nemesis.heal_all()
        self.say(f"settling: up to {self.scenario.settle_s:g} s for the workers to finish")
        settle = {"settle_s": self.scenario.settle_s}
        self.history.record(Event(self.history.clock(), "harness", "info", "settle", settle))
        deadline = time.monotonic() + self.scenario.settle_s
        self.pool.wait_all(deadline)
        if self.sims is not None:
            self.sims.wait_all(deadline)
        running = self._running_workers()
        stopped = self.pool.finish_all(FINISH_GRACE_S)
        stopped += self.sims.stop_all() if self.sims is not None else []
        if stopped:
            self.say(f"stopped at the settle deadline: {', '.join(stopped)}")
        self.poller.stop()
        self.poller.poll()
        final = self._capture()
        self.record_checks = self._audit_record()
        # Liveness judges the workers that were still training at the deadline.
        return dataclasses.replace(final, live_workers=tuple(sorted(running)))

    def _audit_record(self) -> list[CheckResult]:
        """Judge etcd's own record of the job, read before etcd stops; keep its facts.

        ``checker_record.py`` judges the record alone, ``record-parts`` the
        retained steps' parts against storage; ``record-reports`` needs the
        workers' histories, read after the run (``report_checks``).
        """
        self.record_facts: RecordFacts | None = None
        try:
            events = self.record_reader.finish()
        except DtrError as err:
            why = f"etcd's record could not be read: {err}"
            self.say(why)
            return [CheckResult("record", False, 0, (Violation(why),))]
        replay = replay_record(events, self.keys)
        generations = check_generations(events, self.keys)
        deaths = check_deaths(events, self.keys, killed_workers(self.sims))
        completion = check_completion(events, self.keys)
        names = check_part_names(events, self.keys)
        del events  # millions in a long soak: only the facts are kept
        self.record_facts = replay.facts
        try:
            with storage_verifier(self.storage.uri, self.storage.options) as verify:
                parts = check_parts(replay.facts, verify)
        except DtrError as err:
            why = f"the checkpoint storage could not be opened: {err}"
            parts = CheckResult("record-parts", False, 0, (Violation(why),))
        slow = check_slow_etcd_in(self.work_dir, self.history)
        return [*replay.results, generations, deaths, completion, names, parts, slow]

    def report_checks(self, events: Sequence[Event]) -> list[CheckResult]:
        """``record-reports``: the workers' histories against the record read in ``finish``."""
        if self.record_facts is None:
            return []  # the record could not be read: ``record`` failed already
        return [check_reports(events, self.record_facts)]

    def _running_workers(self) -> set[str]:
        running = set(self.pool.running_ids())
        if self.sims is not None:
            running |= {
                worker_id
                for i, name in enumerate(self.sims.names)
                if name in self.sims.running_names()
                for worker_id in self.sims.worker_ids_of(i)
            }
        return running

    def _capture(self) -> FinalState:
        queues = {w: self.pool.queue_path(w) for w in self.pool.worker_ids}
        try:
            return capture_final_state(self.cluster, self.storage.uri, queues, self.storage.options)
        except DtrError as err:
            self.history.record(
                Event(self.history.clock(), "harness", "info", "final", {"error": str(err)})
            )
            self.say(f"the final state could not be captured: {err}")
            return FinalState()

    def _close_proxies(self) -> None:
        for proxy in [*self.proxies, *(p for ps in self.etcd_proxies for p in ps)]:
            proxy.close()


def _has_trained(path: Path) -> bool:
    if not path.exists():
        return False
    return any(e.f == "train" and e.type == "ok" for e in read_history([path]))
