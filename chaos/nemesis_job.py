"""``job-restart``: the whole job stopped and started again over its workers' local state.

What a cluster-wide outage, a redeploy or an operator's "start over" does to
a job: every coordinator replica dies, then every worker, and the job is
started again with the same worker ids, commit queues and state directories.
Half the time (the seeded generator decides) the job's etcd prefix is wiped
first, so the job starts as a *new life* (docs/failure-semantics.md, "A new
job over an old job's name"): the first leader writes a new ``<job>/life``,
the workers' leftover commit records of the old life are set aside, and
training starts again at step 0. Otherwise etcd is kept and the job resumes
from its latest complete step, one life throughout.

The replicas die first, and the workers only once each of them holds a
commit the coordinators never answered (or ``QUIESCE_S`` passed): the fault
is about leftover local state, so it makes sure there is some. The ``ok``
event names what was done (``"etcd": "kept" | "wiped"``, the commits left
queued per worker); the checkers split the history into job lives at a
wiped restart (``checker_lives.py``).

Whatever fails midway, every replica and worker stopped is started again.
A restart that wiped etcd always ends ``ok`` (a replica that did not serve
again is its ``error``), since only an ``ok`` event cuts the lives; one
that kept etcd fails (``fail``) when the replicas did not serve again, and
a failed wipe fails saying it may or may not have applied. Nothing is left to heal: the injector
returns once every worker trained a step again (``training_again_s`` in the
value, from the workers' kill), so the next fault hits a running job (like
``worker-restart-same-id``, nothing to undo).

The prefix is deleted, never compacted: the harness reads etcd's whole
revision history at the end (``etcd_record.py``).
"""

from __future__ import annotations

import random
import time

from dtr.errors import DtrError, StoreError
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from dtr.worker.commit_queue import CommitQueue

from .coordinator_process import ClusterError
from .history import Event
from .nemesis_types import Injected, NoTarget, Targets
from .workers import WorkerPool, wait_for

#: How long the killed replicas' workers may take to queue a commit nobody answers.
QUIESCE_S = 3.0
#: How long the restarted replicas may take to serve again.
RESTART_WAIT_S = 30.0
#: How long the restarted workers may take to train a step again (imports, registration).
TRAINING_WAIT_S = 90.0


def restart_job(targets: Targets, rng: random.Random) -> Injected:
    """Kill every replica, then every worker; keep or wipe etcd; start the job again."""
    workers = targets.workers.running_ids()
    if not workers:
        raise NoTarget("no running worker: the job is over")
    wipe = rng.random() < 0.5
    cluster = targets.cluster
    for replica in cluster.replicas:
        replica.kill()
    queued = _quiesce(targets.workers, workers)
    began = time.monotonic()
    for worker in workers:
        targets.workers.kill(worker)
    ends = {w: _end_of_history(targets.workers, w) for w in workers}
    try:
        deleted = _wipe(cluster.etcd_endpoints, cluster.job) if wipe else 0
    except StoreError as err:
        _start_again(targets, workers)
        raise StoreError(
            f"job-restart: the wipe of etcd failed and may or may not have applied (no new "
            f"job life is recorded); every replica and worker was started again: {err}"
        ) from err
    unready = _start_again(targets, workers)
    etcd = "wiped" if wipe else "kept"
    if unready and not wipe:
        raise ClusterError(
            f"job-restart (etcd kept): every worker was started again, but {unready}"
        )
    trained = _wait_training(targets.workers, ends)
    value = {
        "target": f"every worker and replica, etcd {etcd}",
        "etcd": etcd,
        "keys_deleted": deleted,
        "queued": queued,
        "training_again_s": round(time.monotonic() - began, 3) if trained else None,
        **({"error": unready} if unready else {}),
    }
    return Injected(value, lambda: None)


def _start_again(targets: Targets, workers: list[str]) -> str | None:
    """Start every replica and worker again, whatever fails; why the replicas did not serve.

    Every one of them was stopped by the restart: leaving any down would turn
    the rest of the run into an outage nobody scheduled.
    """
    try:
        for replica in targets.cluster.replicas:
            replica.start()
        targets.cluster.wait_ready(timeout_s=RESTART_WAIT_S)
    except DtrError as err:
        return f"the replicas did not serve again: {err}"
    finally:
        for worker in workers:
            targets.workers.start(worker)
    return None


def _quiesce(pool: WorkerPool, workers: list[str]) -> dict[str, int]:
    """Until each worker still running has a pending commit (or ``QUIESCE_S``); the counts."""

    def pending() -> dict[str, int]:
        return {w: _depth(pool, w) for w in workers}

    def every_one_queued() -> bool:
        return all(n > 0 or not pool.is_running(w) for w, n in pending().items())

    wait_for(every_one_queued, time.monotonic() + QUIESCE_S)
    return pending()


def _depth(pool: WorkerPool, worker: str) -> int:
    """Pending records in the worker's queue file (0 before the worker made it)."""
    path = pool.queue_path(worker)
    if not path.exists():
        return 0
    with CommitQueue(path) as queue:
        return queue.depth


def _end_of_history(pool: WorkerPool, worker: str) -> int:
    """Where the restarted process's events will begin (a torn last line is cut at start)."""
    path = pool.history_path(worker)
    data = path.read_bytes() if path.exists() else b""
    return data.rfind(b"\n") + 1


def _wait_training(pool: WorkerPool, ends: dict[str, int]) -> bool:
    """Until every restarted worker trained a step (or exited): the job runs again.

    The next fault must hit a running job, not one still importing torch;
    False when ``TRAINING_WAIT_S`` passed first.
    """

    def trained(worker: str) -> bool:
        with pool.history_path(worker).open("rb") as history:
            history.seek(ends[worker])
            lines = history.read().split(b"\n")[:-1]  # the last may be half written
        events = (Event.from_json(line.decode()) for line in lines)
        return any(e.f == "train" and e.type == "ok" for e in events)

    def running_again() -> bool:
        return all(not pool.is_running(w) or trained(w) for w in ends)

    return wait_for(running_again, time.monotonic() + TRAINING_WAIT_S)


def _wipe(endpoints: list[str], job: str) -> int:
    """Delete every key of ``job`` (not compacted: the record must stay readable); how many."""
    with EtcdStore(endpoints, timeout_s=5.0) as store:
        return store.delete(JobKeys(job).prefix, prefix=True)
