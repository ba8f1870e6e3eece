"""Checkpoint bookkeeping on real coordinators: commits, complete steps, failover, retention.

Workers here commit part descriptions directly (``Worker.commit_checkpoint``)
without writing bytes: what the coordinator records and answers is under test
(DESIGN §5 invariant 4); the checkpoint manager's own tests write real bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.errors import AlreadyExists, InvalidArgument
from dtr.etcd import RunningEtcd
from dtr.worker import Worker
from dtr.worker.commit_queue import CommitOutcome, CommitRecord
from helpers import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(
        replicas=2,
        etcd=etcd,
        job=f"c-{uuid.uuid4().hex[:10]}",
        extra_args=["--keep-checkpoints", "2"],
    ) as started:
        yield started


def record(
    worker: Worker, step: int, digest: str = "0a1b2c3d", generation: int | None = None
) -> CommitRecord:
    return CommitRecord(
        job=worker.job,
        step=step,
        worker_id=worker.worker_id,
        generation=worker.generation if generation is None else generation,
        uri=f"file:///ckpt/step-{step}/{worker.worker_id}.dtr",
        size_bytes=4096,
        checksum_algorithm="crc32c",
        checksum_hex=digest,
        format_version=1,
    )


def joined(cluster: LocalCluster, *ids: str) -> list[Worker]:
    workers = [
        Worker(cluster.coordinators, worker_id=w, job=cluster.job, heartbeat_interval_s=0.2)
        for w in ids
    ]
    wait_until(lambda: len({w.generation for w in workers}) == 1, 30, "one generation for all")
    return workers


def test_a_step_completes_when_every_member_committed_and_survives_a_leader_kill(
    cluster: LocalCluster,
) -> None:
    a, b = joined(cluster, "a", "b")
    try:
        assert a.latest_checkpoint() is None
        first = a.commit_checkpoint(record(a, 100))
        assert (first.outcome, first.step_complete, first.latest_complete_step) == (
            CommitOutcome.ACCEPTED,
            False,
            None,
        )
        assert a.commit_checkpoint(record(a, 100)).outcome is CommitOutcome.DUPLICATE
        with pytest.raises(AlreadyExists, match="cannot change"):
            a.commit_checkpoint(record(a, 100, digest="ffffffff"))
        assert a.latest_checkpoint() is None

        cluster.leader().kill()  # the new leader must learn step 100's first part from etcd
        last = b.commit_checkpoint(record(b, 100))
        assert (last.outcome, last.step_complete, last.latest_complete_step) == (
            CommitOutcome.ACCEPTED,
            True,
            100,
        )
        latest = a.latest_checkpoint()
        assert latest is not None and (latest.step, latest.generation) == (100, a.generation)
        assert [p.worker_id for p in latest.parts] == ["a", "b"]
        part = latest.part_of("b")
        assert part is not None and (part.size_bytes, part.algorithm, part.hex_digest) == (
            4096,
            "crc32c",
            "0a1b2c3d",
        )
        assert a.commit_checkpoint(record(a, 50)).outcome is CommitOutcome.SUPERSEDED
    finally:
        a.close()
        b.close()


def test_a_membership_change_supersedes_commits_of_the_old_generation(
    cluster: LocalCluster,
) -> None:
    (a,) = joined(cluster, "a")
    try:
        old_generation = a.generation
        b = Worker(cluster.coordinators, worker_id="b", job=cluster.job)
        b.close()
        ack = a.commit_checkpoint(record(a, 100, generation=old_generation))
        assert ack.outcome is CommitOutcome.SUPERSEDED
        assert a.latest_checkpoint() is None
    finally:
        a.close()


def test_retention_keeps_only_the_newest_complete_steps(
    cluster: LocalCluster,
) -> None:
    (a,) = joined(cluster, "a")
    try:
        for step in (100, 200, 300, 400):
            assert a.commit_checkpoint(record(a, step)).step_complete
        wait_until(
            lambda: (
                (found := a.latest_checkpoint(before_step=400)) is not None
                and found.step == 300
                and a.latest_checkpoint(before_step=300) is None
            ),
            30,
            "retention (--keep-checkpoints 2) to drop steps 100 and 200",
        )
        latest = a.latest_checkpoint()
        assert latest is not None and latest.step == 400
    finally:
        a.close()


def test_a_commit_with_a_bad_part_is_refused_naming_the_field(cluster: LocalCluster) -> None:
    (a,) = joined(cluster, "a")
    try:
        bad = record(a, 100, digest="not-hex!")
        with pytest.raises(InvalidArgument, match=r"part\.checksum\.hex_digest"):
            a.commit_checkpoint(bad)
    finally:
        a.close()
