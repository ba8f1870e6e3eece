"""Checkpoint parts and commit records bound to who made them (issue 15 items 4, 5, suspects).

Real etcd, real coordinator processes, real files; workers are ``Worker``
objects in this process talking gRPC to them, as a training script does.

- Item 4: a part object is never written twice. A restarted worker that saves
  a step again (``for step in range(loaded, ...)``) must not touch the object
  the complete step references.
- Suspect: in replicated mode, a writer partitioned past the heartbeat
  timeout flushes its superseded commit after the others completed the step
  with its object; that answer must not delete the object.
- Item 5: a queue left by another life of the job (another cluster) never
  blocks the new life: its record is set aside, logged and counted, and the
  new life checkpoints the same step.
- Suspect: ``wait()`` without a timeout must not hang on a head record that
  keeps failing with an error that is no verdict on it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from dtr.chaos.cluster import LocalCluster
from dtr.errors import AlreadyExists, CheckpointError, DtrError, WorkerSuperseded
from dtr.etcd import RunningEtcd
from dtr.storage import Checksum, open_storage
from dtr.worker import CheckpointManager, Worker
from dtr.worker.commit_queue import CommitQueue
from helpers import ProxiedCluster, proxied_cluster, wait_until

pytestmark = pytest.mark.integration


def state_of(value: float) -> dict[str, torch.Tensor]:
    return {"weights": torch.full((256,), value)}


def complete_steps_verify(worker: Worker, uri: str) -> list[int]:
    """Every complete step the coordinators know, newest first, after verifying each part."""
    storage, steps = open_storage(uri), []
    latest = worker.latest_checkpoint()
    while latest is not None:
        for part in latest.parts:
            expected = Checksum.of(part.algorithm, part.hex_digest)
            storage.read_verified(storage.name_of(part.uri), expected, part.size_bytes)
        steps.append(latest.step)
        latest = worker.latest_checkpoint(before_step=latest.step)
    return steps


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=1, etcd=etcd, job=f"id-{uuid.uuid4().hex[:10]}") as started:
        yield started


def test_a_restarted_worker_saving_a_complete_step_again_leaves_its_part_verifying(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    uri, queue = f"file://{tmp_path}/ckpt", tmp_path / "w0.sqlite"
    options = {"worker_id": "w0", "job": cluster.job, "heartbeat_interval_s": 0.2}
    with (
        Worker(cluster.coordinators, **options) as first,
        CheckpointManager(first, uri, queue_path=queue) as manager,
    ):
        for step in (10, 20):
            manager.save_async(state_of(step), step).result(timeout=30)
        manager.wait(timeout_s=30)
    # The same id and state directory, a new process: it resumes at 20 and saves 20 again.
    with (
        Worker(cluster.coordinators, **options) as second,
        CheckpointManager(second, uri, queue_path=queue) as manager,
    ):
        state, step = manager.load_latest()
        assert step == 20 and torch.equal(state["weights"], state_of(20)["weights"])
        resaved = manager.save_async(state_of(-1.0), 20)  # other bytes, same step
        try:  # superseded (a new generation), or refused by the queue (the same one)
            resaved.result(timeout=30)
            manager.wait(timeout_s=30)
        except AlreadyExists:
            pass
        assert complete_steps_verify(second, uri) == [20, 10]
        state, step = manager.load_latest()
        assert step == 20 and torch.equal(state["weights"], state_of(20)["weights"])


@pytest.fixture
def proxied(etcd: RunningEtcd) -> Iterator[ProxiedCluster]:
    with proxied_cluster(etcd, 1, heartbeat_timeout_s=2.0) as started:
        yield started


def test_a_partitioned_writers_superseded_commit_keeps_the_object_others_completed_with(
    proxied: ProxiedCluster, tmp_path: Path
) -> None:
    cluster, uri = proxied.cluster, f"file://{tmp_path}/ckpt"
    options = {"job": cluster.job, "heartbeat_interval_s": 0.2}
    with (
        Worker(cluster.coordinators, worker_id="writer", **options) as writer,
        Worker(",".join(cluster.endpoints), worker_id="member", **options) as member,
    ):
        wait_until(lambda: writer.generation == member.generation, 30, "one generation")
        before = member.generation
        with (
            CheckpointManager(
                writer, uri, queue_path=tmp_path / "w.sqlite", replicated=True, writer=True
            ) as written,
            CheckpointManager(
                member, uri, queue_path=tmp_path / "m.sqlite", replicated=True, writer=False
            ) as adopted,
        ):
            for proxy in proxied.proxies:
                proxy.blackhole()
            written.save_async(state_of(5), 5).result(timeout=30)  # durable, commit queued
            wait_until(lambda: member.generation > before, 30, "the writer to be declared dead")
            adopted.save_async({}, 5).result(timeout=30)  # adopts the writer's object
            adopted.wait(timeout_s=30)
            assert complete_steps_verify(member, uri) == [5]
            for proxy in proxied.proxies:
                proxy.heal()
            written.wait(timeout_s=60)  # its generation's commit: SUPERSEDED now
            assert written.commits_queued == 0
            assert complete_steps_verify(member, uri) == [5]
            state, step = adopted.load_latest()
            assert step == 5 and torch.equal(state["weights"], state_of(5)["weights"])


def test_a_queue_left_by_another_life_of_the_job_never_blocks_the_new_one(
    etcd: RunningEtcd, fresh_etcd: RunningEtcd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job, uri, queue = f"life-{uuid.uuid4().hex[:8]}", f"file://{tmp_path}/ckpt", tmp_path / "q"
    options = {"worker_id": "w0", "job": job, "heartbeat_interval_s": 0.2}
    with LocalCluster.start(replicas=1, etcd=etcd, job=job) as first_cluster:
        old = Worker(first_cluster.coordinators, **options)
        old_life = old.job_life
        manager = CheckpointManager(old, uri, queue_path=queue)
        first_cluster.stop()  # the cluster dies before answering the commit of step 1
        manager.save_async(state_of(1), 1).result(timeout=30)
        manager.close(timeout_s=0.5)
        old.close()
    with CommitQueue(queue) as left:
        assert [(e.record.step, e.record.job_life, e.state) for e in left.history()] == [
            (1, old_life, "pending")
        ]

    with (
        LocalCluster.start(replicas=1, etcd=fresh_etcd, job=job) as second_cluster,
        caplog.at_level(logging.WARNING, logger="dtr.worker.commit_flusher"),
        Worker(second_cluster.coordinators, **options) as new,
        CheckpointManager(new, uri, queue_path=queue) as manager,
    ):
        assert new.job_life and new.job_life != old_life
        manager.save_async(state_of(2), 1).result(timeout=30)
        manager.wait(timeout_s=30)
        assert complete_steps_verify(new, uri) == [1]
        state, step = manager.load_latest()
        assert step == 1 and torch.equal(state["weights"], state_of(2)["weights"])
        counted = new.metrics.registry.get_sample_value("dtr_worker_commit_records_set_aside_total")
        assert counted == 1
        new_life = new.job_life
    with CommitQueue(queue) as left:
        assert [(e.record.job_life, e.state) for e in left.history()] == [
            (old_life, "set_aside"),
            (new_life, "done"),
        ]
    warnings = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(warnings) == 1 and str(queue) in warnings[0]


def test_wait_without_a_timeout_raises_when_the_head_commit_keeps_failing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    options = {"worker_id": "w0", "job": cluster.job, "heartbeat_interval_s": 0.2}
    with Worker(cluster.coordinators, **options) as old:
        manager = CheckpointManager(old, f"file://{tmp_path}/ckpt", queue_path=tmp_path / "q")
        with manager, Worker(cluster.coordinators, **options):  # the id taken by a new process
            wait_until(lambda: superseded(old), 30, "the old process to learn it was superseded")
            manager.save_async(state_of(1), 1).result(timeout=30)  # durable, commit queued
            outcome: list[BaseException | None] = []
            waiter = threading.Thread(
                target=lambda: outcome.append(raised(manager.wait)), daemon=True
            )
            waiter.start()
            waiter.join(30)
            assert outcome, "wait() without a timeout hung on a head commit that keeps failing"
            error = outcome[0]
            assert isinstance(error, CheckpointError)
            assert "step 1" in str(error) and "WorkerSuperseded" in str(error)
            assert manager.commits_queued == 1  # still queued, never dropped


def superseded(worker: Worker) -> bool:
    try:
        worker.latest_checkpoint()
    except WorkerSuperseded:
        return True
    return False


def raised(call: Callable[[], object]) -> BaseException | None:
    try:
        call()
    except DtrError as err:
        return err
    return None
