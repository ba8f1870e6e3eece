"""The nemesis: faults injected into a running cluster, each with its healing.

Every fault of ``FaultKind`` is one small injector here: it picks its target
with the ``random.Random`` the generator handed over (``scenario.target_rng``,
never the global generator), puts the fault in place, and returns how to heal
it. ``Nemesis`` records each fault in the history as process ``nemesis``, the
way ``dtr.chaos.history`` describes: ``invoke`` when it starts, ``ok`` once it
is in place (the value names the target, and for a leader fault its ``term``
rides on the event), ``info`` with the same ``op_id`` once healed, or
``fail`` when it found nothing to act on (no leader within the wait, no
running worker) — a fault not injected is not a fault survived.

- ``leader-kill`` / ``replica-kill``: SIGKILL (no lease revoked), heal =
  start again on the same port, waited until serving;
- ``worker-kill``: SIGKILL a workload, heal = start it again with the same id
  and commit queue (``workers.py``);
- ``zombie-leader``: SIGSTOP the leader past its lease TTL, heal = SIGCONT;
- ``partition-worker``: one worker's connections blackholed on every
  replica's proxy (``TcpProxy.cut_off``, ``sockets.py``), heal = heal;
- ``partition-workers``: every replica's proxy blackholed, heal = heal;
- ``etcd-member-kill``: SIGKILL one member of the etcd the cluster owns,
  heal = restart it on its data, waited until healthy;
- ``partition-leader-etcd``: the leader's own etcd proxies blackholed
  (every replica dials etcd through proxies of its own), heal = heal; the
  workers still reach it, so it must fence itself (``check_claims``);
- ``disk-full``: the checkpoint tmpfs filled to ENOSPC with a ballast file
  (``disk.py``), heal = delete it;
- ``slow-storage``: the proxy in front of the run's S3 server delays every
  chunk by the scenario's ``slow_storage_s``, heal = heal;
- ``worker-restart-same-id``: SIGKILL a workload and start it again at once
  under the same id with its commit queue, well inside the heartbeat
  timeout: a new incarnation while the old one is still a live member (the
  fault lasts until the next one; healing has nothing left to undo);
- ``etcd-slow``: every replica's etcd proxies delay each chunk by a seeded
  one-way delay from the scenario's ``etcd_slow_s`` (by default 50-400 ms:
  round trips of 0.1-0.8 s, keep-alives included), heal = heal: a slow etcd
  must cost no leadership (DESIGN §4);
- ``worker-pause``, ``client-cancel``, ``rack-failure``: ``nemesis_workers.py``;
  ``job-restart``: ``nemesis_job.py``; ``rank-kill``, ``agent-leave`` (the
  DDP job's ranks and torchrun agents): ``nemesis_ddp.py``.

What is not here: when faults happen (``scenario.schedule``) and the run
around them (``runner.py``). Faults are injected one at a time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dtr.errors import DtrError

from .cluster import ClusterError, CoordinatorProcess, LocalCluster
from .disk import drain, fill
from .history import Event, EventType, History
from .nemesis_ddp import kill_rank, leave_agent
from .nemesis_job import restart_job
from .nemesis_types import Injected, NoTarget, Targets
from .nemesis_workers import cancel_calls, fail_rack, pause_worker
from .proxy import TcpProxy
from .scenario import SLOW_STORAGE_DELAY_S, FaultKind
from .sockets import client_of

__all__ = ["PROCESS", "SLOW_STORAGE_DELAY_S", "ActiveFault", "FaultRecord", "Nemesis"]

PROCESS = "nemesis"
#: How long a leader fault waits for exactly one leader before it is skipped.
LEADER_WAIT_S = 15.0
#: How long healing waits for a restarted replica or etcd member to serve.
RESTART_WAIT_S = 30.0


@dataclass(frozen=True)
class ActiveFault:
    """A fault in place, until ``Nemesis.heal`` ends it."""

    kind: FaultKind
    op_id: str
    injected: Injected
    started_s: float


@dataclass(frozen=True)
class FaultRecord:
    """One fault as it happened: when, on what, and whether it healed (or was skipped)."""

    kind: FaultKind
    outcome: str  # "healed" | "skipped" | "heal-failed"
    started_s: float
    target: str = ""
    healed_s: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "outcome": self.outcome,
            "started_s": round(self.started_s, 3),
            "healed_s": None if self.healed_s is None else round(self.healed_s, 3),
            "target": self.target,
            "detail": self.detail,
        }


_F_OF = {
    FaultKind.LEADER_KILL: "kill",
    FaultKind.REPLICA_KILL: "kill",
    FaultKind.WORKER_KILL: "kill",
    FaultKind.ETCD_MEMBER_KILL: "kill",
    FaultKind.ZOMBIE_LEADER: "pause",
    FaultKind.PARTITION_WORKER: "partition",
    FaultKind.PARTITION_WORKERS: "partition",
    FaultKind.PARTITION_LEADER_ETCD: "partition",
    FaultKind.DISK_FULL: "fill",
    FaultKind.SLOW_STORAGE: "delay",
    FaultKind.WORKER_RESTART_SAME_ID: "kill",
    FaultKind.ETCD_SLOW: "delay",
    FaultKind.RACK_FAILURE: "kill",
    FaultKind.CLIENT_CANCEL: "cancel",
    FaultKind.JOB_RESTART: "restart",
    FaultKind.WORKER_PAUSE: "pause",
    FaultKind.RANK_KILL: "kill",
    FaultKind.AGENT_LEAVE: "kill",
}


class Nemesis:
    """Injects and heals faults on ``targets``, recording each in ``history``."""

    def __init__(self, targets: Targets, history: History, rng: random.Random) -> None:
        self.targets, self.history, self.rng = targets, history, rng
        self.records: list[FaultRecord] = []
        self._active: list[ActiveFault] = []

    def inject(self, kind: FaultKind) -> ActiveFault | None:
        """Put a fault of ``kind`` in place; None (and a ``fail`` event) when it found no target."""
        f = _F_OF[kind]
        op_id = self.history.op_id(PROCESS)
        started_s = self._record("invoke", f, {"kind": kind.value}, op_id)
        try:
            injected = _INJECTORS[kind](self.targets, self.rng)
        except DtrError as err:
            self._record("fail", f, {"kind": kind.value, "error": str(err)}, op_id)
            self.records.append(FaultRecord(kind, "skipped", started_s, detail=str(err)))
            return None
        value = {"kind": kind.value, **injected.value}
        self._record("ok", f, value, op_id, term=injected.term)
        fault = ActiveFault(kind, op_id, injected, started_s)
        self._active.append(fault)
        return fault

    def heal(self, fault: ActiveFault) -> FaultRecord:
        """End ``fault``; an ``info`` event says it healed (or why healing failed)."""
        self._active.remove(fault)
        value = {"kind": fault.kind.value, **fault.injected.value, "healed": True}
        outcome, detail = "healed", ""
        try:
            fault.injected.heal()
        except DtrError as err:
            outcome, detail = "heal-failed", str(err)
            value = {**value, "healed": False, "error": detail}
        healed_s = self._record("info", _F_OF[fault.kind], value, fault.op_id)
        target = str(fault.injected.value.get("target", ""))
        record = FaultRecord(fault.kind, outcome, fault.started_s, target, healed_s, detail)
        self.records.append(record)
        return record

    def heal_all(self) -> None:
        """Heal every fault still in place (the run ends, or it failed midway)."""
        for fault in list(reversed(self._active)):
            self.heal(fault)

    def _record(
        self,
        kind: EventType,
        f: str,
        value: dict[str, Any],
        op_id: str,
        *,
        term: int | None = None,
    ) -> float:
        now = self.history.clock()
        self.history.record(Event(now, PROCESS, kind, f, value, op_id, term=term))
        return now


# --- the injectors: (targets, rng) -> a fault in place ---------------------------------


def _leader_and_term(cluster: LocalCluster) -> tuple[CoordinatorProcess, int | None]:
    try:
        leader = cluster.leader(timeout_s=LEADER_WAIT_S)
    except ClusterError as err:
        raise NoTarget(f"no single leader to hurt: {err}") from None
    return leader, _term(cluster)


def _term(cluster: LocalCluster) -> int | None:
    """The leader's term as ``ClusterStatus`` says now; None when nobody says."""
    try:
        status = cluster.status(timeout_s=2.0)
    except ClusterError:
        return None
    return int(status.leader.term) if status.HasField("leader") else None


def _restarter(cluster: LocalCluster, replica: CoordinatorProcess) -> Callable[[], None]:
    def restart() -> None:
        replica.start()
        cluster.wait_ready(timeout_s=RESTART_WAIT_S)

    return restart


def _kill_leader(targets: Targets, rng: random.Random) -> Injected:
    del rng  # the leader is the target
    leader, term = _leader_and_term(targets.cluster)
    leader.kill()
    value = {"target": leader.replica_id, "role": "leader"}
    return Injected(value, _restarter(targets.cluster, leader), term)


def _kill_replica(targets: Targets, rng: random.Random) -> Injected:
    running = [r for r in targets.cluster.replicas if r.is_alive() and not r.is_paused()]
    if not running:
        raise NoTarget("no running replica")
    replica = rng.choice(running)
    role = "leader" if replica.is_leader() else "follower"
    term = _term(targets.cluster) if role == "leader" else None
    replica.kill()
    value = {"target": replica.replica_id, "role": role}
    return Injected(value, _restarter(targets.cluster, replica), term)


def _pause_leader(targets: Targets, rng: random.Random) -> Injected:
    del rng
    leader, term = _leader_and_term(targets.cluster)
    leader.pause()
    return Injected({"target": leader.replica_id, "role": "leader"}, leader.resume, term)


def _running_worker(targets: Targets, rng: random.Random) -> str:
    running = targets.workers.running_ids()
    if not running:
        raise NoTarget("no running worker")
    return rng.choice(running)


def _kill_worker(targets: Targets, rng: random.Random) -> Injected:
    worker_id = _running_worker(targets, rng)
    targets.workers.kill(worker_id)
    return Injected({"target": worker_id}, lambda: targets.workers.start(worker_id))


def _heal_proxies(proxies: Sequence[TcpProxy]) -> Callable[[], None]:
    def heal() -> None:
        for proxy in proxies:
            proxy.heal()

    return heal


def _partition_worker(targets: Targets, rng: random.Random) -> Injected:
    worker_id = _running_worker(targets, rng)
    pid = targets.workers.pid(worker_id)
    if pid is None:
        raise NoTarget(f"worker {worker_id} exited")
    for proxy in targets.proxies:
        proxy.cut_off(client_of(pid, proxy.port))
    value = {"target": worker_id, "from": "every replica"}
    return Injected(value, _heal_proxies(targets.proxies))


def _partition_workers(targets: Targets, rng: random.Random) -> Injected:
    del rng
    for proxy in targets.proxies:
        proxy.blackhole()
    value = {"target": "every worker", "from": "every replica"}
    return Injected(value, _heal_proxies(targets.proxies))


def _kill_etcd_member(targets: Targets, rng: random.Random) -> Injected:
    etcd = targets.cluster.owned_etcd
    if etcd is None or len(etcd.members) < 3:
        raise NoTarget("the cluster owns no etcd of 3 or more members")
    index = rng.randrange(len(etcd.members))
    etcd.kill_member(index)

    def restart() -> None:
        etcd.start_member(index, timeout_s=RESTART_WAIT_S)

    return Injected({"target": f"etcd-{index}"}, restart)


def _partition_leader_from_etcd(targets: Targets, rng: random.Random) -> Injected:
    del rng
    leader, term = _leader_and_term(targets.cluster)
    index = targets.cluster.replicas.index(leader)
    if index >= len(targets.etcd_proxies):
        raise NoTarget("the replicas dial etcd directly: no proxy to cut")
    cut = targets.etcd_proxies[index]
    for proxy in cut:
        proxy.blackhole()
    value = {"target": leader.replica_id, "role": "leader", "from": "etcd"}
    return Injected(value, _heal_proxies(cut), term)


def _fill_storage(targets: Targets, rng: random.Random) -> Injected:
    del rng
    if targets.storage_mount is None:
        raise NoTarget("checkpoint storage is not a tmpfs of the harness's")
    try:
        ballast, written = fill(targets.storage_mount)
    except OSError as err:
        raise NoTarget(f"could not fill {targets.storage_mount}: {err}") from None
    value = {"target": "checkpoint storage", "ballast_bytes": written}
    return Injected(value, lambda: drain(ballast))


def _slow_storage(targets: Targets, rng: random.Random) -> Injected:
    del rng
    proxy = targets.storage_proxy
    if proxy is None:
        raise NoTarget("checkpoint storage is not behind a proxy of the harness's")
    delay_s = targets.settings.slow_storage_s
    proxy.delay(delay_s)
    value = {"target": "checkpoint storage", "delay_s": delay_s}
    return Injected(value, proxy.heal)


def _restart_worker_same_id(targets: Targets, rng: random.Random) -> Injected:
    worker_id = _running_worker(targets, rng)
    targets.workers.kill(worker_id)
    targets.workers.start(worker_id)
    return Injected({"target": worker_id, "restarted": "at once"}, lambda: None)


def _slow_etcd(targets: Targets, rng: random.Random) -> Injected:
    proxies = [proxy for replica in targets.etcd_proxies for proxy in replica]
    if not proxies:
        raise NoTarget("the replicas dial etcd directly: no proxy to slow")
    delay_s = round(rng.uniform(*targets.settings.etcd_slow_s), 3)
    for proxy in proxies:
        proxy.delay(delay_s)
    value = {"target": "etcd, from every replica", "delay_s": delay_s}
    return Injected(value, _heal_proxies(proxies))


_INJECTORS: dict[FaultKind, Callable[[Targets, random.Random], Injected]] = {
    FaultKind.LEADER_KILL: _kill_leader,
    FaultKind.REPLICA_KILL: _kill_replica,
    FaultKind.WORKER_KILL: _kill_worker,
    FaultKind.ZOMBIE_LEADER: _pause_leader,
    FaultKind.PARTITION_WORKER: _partition_worker,
    FaultKind.PARTITION_WORKERS: _partition_workers,
    FaultKind.ETCD_MEMBER_KILL: _kill_etcd_member,
    FaultKind.PARTITION_LEADER_ETCD: _partition_leader_from_etcd,
    FaultKind.DISK_FULL: _fill_storage,
    FaultKind.SLOW_STORAGE: _slow_storage,
    FaultKind.WORKER_RESTART_SAME_ID: _restart_worker_same_id,
    FaultKind.ETCD_SLOW: _slow_etcd,
    FaultKind.RACK_FAILURE: fail_rack,
    FaultKind.CLIENT_CANCEL: cancel_calls,
    FaultKind.JOB_RESTART: restart_job,
    FaultKind.WORKER_PAUSE: pause_worker,
    FaultKind.RANK_KILL: kill_rank,
    FaultKind.AGENT_LEAVE: leave_agent,
}
