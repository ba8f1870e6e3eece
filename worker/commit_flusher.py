"""The background thread that delivers the commit queue to the coordinator, in order.

``CommitFlusher`` replays the pending records of a ``CommitQueue`` oldest
first through an injected ``send`` function and marks each done with the
coordinator's verdict. It never skips ahead: the head record is retried until
it gets a verdict, so commits reach the coordinator in the order they were
saved. While no coordinator answers, records accumulate on disk and the
flusher waits between rounds; ``kick()`` wakes it when a record is appended.

What ``send`` raises decides what happens to the head record:

- a retryable error (``dtr.retry.is_retryable``: ``CoordinatorUnavailable``,
  ``NotLeader``): the outcome is unknown, the record may have applied. It
  stays pending and is sent again after a backoff (STYLE rule 6);
- ``InvalidArgument`` or ``AlreadyExists``: the coordinator refused this very
  record and never will accept it (malformed, or a different part was
  committed under its key). It is marked done as ``rejected`` and logged as
  an error, so one bad record cannot wedge every later commit;
- ``WrongJobLife``: the record was made for another life of the job (the
  job's etcd prefix was wiped, or another cluster answers). It is set aside:
  kept in the file, never sent again, never blocking the records behind it;
- anything else (``CoordinatorError``, ``UnknownWorker``, ``WrongJob``, or a
  bug in ``send``): not a verdict on the record, so dropping it could lose a
  commit. It stays pending, is logged as an error, and is retried after a
  backoff until the cause is fixed or the flusher is stopped. After
  ``STUCK_AFTER`` such failures in a row the flusher reports the head as
  stuck (``stuck``), so ``CheckpointManager.wait()`` raises instead of
  waiting forever; the record stays queued and is still retried.

Job lives: before each round, pending records made for another job life than
``job_life()`` returns are set aside (``CommitQueue.set_aside_other_lives``),
logged once at WARNING with the queue's path and their count.

What must not live here: gRPC. ``send`` is built by the checkpoint manager on
top of the worker's client (whose ``call_with_retry`` owns the per-call
retries and the leader following); this loop only paces the rounds between
failed sends, with the same ``RetryPolicy`` values, so retries do not multiply.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from dtr import mutants
from dtr.errors import AlreadyExists, CheckpointError, DtrError, InvalidArgument, WrongJobLife
from dtr.retry import RetryPolicy, is_retryable

from .commit_queue import CommitOutcome, CommitQueue, CommitRecord

_log = logging.getLogger(__name__)

#: Errors that are the coordinator's final word on one record: it is dropped as rejected.
REJECTING_ERRORS: tuple[type[Exception], ...] = (InvalidArgument, AlreadyExists)
#: Pending records read per round; the loop reads again when they are done.
_BATCH = 64
#: Consecutive non-retryable, non-verdict failures of the head before it counts as stuck.
STUCK_AFTER = 3


@dataclass(frozen=True)
class CommitAck:
    """The coordinator's answer to one commit (``CommitCheckpointResponse``)."""

    outcome: CommitOutcome
    #: Whether the record's step is complete now (by this commit or earlier ones).
    step_complete: bool = False
    #: The job's latest complete step, None when there is none yet.
    latest_complete_step: int | None = None


SendCommit = Callable[[CommitRecord], CommitAck]
OnOutcome = Callable[[CommitRecord, CommitAck], None]


@dataclass(frozen=True)
class StuckCommit:
    """The head record and the non-verdict error it keeps failing with."""

    record: CommitRecord
    error: Exception
    attempts: int

    def describe(self) -> str:
        record = self.record
        return (
            f"the commit of step {record.step} (worker {record.worker_id!r}, generation "
            f"{record.generation}) failed {self.attempts} times in a row with "
            f"{type(self.error).__name__}: {self.error}"
        )


def _as_sent(record: CommitRecord) -> CommitRecord:
    """``record`` as it goes on the wire (the mutant sends it as a pre-lives queue did)."""
    if mutants.active(mutants.REPLAY_OTHER_LIFE):  # MUTANT replay-other-life: no life,
        return replace(record, job_life="", incarnation=0)  # so no WrongJobLife either
    return record


class CommitFlusher:
    """Delivers a queue's pending records through ``send`` on a daemon thread.

    ``on_outcome`` (optional) is called on the flusher thread with each record
    and its ack once the record is done (a rejected record gets an ack with
    ``outcome=REJECTED``); the checkpoint manager learns ``step_complete`` and
    ``latest_complete_step`` from it. Its errors are logged and ignored.
    """

    def __init__(
        self,
        queue: CommitQueue,
        send: SendCommit,
        *,
        policy: RetryPolicy | None = None,
        on_outcome: OnOutcome | None = None,
        poll_interval_s: float = 1.0,
        job_life: Callable[[], str] | None = None,
        on_set_aside: Callable[[int], None] | None = None,
    ) -> None:
        self._queue = queue
        self._job_life = job_life
        self._on_set_aside = on_set_aside or (lambda count: None)
        self._life_checked: str | None = None  # the life records were last set aside for
        self._stuck: StuckCommit | None = None
        self._send = send
        self._policy = policy or RetryPolicy()
        self._on_outcome = on_outcome
        #: An idle flusher looks at the queue this often even without a kick.
        self.poll_interval_s = poll_interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="dtr-commit-flusher", daemon=True)

    def start(self) -> None:
        """Start the thread; a flusher runs once (make a new one after ``stop``)."""
        self._thread.start()

    def kick(self) -> None:
        """Tell an idle flusher a record was appended (it does not cut a backoff short)."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop delivering; True once the thread ended.

        A backoff is cut short at once; a send in flight runs to its own
        deadline, and its verdict is still recorded. Pending records stay on
        disk for the next flusher.
        """
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

    def wait_empty(self, timeout_s: float | None) -> bool:
        """Wait until no record is pending; False when ``timeout_s`` ran out first.

        ``None`` waits for as long as it takes (an infinite float would not do:
        ``Condition.wait`` raises OverflowError on it, which the tutorial's
        ``checkpoints.wait()`` hit whenever a commit was still in flight).
        """
        with self._progress:
            return self._progress.wait_for(lambda: self._queue.depth == 0, timeout_s)

    def wait_settled(self, timeout_s: float | None) -> StuckCommit | None:
        """Wait until no record is pending or the head is stuck; the stuck head, if any.

        Raises ``TimeoutError`` when ``timeout_s`` ran out first.
        """
        with self._progress:
            if not self._progress.wait_for(
                lambda: self._stuck is not None or self._queue.depth == 0, timeout_s
            ):
                raise TimeoutError
            return self._stuck

    @property
    def stuck(self) -> StuckCommit | None:
        """The head record when it keeps failing with a non-verdict error, else None."""
        return self._stuck

    # -- the loop -----------------------------------------------------------------
    def _run(self) -> None:
        failures = 0  # consecutive failed rounds, for the backoff
        while not self._stop.is_set():
            self._wake.clear()  # before reading: a kick after the read is not missed
            try:
                self._set_aside_other_lives()
                batch = self._queue.pending(limit=_BATCH)
                for seq, record in batch:
                    failures = self._deliver(seq, record, failures)
                    if self._stop.is_set():
                        return
            except CheckpointError as err:  # the disk failed; the records stay where they are
                _log.error("commit queue failed, retrying: %s", err)
                failures += 1
                self._stop.wait(self._backoff_s(failures))
                continue
            if not batch:
                self._wake.wait(self.poll_interval_s)

    def _set_aside_other_lives(self) -> None:
        """Set aside pending records of other job lives; logged once per life seen."""
        if self._job_life is None or mutants.active(mutants.REPLAY_OTHER_LIFE):  # MUTANT
            return
        life = self._job_life()
        if life == self._life_checked:
            return  # records are appended with the current life: only a new life matters
        count = self._queue.set_aside_other_lives(life)
        self._life_checked = life
        if count:
            _log.warning(
                "commit queue %s: set aside %d pending commit record(s) made for another "
                "life of the job (current life %r); they stay in the file and are never sent "
                "(see 'dtr queue list', 'dtr queue clear --set-aside')",
                self._queue.path,
                count,
                life,
            )
            self._on_set_aside(count)
            self._notify()

    def _notify(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _deliver(self, seq: int, record: CommitRecord, failures: int) -> int:
        """Send one record until it gets a verdict or the flusher stops; new failure count."""
        stuck_attempts = 0
        while not self._stop.is_set():
            try:
                ack = self._send(_as_sent(record))
            except WrongJobLife as err:
                self._queue.set_aside(seq)
                _log.warning(
                    "commit queue %s: the coordinator says the commit of step %d belongs to "
                    "another life of the job; set aside (kept, never sent again): %s",
                    self._queue.path,
                    record.step,
                    err,
                )
                self._on_set_aside(1)
                self._stuck = None
                self._notify()
                return 0
            except REJECTING_ERRORS as err:
                _log.error(
                    "coordinator rejected the commit of step %d (generation %d) for good; "
                    "dropping it from the queue: %s",
                    record.step,
                    record.generation,
                    err,
                )
                ack = CommitAck(CommitOutcome.REJECTED)
            except Exception as err:
                failures += 1
                stuck_attempts = 0 if is_retryable(err) else stuck_attempts + 1
                if stuck_attempts >= STUCK_AFTER:
                    self._stuck = StuckCommit(record, err, stuck_attempts)
                    self._notify()
                self._log_failure(record, err, failures)
                self._stop.wait(self._backoff_s(failures))
                continue
            self._stuck = None
            self._finish(seq, record, ack)
            return 0
        return failures

    def _finish(self, seq: int, record: CommitRecord, ack: CommitAck) -> None:
        self._queue.mark_done(seq, ack.outcome)
        _log.debug("commit of step %d: %s", record.step, ack.outcome)
        with self._progress:
            self._progress.notify_all()
        if self._on_outcome is not None:
            try:
                self._on_outcome(record, ack)
            except Exception:
                _log.exception("on_outcome failed for the commit of step %d", record.step)

    def _log_failure(self, record: CommitRecord, err: Exception, failures: int) -> None:
        if is_retryable(err):
            # Log the start of an outage, then every 10th round, not every attempt.
            if failures == 1 or failures % 10 == 0:
                _log.warning(
                    "commit of step %d not delivered (attempt %d), keeping it queued: %s",
                    record.step,
                    failures,
                    err,
                )
        elif isinstance(err, DtrError):
            _log.error(
                "commit of step %d failed (attempt %d) with %s: %s; keeping it queued",
                record.step,
                failures,
                type(err).__name__,
                err,
            )
        elif failures == 1:  # a bug in send: the traceback once, then quiet retries
            _log.exception("send failed for the commit of step %d; keeping it queued", record.step)

    def _backoff_s(self, failures: int) -> float:
        """Exponential backoff, capped at the policy's max_backoff_s, with equal jitter.

        At least half the ceiling is always waited, so a fleet of partitioned
        workers spreads out without any of them hammering a coordinator that
        is coming back.
        """
        ceiling = min(
            self._policy.max_backoff_s,
            self._policy.initial_backoff_s * 2 ** min(failures - 1, 32),
        )
        return random.uniform(ceiling / 2, ceiling)
