"""The worker's durable commit queue and its flusher (DESIGN §5 invariant 5, STYLE rule 6).

Real SQLite files under tmp_path, a real child process killed with SIGKILL.
``send`` is a plain function here that records its calls and answers from a
script (an outage is "raise CoordinatorUnavailable"): the queue and flusher
only ever see that function, and the coordinator's side of CommitCheckpoint
(dedup, DUPLICATE, SUPERSEDED) is tested against real replicas elsewhere.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from dtr.errors import (
    AlreadyExists,
    CheckpointError,
    CoordinatorError,
    CoordinatorUnavailable,
    InvalidArgument,
)
from dtr.retry import RetryPolicy
from dtr.worker.commit_flusher import CommitAck, CommitFlusher, OnOutcome
from dtr.worker.commit_queue import CommitOutcome, CommitQueue, CommitRecord

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.01, deadline_s=1.0)
ACCEPTED = CommitAck(CommitOutcome.ACCEPTED)


def record(step: int, *, uri: str | None = None, generation: int = 1) -> CommitRecord:
    return CommitRecord(
        job="job",
        step=step,
        worker_id="w-0",
        generation=generation,
        uri=uri or f"file:///ckpt/step-{step}/w-0.pt",
        size_bytes=1024,
        checksum_algorithm="crc32c",
        checksum_hex="0badf00d",
        format_version=1,
    )


class ScriptedCoordinator:
    """A ``send`` function: answers (or errors) from a script, then ACCEPTED; records calls."""

    def __init__(self, *script: CommitAck | Exception) -> None:
        self.script = list(script)
        self.calls: list[int] = []  # the step of every attempt, in order
        self.called = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, rec: CommitRecord) -> CommitAck:
        with self._lock:
            self.calls.append(rec.step)
            answer = self.script.pop(0) if self.script else ACCEPTED
        self.called.set()
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[CommitQueue]:
    q = CommitQueue(tmp_path / "commits.db")
    yield q
    q.close()


def flush(
    queue: CommitQueue,
    send: ScriptedCoordinator,
    on_outcome: OnOutcome | None = None,
    poll_interval_s: float = 1.0,
) -> CommitFlusher:
    """A started flusher with fast backoff."""
    flusher = CommitFlusher(
        queue, send, policy=FAST, on_outcome=on_outcome, poll_interval_s=poll_interval_s
    )
    flusher.start()
    return flusher


def test_appended_records_are_pending_in_order_with_their_fields(queue: CommitQueue) -> None:
    recs = [record(step) for step in (300, 100, 200)]
    seqs = [queue.append(r) for r in recs]
    assert seqs == sorted(seqs)
    assert queue.pending() == list(zip(seqs, recs, strict=True))
    assert queue.depth == 3
    assert queue.last_committed_step is None


def test_appending_the_same_record_again_returns_its_sequence_without_a_copy(
    queue: CommitQueue,
) -> None:
    first = queue.append(record(100))
    assert queue.append(record(100)) == first
    queue.mark_done(first, "accepted")
    assert queue.append(record(100)) == first  # a done record is not queued again
    assert queue.depth == 0
    assert len(queue.history()) == 1


def test_appending_a_different_part_under_the_same_key_raises_already_exists(
    queue: CommitQueue,
) -> None:
    queue.append(record(100))
    with pytest.raises(AlreadyExists, match=re.escape("file:///ckpt/other.pt")):
        queue.append(record(100, uri="file:///ckpt/other.pt"))
    queue.append(record(100, uri="file:///ckpt/other.pt", generation=2))  # another key
    assert [r.generation for _, r in queue.pending()] == [1, 2]


def test_done_records_leave_the_queue_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "commits.db"
    with CommitQueue(path) as q:
        seqs = [q.append(record(step)) for step in (1, 2, 3, 4)]
        q.mark_done(seqs[0], CommitOutcome.ACCEPTED)
        q.mark_done(seqs[1], CommitOutcome.SUPERSEDED)
        q.mark_done(seqs[2], CommitOutcome.DUPLICATE)
    with CommitQueue(path) as q:
        assert [seq for seq, _ in q.pending()] == [seqs[3]]
        assert q.last_committed_step == 3  # superseded step 2 is not "committed"
        assert [e.outcome for e in q.history()] == ["accepted", "superseded", "duplicate", None]
        q.mark_done(seqs[0], "rejected")  # already done: the first outcome stays
        assert q.history()[0].outcome is CommitOutcome.ACCEPTED


def test_old_done_rows_are_pruned_but_the_last_committed_step_is_kept(tmp_path: Path) -> None:
    with CommitQueue(tmp_path / "commits.db", keep_done=2) as q:
        seqs = [q.append(record(step)) for step in (10, 20, 30, 40, 50)]
        q.mark_done(seqs[0], "accepted")
        q.mark_done(seqs[1], "accepted")
        for seq in seqs[2:]:
            q.mark_done(seq, "superseded")
        assert [e.record.step for e in q.history()] == [20, 40, 50]
        assert q.last_committed_step == 20


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    CommitQueue(tmp_path / "commits.db").close()
    with closing(sqlite3.connect(tmp_path / "commits.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_path_below_a_regular_file_raises_checkpoint_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    bad = tmp_path / "file" / "commits.db"
    with pytest.raises(CheckpointError, match=re.escape(str(bad))):
        CommitQueue(bad)


def test_a_queue_written_by_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "commits.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(CheckpointError, match="schema version 99"):
        CommitQueue(path)


def test_a_closed_queue_refuses_calls_with_checkpoint_error(queue: CommitQueue) -> None:
    queue.close()
    queue.close()
    with pytest.raises(CheckpointError, match="closed"):
        queue.append(record(1))


def test_malformed_records_and_outcomes_are_refused(queue: CommitQueue) -> None:
    with pytest.raises(InvalidArgument, match="step"):
        record(-1)
    with pytest.raises(InvalidArgument, match="outcome"):
        queue.mark_done(queue.append(record(1)), "lost")


def test_waiting_with_no_timeout_waits_until_the_queue_drains(queue: CommitQueue) -> None:
    down = CoordinatorUnavailable("no coordinator answered")
    send = ScriptedCoordinator(down, down, ACCEPTED)
    queue.append(record(100))
    flusher = flush(queue, send)
    try:
        assert flusher.wait_empty(None)  # no timeout: not an OverflowError, not early
    finally:
        assert flusher.stop()
    assert queue.depth == 0 and send.calls == [100, 100, 100]


def test_records_are_delivered_once_each_in_order_across_outages(queue: CommitQueue) -> None:
    down = CoordinatorUnavailable("no coordinator answered")
    send = ScriptedCoordinator(down, down, down, ACCEPTED, down, down)
    steps = [100, 200, 300, 400, 500]
    for step in steps:
        queue.append(record(step))
    flusher = flush(queue, send)
    try:
        assert flusher.wait_empty(10.0)
    finally:
        assert flusher.stop()
    # The head is retried until it gets a verdict; nothing overtakes it.
    assert send.calls == [100, 100, 100, 100, 200, 200, 200, 300, 400, 500]
    assert [e.outcome for e in queue.history()] == ["accepted"] * 5
    assert queue.last_committed_step == 500


def test_records_appended_while_running_are_delivered_after_a_kick(queue: CommitQueue) -> None:
    acks: list[tuple[int, CommitAck]] = []
    send = ScriptedCoordinator(CommitAck(CommitOutcome.ACCEPTED, True, 1))
    flusher = flush(
        queue, send, on_outcome=lambda r, a: acks.append((r.step, a)), poll_interval_s=60
    )
    try:
        for step in (1, 2):
            queue.append(record(step))
            flusher.kick()
        assert flusher.wait_empty(10.0)
    finally:
        flusher.stop()
    assert send.calls == [1, 2]
    assert acks == [(1, CommitAck(CommitOutcome.ACCEPTED, True, 1)), (2, ACCEPTED)]


def test_superseded_and_rejected_records_leave_the_queue_with_their_outcome(
    queue: CommitQueue,
) -> None:
    send = ScriptedCoordinator(
        CommitAck(CommitOutcome.SUPERSEDED),
        AlreadyExists("another part is committed under this key"),
        InvalidArgument("part.uri: must not be empty"),
    )
    outcomes: list[CommitOutcome] = []
    for step in (1, 2, 3, 4):
        queue.append(record(step))
    flusher = flush(queue, send, on_outcome=lambda r, a: outcomes.append(a.outcome))
    try:
        assert flusher.wait_empty(10.0)
    finally:
        flusher.stop()
    assert send.calls == [1, 2, 3, 4]
    assert outcomes == ["superseded", "rejected", "rejected", "accepted"]
    assert [e.outcome for e in queue.history()] == outcomes


def test_errors_that_are_no_verdict_on_the_record_keep_it_queued(queue: CommitQueue) -> None:
    send = ScriptedCoordinator(CoordinatorError("INTERNAL"), RuntimeError("bug in send"))
    queue.append(record(1))
    flusher = flush(queue, send)
    try:
        assert flusher.wait_empty(10.0)
    finally:
        flusher.stop()
    assert send.calls == [1, 1, 1]
    assert queue.history()[0].outcome is CommitOutcome.ACCEPTED


def test_a_failing_on_outcome_hook_does_not_stop_delivery(queue: CommitQueue) -> None:
    def hook(rec: CommitRecord, ack: CommitAck) -> None:
        raise RuntimeError("hook bug")

    for step in (1, 2):
        queue.append(record(step))
    flusher = flush(queue, ScriptedCoordinator(), on_outcome=hook)
    try:
        assert flusher.wait_empty(10.0)
    finally:
        flusher.stop()


def test_wait_empty_returns_false_at_its_deadline_while_no_coordinator_answers(
    queue: CommitQueue,
) -> None:
    send = ScriptedCoordinator(*[CoordinatorUnavailable("down")] * 10_000)
    queue.append(record(1))
    flusher = flush(queue, send)
    try:
        started = time.monotonic()
        assert not flusher.wait_empty(0.3)
        assert 0.3 <= time.monotonic() - started < 5.0
        assert queue.depth == 1
    finally:
        flusher.stop()


def test_stop_returns_promptly_while_backing_off(queue: CommitQueue) -> None:
    send = ScriptedCoordinator(*[CoordinatorUnavailable("down")] * 10)
    queue.append(record(1))
    slow = RetryPolicy(initial_backoff_s=60.0, max_backoff_s=120.0)
    flusher = CommitFlusher(queue, send, policy=slow)
    flusher.start()
    assert send.called.wait(10.0)  # it failed once and is now waiting ~60 s
    started = time.monotonic()
    assert flusher.stop(timeout_s=5.0)
    assert time.monotonic() - started < 2.0
    assert send.calls == [1]
    assert queue.depth == 1  # still queued for the next flusher


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from dtr.worker.commit_queue import CommitQueue, CommitRecord
    q = CommitQueue(Path(sys.argv[1]))
    for step in (100, 200, 300):
        q.append(CommitRecord(job="job", step=step, worker_id="w-0", generation=1,
                              uri=f"file:///ckpt/step-{step}/w-0.pt", size_bytes=1024,
                              checksum_algorithm="crc32c", checksum_hex="0badf00d",
                              format_version=1))
    print("appended", flush=True)
    sys.stdin.readline()  # killed here, never closed
    """
)


def test_appended_records_survive_a_sigkill_and_are_delivered_once_after_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "commits.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        said = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        _, errors = child.communicate(timeout=10)
    assert said == "appended", errors
    assert child.returncode == -signal.SIGKILL

    with CommitQueue(path) as q:
        assert [r.step for _, r in q.pending()] == [100, 200, 300]
        send = ScriptedCoordinator(CoordinatorUnavailable("not yet"))
        flusher = flush(q, send)
        try:
            assert flusher.wait_empty(10.0)
        finally:
            flusher.stop()
        assert send.calls == [100, 100, 200, 300]
        assert q.depth == 0


def test_a_training_thread_appends_while_the_flusher_delivers(queue: CommitQueue) -> None:
    send = ScriptedCoordinator(*[CoordinatorUnavailable("down")] * 3)
    flusher = flush(queue, send)
    try:
        for step in range(50):
            queue.append(record(step))
            flusher.kick()
        assert flusher.wait_empty(10.0)
    finally:
        flusher.stop()
    delivered = [e.record.step for e in queue.history() if e.outcome == "accepted"]
    assert delivered == list(range(50))
    assert send.calls[3:] == list(range(50))
