"""Job lives in the commit queue (issue 15 item 5, DESIGN §5 invariant 5) and a stuck head.

Real SQLite files under tmp_path; ``send`` is a scripted function as in
test_commit_queue.py. A queue left by another life of the job (another etcd
cluster, or the job's prefix wiped) must never block or enter this life:
its pending records are set aside — kept, counted, never sent — and the new
life can queue the same steps again. A version-1 file (before lives) is
migrated in place.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from dtr.errors import CheckpointError, InvalidArgument, PermissionDenied, WrongJobLife
from dtr.retry import RetryPolicy
from dtr.worker.commit_flusher import STUCK_AFTER, CommitAck, CommitFlusher
from dtr.worker.commit_queue import CommitOutcome, CommitQueue, CommitRecord

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.01, deadline_s=1.0)
OLD_LIFE, NEW_LIFE = "cluster-1/job-uid-a", "cluster-2/job-uid-b"

# The version-1 schema, verbatim: what a worker of the previous release left on disk.
_V1_SCHEMA = """
CREATE TABLE commits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL, step INTEGER NOT NULL, worker_id TEXT NOT NULL,
    generation INTEGER NOT NULL, uri TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    checksum_algorithm TEXT NOT NULL, checksum_hex TEXT NOT NULL,
    format_version INTEGER NOT NULL, manifest_uri TEXT NOT NULL,
    replicated INTEGER NOT NULL, enqueued_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
    outcome TEXT CHECK (outcome IN ('accepted', 'duplicate', 'superseded', 'rejected')),
    done_at REAL,
    UNIQUE (job, step, worker_id, generation)
);
CREATE INDEX commits_by_state ON commits (state, seq);
PRAGMA user_version = 1;
"""


def record(step: int, life: str, *, uri: str = "", generation: int = 1) -> CommitRecord:
    return CommitRecord(
        job="job",
        step=step,
        worker_id="w-0",
        generation=generation,
        uri=uri or f"file:///ckpt/step-{step}/w-0.{life or 'none'}.dtr",
        size_bytes=1024,
        checksum_algorithm="crc32c",
        checksum_hex="0badf00d",
        format_version=1,
        job_life=life,
        incarnation=1,
    )


class Sender:
    """A ``send`` that answers from a script, then ACCEPTED; records the records it saw."""

    def __init__(self, *script: CommitAck | Exception) -> None:
        self.script = list(script)
        self.seen: list[CommitRecord] = []
        self._lock = threading.Lock()

    def __call__(self, rec: CommitRecord) -> CommitAck:
        with self._lock:
            self.seen.append(rec)
            answer = self.script.pop(0) if self.script else CommitAck(CommitOutcome.ACCEPTED)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[CommitQueue]:
    q = CommitQueue(tmp_path / "commits.sqlite")
    yield q
    q.close()


def started(
    queue: CommitQueue,
    send: Sender,
    life: str,
    on_set_aside: Callable[[int], None] | None = None,
) -> CommitFlusher:
    """A started flusher with fast backoff whose worker is in job life ``life``."""
    flusher = CommitFlusher(
        queue, send, policy=FAST, job_life=lambda: life, on_set_aside=on_set_aside
    )
    flusher.start()
    return flusher


def test_a_new_life_queues_a_step_an_old_lifes_pending_record_still_holds(
    queue: CommitQueue,
) -> None:
    old = queue.append(record(1, OLD_LIFE))
    new = queue.append(record(1, NEW_LIFE))  # before lives were in the key: AlreadyExists
    assert new != old
    assert queue.set_aside_other_lives(NEW_LIFE) == 1
    assert [seq for seq, _ in queue.pending()] == [new]
    assert queue.counts() == {"pending": 1, "set_aside": 1, "done": 0}
    assert queue.append(record(2, NEW_LIFE)) > new  # a set-aside record never refuses appends


def test_records_of_another_life_are_set_aside_logged_once_and_never_sent(
    queue: CommitQueue, caplog: pytest.LogCaptureFixture
) -> None:
    for step in (1, 2):
        queue.append(record(step, OLD_LIFE))
    queue.append(record(1, NEW_LIFE))
    send, counted = Sender(), []
    with caplog.at_level(logging.WARNING, logger="dtr.worker.commit_flusher"):
        flusher = started(queue, send, NEW_LIFE, on_set_aside=counted.append)
        try:
            assert flusher.wait_empty(10.0)
            queue.append(record(2, NEW_LIFE))
            flusher.kick()
            assert flusher.wait_empty(10.0)
        finally:
            flusher.stop()
    assert [(r.step, r.job_life) for r in send.seen] == [(1, NEW_LIFE), (2, NEW_LIFE)]
    assert counted == [2]
    warnings = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(warnings) == 1
    assert str(queue.path) in warnings[0] and " 2 pending" in warnings[0]
    entries = queue.history()
    assert [(e.record.step, e.record.job_life, e.state) for e in entries] == [
        (1, OLD_LIFE, "set_aside"),
        (2, OLD_LIFE, "set_aside"),
        (1, NEW_LIFE, "done"),
        (2, NEW_LIFE, "done"),
    ]


def test_records_without_a_life_are_adopted_only_while_the_current_life_is_empty(
    queue: CommitQueue,
) -> None:
    queue.append(record(1, ""))
    assert queue.set_aside_other_lives("") == 0
    assert queue.depth == 1
    assert queue.set_aside_other_lives(NEW_LIFE) == 1
    assert queue.depth == 0


def test_a_wrong_job_life_answer_sets_the_record_aside_and_the_next_one_goes_on(
    queue: CommitQueue,
) -> None:
    queue.append(record(1, NEW_LIFE))
    queue.append(record(2, NEW_LIFE))
    send = Sender(WrongJobLife("the job's life is cluster-3/job-uid-c"))
    flusher = started(queue, send, NEW_LIFE)
    try:
        assert flusher.wait_empty(10.0)
    finally:
        flusher.stop()
    assert [r.step for r in send.seen] == [1, 2]
    assert [(e.record.step, e.state, e.outcome) for e in queue.history()] == [
        (1, "set_aside", None),
        (2, "done", CommitOutcome.ACCEPTED),
    ]


def test_a_version_1_file_is_migrated_with_empty_lives_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(_V1_SCHEMA)
        conn.execute(
            "INSERT INTO commits (job, step, worker_id, generation, uri, size_bytes, "
            "checksum_algorithm, checksum_hex, format_version, manifest_uri, replicated, "
            "enqueued_at) VALUES ('job', 1, 'w-0', 1, 'file:///a', 1, 'crc32c', 'ff', 1, '', 0, 0)"
        )
        conn.commit()
    with CommitQueue(path) as queue:
        ((seq, old),) = queue.pending()
        assert (old.step, old.job_life, old.incarnation) == (1, "", 0)
        assert queue.append(record(1, NEW_LIFE)) != seq  # the key includes the life now
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


def test_clear_removes_set_aside_rows_and_pending_rows_only_when_asked(queue: CommitQueue) -> None:
    queue.append(record(1, OLD_LIFE))
    queue.append(record(1, NEW_LIFE))
    queue.set_aside_other_lives(NEW_LIFE)
    with pytest.raises(InvalidArgument, match="say what to clear"):
        queue.clear()
    assert queue.clear(set_aside=True) == 1
    assert queue.counts() == {"pending": 1, "set_aside": 0, "done": 0}
    assert queue.clear(pending=True) == 1
    assert queue.history() == []


def test_a_head_that_keeps_failing_without_a_verdict_is_reported_stuck_and_stays_queued(
    queue: CommitQueue,
) -> None:
    queue.append(record(1, NEW_LIFE))
    send = Sender(*[PermissionDenied("token lacks the worker role")] * 10_000)
    flusher = started(queue, send, NEW_LIFE)
    try:
        stuck = flusher.wait_settled(10.0)
    finally:
        flusher.stop()
    assert stuck is not None and stuck.attempts >= STUCK_AFTER
    assert isinstance(stuck.error, PermissionDenied) and stuck.record.step == 1
    assert "step 1" in stuck.describe() and "PermissionDenied" in stuck.describe()
    assert queue.depth == 1


def test_a_closed_queue_refuses_set_aside_and_clear(queue: CommitQueue) -> None:
    queue.close()
    with pytest.raises(CheckpointError, match="closed"):
        queue.set_aside_other_lives(NEW_LIFE)
    with pytest.raises(CheckpointError, match="closed"):
        queue.counts()
