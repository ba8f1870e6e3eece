"""The harness's own observations: status polls during a run, the final state after it.

``StatusPoller`` asks the cluster for ``ClusterStatus`` on a background
thread and records what the checkers need from it: ``membership`` events
(generation → live members; the barrier and shard checkers judge against
them), ``status`` events (the latest complete step, which must never move
back) and one ``claim`` per running replica, asked directly (not through a
proxy): whether it says it leads, and at which term. A leader answers
``ClusterStatus`` from its cached view, so a leader cut off from etcd still
answers, and the claims show whether it fenced itself in time.
``capture_final_state`` gathers the end-of-run facts of ``FinalState``: the
complete steps and whether each part's bytes verify on storage, the leader,
the live workers and the commits still queued.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dtr.errors import DtrError
from dtr.storage import Checksum, open_storage
from dtr.worker.checkpoint_rpc import LatestCheckpoint, fetch_latest
from dtr.worker.client import CoordinatorClient
from dtr.worker.commit_queue import CommitQueue

from .checker_base import FinalState
from .cluster import CoordinatorProcess, LocalCluster
from .history import Event, EventType, History

PROCESS = "harness"
#: A replica that does not answer a claim probe within this long is not observed.
CLAIM_TIMEOUT_S = 1.0


class StatusPoller:
    """Records ``membership`` and ``status`` events every ``interval_s`` until stopped."""

    def __init__(self, cluster: LocalCluster, history: History, interval_s: float = 0.5) -> None:
        self._cluster, self._history, self.interval_s = cluster, history, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dtr-chaos-status", daemon=True)
        self.polls = 0

    def start(self) -> StatusPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def poll(self) -> None:
        """One poll; a cluster that does not answer is simply not observed this time."""
        op_id = self._history.op_id(PROCESS)
        self._record("invoke", "status", {}, op_id)
        try:
            status = self._cluster.status(timeout_s=2.0)
        except DtrError as err:
            self._record("fail", "status", {"error": type(err).__name__}, op_id)
            return
        latest = status.latest_checkpoint.step if status.HasField("latest_checkpoint") else None
        self._record("ok", "status", {"latest_step": latest}, op_id)
        if status.HasField("leader"):  # a follower's view of membership may lag; still a fact
            members = sorted(w.id for w in status.workers if w.alive)
            value = {"generation": status.generation, "members": members}
            self._record("ok", "membership", value, None, generation=status.generation)
        for replica in self._cluster.replicas:
            if replica.is_alive() and not replica.is_paused():
                self._probe_claim(replica)
        self.polls += 1

    def _probe_claim(self, replica: CoordinatorProcess) -> None:
        """One ``claim``: does ``replica`` say it leads, and under which term."""
        op_id = self._history.op_id(PROCESS)
        self._record("invoke", "claim", {"replica": replica.replica_id}, op_id)
        try:
            header = replica.cluster_status(timeout_s=CLAIM_TIMEOUT_S).header
        except DtrError as err:
            self._record("fail", "claim", {"replica": replica.replica_id, "error": str(err)}, op_id)
            return
        value = {
            "replica": replica.replica_id,
            "is_leader": header.is_leader,
            "term": header.term or None,
        }
        self._record("ok", "claim", value, op_id)

    def _record(
        self,
        kind: EventType,
        f: str,
        value: dict[str, object],
        op_id: str | None,
        generation: int | None = None,
    ) -> None:
        event = Event(self._history.clock(), PROCESS, kind, f, value, op_id, generation=generation)
        self._history.record(event)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()


def capture_final_state(
    cluster: LocalCluster,
    storage_uri: str,
    queues: Mapping[str, Path],
    storage_options: Mapping[str, Any] | None = None,
) -> FinalState:
    """The end-of-run facts: complete steps (parts verified on storage), leader, workers, queues.

    ``storage_options`` go to ``open_storage`` (an S3 run's own endpoint).
    """
    status = cluster.status()
    # The replicas' own addresses first; their advertised ones (proxies) too, so a
    # leader hint, which names the advertised address, is one the client may follow.
    addresses = list(dict.fromkeys([*cluster.endpoints, *cluster.coordinators.split(",")]))
    client = CoordinatorClient(addresses, job=cluster.job, caller_id="dtr-chaos")
    complete: dict[int, tuple[str, ...]] = {}
    verified: dict[tuple[int, str], bool] = {}
    try:
        latest = fetch_latest(client)
        while latest is not None:
            complete[latest.step] = tuple(p.worker_id for p in latest.parts)
            verified.update(_verify(storage_uri, latest, storage_options or {}))
            latest = fetch_latest(client, before_step=latest.step)
    finally:
        client.close()
    pending = {}
    for worker_id, path in queues.items():
        with CommitQueue(path) as queue:
            pending[worker_id] = queue.depth
    return FinalState(
        complete_steps=complete,
        latest_step=status.latest_checkpoint.step if status.HasField("latest_checkpoint") else None,
        verified_parts=verified,
        leader=status.leader.id if status.HasField("leader") else None,
        live_workers=tuple(sorted(w.id for w in status.workers if w.alive)),
        pending_commits=pending,
    )


def _verify(
    storage_uri: str, latest: LatestCheckpoint, options: Mapping[str, Any]
) -> dict[tuple[int, str], bool]:
    storage = open_storage(storage_uri, **options)
    result = {}
    try:
        for part in latest.parts:
            try:
                expected = Checksum.of(part.algorithm, part.hex_digest)
                storage.read_verified(storage.name_of(part.uri), expected, part.size_bytes)
                result[(latest.step, part.worker_id)] = True
            except DtrError:
                result[(latest.step, part.worker_id)] = False
    finally:
        storage.close()
    return result
