"""``job-restart``: refused beside simulated workers; a restart failing midway restarts all."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from dtr.chaos import nemesis_job
from dtr.chaos.cluster import LocalCluster
from dtr.chaos.coordinator_process import ClusterError
from dtr.chaos.nemesis_types import Injected, Targets
from dtr.chaos.scenario import FaultKind, Scenario, ScenarioError
from dtr.chaos.workers import WorkerPool
from dtr.errors import StoreError


def test_a_job_restart_beside_simulated_workers_is_refused_naming_the_field() -> None:
    with pytest.raises(ScenarioError, match="job-restart needs sim_workers: 0") as refused:
        Scenario(
            "restart-sims",
            "a job restart with simulated workers",
            ((FaultKind.JOB_RESTART, 1.0),),
            sim_workers=200,
            sim_processes=2,
            step_time_s=0.05,
        )
    assert refused.value.field == "sim_workers"


def test_a_job_restart_of_real_workers_only_is_accepted() -> None:
    scenario = Scenario("restart", "a job restart", ((FaultKind.JOB_RESTART, 1.0),))
    assert scenario.kinds == {FaultKind.JOB_RESTART}


# --- a restart that fails midway starts again everything it stopped -------------------
#
# Fakes of the cluster and the worker pool, not real processes: a replica that never
# serves again, or an etcd wipe that fails, cannot be provoked on demand in a real
# cluster. The wipe itself is real: it dials a refused loopback port.


class FakeReplica:
    """A replica that records whether it runs."""

    def __init__(self) -> None:
        self.running = True

    def kill(self) -> None:
        self.running = False

    def start(self) -> None:
        self.running = True


class FakeCluster:
    """Replicas that never serve again; an etcd nobody listens on."""

    def __init__(self) -> None:
        self.replicas = [FakeReplica(), FakeReplica()]
        self.etcd_endpoints = ["127.0.0.1:1"]
        self.job = "restart"

    def wait_ready(self, timeout_s: float) -> None:
        raise ClusterError(f"no leader within {timeout_s} s")


class FakePool:
    """Workers that are running or not, with history and queue paths under ``root``."""

    def __init__(self, root: Path, workers: list[str]) -> None:
        self.root, self.running = root, set(workers)

    def running_ids(self) -> list[str]:
        return sorted(self.running)

    def is_running(self, worker: str) -> bool:
        return worker in self.running

    def kill(self, worker: str) -> None:
        self.running.discard(worker)

    def start(self, worker: str) -> None:
        self.running.add(worker)

    def queue_path(self, worker: str) -> Path:
        return self.root / f"{worker}.queue"

    def history_path(self, worker: str) -> Path:
        return self.root / f"{worker}.jsonl"


def restart(tmp_path: Path, seed: int) -> tuple[FakeCluster, FakePool, Callable[[], Injected]]:
    cluster, pool = FakeCluster(), FakePool(tmp_path, ["w0", "w1"])
    targets = Targets(cast(LocalCluster, cluster), (), cast(WorkerPool, pool))
    return cluster, pool, lambda: nemesis_job.restart_job(targets, random.Random(seed))


@pytest.fixture(autouse=True)
def no_quiesce(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake workers never queue a commit: don't wait for one."""
    monkeypatch.setattr(nemesis_job, "QUIESCE_S", 0.0)


def test_a_kept_restart_whose_replicas_do_not_serve_fails_with_every_process_started(
    tmp_path: Path,
) -> None:
    cluster, pool, inject = restart(tmp_path, seed=0)  # random() 0.84: etcd kept
    with pytest.raises(ClusterError, match=r"etcd kept.*no leader within"):
        inject()
    assert all(r.running for r in cluster.replicas)
    assert pool.running_ids() == ["w0", "w1"]


def test_a_failed_wipe_fails_saying_so_with_every_process_started(tmp_path: Path) -> None:
    cluster, pool, inject = restart(tmp_path, seed=1)  # random() 0.13: etcd wiped
    with pytest.raises(StoreError, match="the wipe of etcd failed and may or may not have"):
        inject()
    assert all(r.running for r in cluster.replicas)
    assert pool.running_ids() == ["w0", "w1"]
