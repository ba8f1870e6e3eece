"""``CheckpointManager``: asynchronous, verified checkpoints that survive partitions.

One save goes through four stages, and only the first blocks training:

1. **snapshot** (caller's thread): tensors are copied into reused staging
   memory (``snapshot.py``; pinned memory and one synchronize for CUDA);
   ``prepare(state)`` allocates and touches that memory ahead of the first
   save, on a helper thread (``staging.py``);
2. **write** (one writer thread): the header and the staged bytes go to
   storage atomically with a checksum computed on the way (``dtr.storage``);
   a thread, not a process, because the bytes are already in memory and every
   heavy step (``writev``, hashing, S3 uploads) releases the GIL;
3. **queue** (writer thread): the commit record is appended to the on-disk
   queue (SQLite, fsynced) — from here on a crash loses nothing;
4. **commit** (flusher thread): the record is replayed to the leader until it
   answers; a partition only delays this stage (``commit_flusher.py``).

The future ``save_async`` returns completes after stage 3: the part is
durable and its commit cannot be lost. ``wait()`` also waits for stage 4.
Back-pressure: at most ``max_in_flight`` saves hold staging memory; the next
``save_async`` waits for one (``when_full="wait"``) or is skipped
(``"drop"``, the future says ``dropped``).

``load_latest`` asks the coordinators for the latest *complete* step, reads
this worker's part (or, for a worker that joined later, the first part:
data-parallel replicas hold the same state), verifies size and checksum
before decoding, and falls back to the previous complete step when a part is
missing or corrupt — never to garbage. Decoding never unpickles.

Part objects are immutable (DESIGN §5 invariant 4): every save writes a name
of its own, ``step-<S>/<worker>.<incarnation>-<random>.dtr``, so a restarted
worker that saves a step again never touches the object a complete step
references. A save that fails is never silent: it is logged at ERROR once
with its cause, counted (``dtr_worker_checkpoint_save_failures_total``) and
raised by the next ``wait()``.

Storage clean-up: each worker deletes its own objects of steps older than the
oldest of the newest ``keep`` complete steps it knows of, except those a
pending commit of its queue references; never by name on a SUPERSEDED answer
(in replicated mode that object may be the one the other members completed
the step with). Superseded objects of newer steps wait until their step falls
out of retention. The leader deletes the records. Keep ``keep`` at least the
coordinators' ``--keep-checkpoints``, or retained steps lose their parts.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtr import mutants
from dtr.errors import AlreadyExists, CheckpointError, DtrError, InvalidArgument, NoCheckpoint
from dtr.keys import validate_step
from dtr.proto import coordinator_pb2 as pb
from dtr.storage import Checksum, Storage, StoredObject, open_storage

from .checkpoint_format import FORMAT_VERSION, JsonValue, decode
from .checkpoint_gc import OwnPartCollector
from .checkpoint_rpc import LatestCheckpoint, StoredPart
from .commit_flusher import CommitAck, CommitFlusher
from .commit_queue import CommitQueue, CommitRecord, queue_file
from .replicated import (
    await_manifest,
    is_replicated_object,
    manifest_name,
    replicated_name,
    save_token,
    step_prefix,
    write_manifest,
)
from .snapshot import LayoutCache, Snapshot, StagingBusy, StagingPool, prepare, snapshot
from .staging import lower_priority
from .worker import Worker

_log = logging.getLogger(__name__)
_MISSING: Any = object()
#: One send's retry budget; the flusher backs off and sends the same record again.
_COMMIT_DEADLINE_S = 10.0


@dataclass(frozen=True)
class SaveResult:
    """A save that is durable on storage with its commit queued (or one that was dropped)."""

    step: int
    uri: str = ""
    size_bytes: int = 0
    checksum: str = ""  # "<algorithm>:<hex digest>"
    dropped: bool = False


def part_name(step: int, worker_id: str, token: str = "") -> str:
    """Where one save of a worker's part of a step lives (steps sort by name).

    ``token`` (``replicated.save_token``: incarnation and a random nonce)
    makes the name unique per save, so no object is ever written twice;
    without it, the fixed name earlier versions wrote (still recognised, and
    what the chaos harness's simulated workers write).
    """
    base = f"{worker_id}.{token}.dtr" if token else f"{worker_id}.dtr"
    return step_prefix(step) + base


def step_of(name: str) -> int | None:
    """The step of an object name under the checkpoint URI, None when it is not a step's."""
    match = re.fullmatch(r"step-(\d{20})/[^/]+", name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class SaveIdentity:
    """Who saves: the worker's generation, incarnation and job life when ``save_async`` was called.

    Taken once, together: the part is written on another thread later, and
    by then the worker may have rejoined (a new incarnation) or met a new job
    life; a record stamped with the new life but the old generation could be
    accepted into a life it was never made for.
    """

    generation: int
    incarnation: int
    job_life: str

    @classmethod
    def of(cls, worker: Worker) -> SaveIdentity:
        return cls(worker.generation, worker.incarnation, worker.job_life)


class CheckpointManager:
    """Saves and loads one worker's checkpoint parts; see the module docstring."""

    def __init__(
        self,
        worker: Worker,
        uri: str,
        *,
        max_in_flight: int = 1,
        when_full: str = "wait",
        keep: int = 3,
        checksum: str = "crc32c",
        queue_path: str | Path | None = None,
        storage_options: Mapping[str, Any] | None = None,
        replicated: bool = False,
        writer: bool = True,
        replica_wait_s: float = 600.0,
        on_commit: Callable[[CommitRecord, CommitAck], None] | None = None,
    ) -> None:
        """Validate, open storage and the commit queue, and start replaying queued commits.

        ``storage_options`` go to ``dtr.storage.open_storage`` (for S3:
        ``endpoint_url``, ``region``, part sizes; ``$DTR_S3_ENDPOINT`` also works).
        ``replicated``: every member holds the same state; only the member with
        ``writer=True`` writes it, the others wait up to ``replica_wait_s`` for
        it and commit the same part (``worker/replicated.py``). ``on_commit`` is
        called (on the flusher thread) with every record the coordinator answered.
        """
        if (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise InvalidArgument(f"max_in_flight must be an integer >= 1; got {max_in_flight!r}")
        if when_full not in ("wait", "drop"):
            raise InvalidArgument(f"when_full must be 'wait' or 'drop'; got {when_full!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidArgument(f"keep must be an integer >= 1; got {keep!r}")
        if checksum not in ("crc32c", "sha256"):
            raise InvalidArgument(f"checksum must be 'crc32c' or 'sha256'; got {checksum!r}")
        if not replica_wait_s > 0:
            raise InvalidArgument(f"replica_wait_s must be > 0; got {replica_wait_s!r}")
        mutants.selected()  # a misspelt planted bug refuses to start (test harness only)
        self._worker, self.keep, self.checksum, self.when_full = worker, keep, checksum, when_full
        self.replicated, self.writer, self.replica_wait_s = replicated, writer, replica_wait_s
        self._stopping = threading.Event()
        self._on_commit = on_commit
        self.storage: Storage = open_storage(uri, **(storage_options or {}))
        if queue_path:
            path = Path(queue_path)
        else:  # dtr's own location: create it (the tutorial's first run found it missing)
            path = queue_file(worker.job, worker.worker_id)  # what a restart finds again
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise CheckpointError(
                    f"cannot create the commit queue's directory {path.parent}: {err.strerror}; "
                    "set DTR_STATE_DIR to a writable directory or pass queue_path"
                ) from None
        self._queue = CommitQueue(path)
        self._pool = StagingPool(max_buffers=max_in_flight, block=when_full == "wait")
        self._layouts = LayoutCache()  # the next save of the same shapes reuses the layout
        self._writer = ThreadPoolExecutor(
            1, thread_name_prefix="dtr-checkpoint-writer", initializer=lower_priority
        )
        self._lock = threading.Lock()
        self._in_flight: set[Future[SaveResult]] = set()
        #: Failed saves since the last wait(), oldest first (wait() raises the first).
        self._failures: list[BaseException] = []
        self._complete: set[int] = set()
        self._last_durable_step: int | None = None
        self._closed = False
        self._collector = OwnPartCollector(
            self.storage, is_own=self._is_own, step_of=step_of, referenced=self._referenced_uris
        )
        self._flusher = CommitFlusher(
            self._queue,
            self._send,
            on_outcome=self._on_outcome,
            job_life=lambda: worker.job_life,
            on_set_aside=worker.metrics.commit_records_set_aside.inc,
        )
        self._flusher.start()
        worker.checkpoint_progress = self._progress
        worker.metrics.watch_commit_queue(lambda: self._queue.depth)

    # -- saving -------------------------------------------------------------------
    def prepare(self, state: Any) -> Future[None]:
        """Ready staging memory for ``state`` on a helper thread: the first save is then fast.

        Costs one buffer of ``state``'s size, kept (docs/operations.md). Call it with the
        state you will save; a save meanwhile waits for it. Bad state: ``InvalidArgument``.
        """
        if self._closed:
            raise CheckpointError("the checkpoint manager is closed")
        return prepare(state, self._pool, self._layouts, skip=self.replicated and not self.writer)

    def save_async(self, state: Any, step: int) -> Future[SaveResult]:
        """Snapshot ``state`` now and write it in the background; see the module docstring.

        Raises ``InvalidArgument`` at once for state that cannot be saved
        (naming where in the state); write errors arrive on the future.
        """
        validate_step(step)
        if self._closed:
            raise CheckpointError("the checkpoint manager is closed")
        who = SaveIdentity.of(self._worker)
        if self.replicated and not self.writer:
            return self._submit(None, self._adopt_and_queue, step, who)
        meta: dict[str, JsonValue] = {
            "step": step,
            "worker_id": self._worker.worker_id,
            "generation": who.generation,
        }
        started = time.perf_counter()
        try:
            snap = snapshot(state, meta, self._pool, layouts=self._layouts)
        except StagingBusy:
            if self.when_full != "drop":
                raise
            _log.warning("checkpoint step %d dropped: a previous save is still writing", step)
            dropped: Future[SaveResult] = Future()
            dropped.set_result(SaveResult(step, dropped=True))
            return dropped
        finally:
            self._worker.metrics.checkpoint_stall_seconds.observe(time.perf_counter() - started)
        return self._submit(snap, self._write_and_queue, snap, step, who)

    def _submit(
        self, snap: Snapshot | None, call: Callable[..., SaveResult], *args: Any
    ) -> Future[SaveResult]:
        """Queue a save for the writer; its snapshot goes back if it never runs (a future
        cancelled while queued; ``close()`` on another thread, a signal handler's, say)."""
        try:
            future = self._writer.submit(call, *args)
        except RuntimeError:  # "cannot schedule new futures after shutdown"
            if snap is not None:
                snap.release()
            raise CheckpointError("the checkpoint manager is closed") from None
        if snap is not None:
            future.add_done_callback(snap.release_if_cancelled)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._settle)
        return future

    def _object_name(self, step: int, token: str) -> str:
        if self.replicated:
            return replicated_name(step, token)
        if mutants.active(mutants.PARTS_OVERWRITTEN):  # MUTANT: one fixed name per step, worker
            token = ""
        return part_name(step, self._worker.worker_id, token)

    def _settle(self, future: Future[SaveResult]) -> None:
        """A save ended: forget it and, if it failed, log, count and keep its error for wait().

        Idempotent (the done callback and ``wait()`` may both call it): only
        the call that takes the future out of the in-flight set acts.
        """
        with self._lock:
            if future not in self._in_flight:
                return
            self._in_flight.discard(future)
            error = None if future.cancelled() else future.exception()
            if error is not None:
                self._failures.append(error)
        if error is not None:
            self._worker.metrics.checkpoint_save_failures.inc()
            _log.error("checkpoint save failed: %s: %s", type(error).__name__, error)

    def _write_and_queue(self, snap: Snapshot, step: int, who: SaveIdentity) -> SaveResult:
        token = save_token(who.incarnation, secrets.token_hex(8))
        name = self._object_name(step, token)
        started = time.perf_counter()
        try:
            stored = self.storage.write(name, snap.buffers(), algorithm=self.checksum)
        finally:
            snap.release()
        self._collector.wrote(name)
        self._worker.metrics.wrote_part(time.perf_counter() - started, stored.size_bytes)
        if self.replicated:
            write_manifest(self.storage, step, token, stored, who.job_life)
            self._collector.wrote(manifest_name(step, token))
            return self._queue_commit(step, who, stored)
        try:
            return self._queue_commit(step, who, stored)
        except AlreadyExists:
            # Nothing references an object whose commit was refused (its name is this
            # save's own): remove it rather than leave it for retention.
            with contextlib.suppress(DtrError):
                self.storage.delete(name)
            raise

    def _adopt_and_queue(self, step: int, who: SaveIdentity) -> SaveResult:
        stored = await_manifest(
            self.storage, step, who.job_life, self.replica_wait_s, self._stopping
        )
        return self._queue_commit(step, who, stored)

    def _queue_commit(self, step: int, who: SaveIdentity, stored: StoredObject) -> SaveResult:
        """Append the commit of a durable part to the on-disk queue and wake the flusher."""
        worker_id = self._worker.worker_id
        record = CommitRecord.for_part(
            stored,
            job=self._worker.job,
            step=step,
            worker_id=worker_id,
            generation=who.generation,
            format_version=FORMAT_VERSION,
            replicated=self.storage.is_replicated,
            job_life=who.job_life,
            incarnation=who.incarnation,
        )
        self._queue.append(record)
        self._flusher.kick()
        self._last_durable_step = max(step, self._last_durable_step or 0)
        checksum = f"{record.checksum_algorithm}:{record.checksum_hex}"
        return SaveResult(step, stored.uri, stored.size_bytes, checksum)

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until every save is durable and every queued commit acknowledged.

        Raises the first save that failed since the last ``wait()`` (its own
        error; the others were logged and counted). Raises ``CheckpointError``
        when saves are still writing or commits still queued at ``timeout_s``,
        or — with or without a timeout — when the head commit keeps failing
        with an error that is no verdict on it (the record stays queued and
        is still retried; the message names it and the error).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            pending = list(self._in_flight)
        _done, writing = wait_futures(pending, timeout=timeout_s)
        for future in pending:
            if future.done():
                self._settle(future)  # the done callback may not have run yet
        self._raise_first_failure()
        if writing:
            raise CheckpointError(
                f"{len(writing)} checkpoint saves still writing after {timeout_s} s"
            )
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            stuck = self._flusher.wait_settled(left)
        except TimeoutError:
            raise CheckpointError(
                f"{self._queue.depth} checkpoint commits still queued after {timeout_s} s: no "
                "coordinator acknowledged them yet (they stay queued on disk and are retried)"
            ) from None
        if stuck is not None:
            raise CheckpointError(
                f"{stuck.describe()}; it stays queued in {self._queue.path} and is retried, "
                "but wait() cannot finish until its cause is fixed"
            ) from stuck.error

    def _raise_first_failure(self) -> None:
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise failures[0]

    @property
    def saves_in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    @property
    def commits_queued(self) -> int:
        return self._queue.depth

    @property
    def last_durable_step(self) -> int | None:
        return self._last_durable_step

    @property
    def last_committed_step(self) -> int | None:
        return self._queue.last_committed_step_of(self._worker.job_life)  # not an old life's

    def _progress(self) -> pb.CheckpointProgress:
        """What the next heartbeat reports (``dtr status``, the chaos checker)."""
        progress = pb.CheckpointProgress(
            saves_in_flight=self.saves_in_flight, commits_queued=self.commits_queued
        )
        if self._last_durable_step is not None:
            progress.last_durable_step = self._last_durable_step
        committed = self.last_committed_step
        if committed is not None:
            progress.last_committed_step = committed
        return progress

    # -- committing ---------------------------------------------------------------
    def _send(self, record: CommitRecord) -> CommitAck:
        return self._worker.commit_checkpoint(record, _COMMIT_DEADLINE_S)

    def _on_outcome(self, record: CommitRecord, ack: CommitAck) -> None:
        """Learn complete steps from acks; delete own parts that can never be loaded."""
        if self._on_commit is not None:
            self._on_commit(record, ack)
        if ack.step_complete:
            self._complete.add(record.step)
        if ack.latest_complete_step is not None:
            self._complete.add(ack.latest_complete_step)
        if self.replicated and not self.writer:
            return  # the writer deletes what it wrote
        kept = sorted(self._complete)[-self.keep :]
        if len(kept) < self.keep:
            return
        self._complete = set(kept)
        self._delete_before(kept[0])

    def _delete_before(self, oldest_kept: int) -> None:
        """Have own objects of steps before ``oldest_kept`` deleted (``checkpoint_gc``).

        A SUPERSEDED answer deletes nothing by itself: the object may be what
        a complete step references (replicated members adopted it; the same
        key was accepted before). Steps below the oldest retained complete
        one are loaded by nobody, so their objects can go. The collector runs
        on its own thread: this is called on the flusher's, and a listing or a
        slow store must not hold back the next commit.
        """
        self._collector.collect_before(oldest_kept)

    def _referenced_uris(self) -> set[str]:
        """The uris pending commits name (never deleted: a step may yet reference them)."""
        return {record.uri for _seq, record in self._queue.pending()}

    def _is_own(self, name: str) -> bool:
        """Whether this manager wrote ``name`` (any incarnation, old fixed names too)."""
        if self.replicated:
            return is_replicated_object(name)
        base = name.rpartition("/")[2]
        own = re.escape(self._worker.worker_id) + r"(?:\.\d{10}-[0-9a-f]{16})?\.dtr"
        return re.fullmatch(own, base) is not None

    # -- loading ------------------------------------------------------------------
    def load_latest(self, default: Any = _MISSING, *, map_location: str | None = None) -> Any:
        """``(state, step)`` of the latest complete step whose part verifies, else ``default``.

        Without ``default``, raises ``NoCheckpoint`` when no complete step loads.
        """
        latest = self._worker.latest_checkpoint()
        while latest is not None:
            part = self._part_to_load(latest)
            try:
                state = self._read_part(part, map_location)
                return state, latest.step
            except CheckpointError as err:
                _log.warning(
                    "checkpoint step %d does not load (%s); trying the previous complete step",
                    latest.step,
                    err,
                )
                latest = self._worker.latest_checkpoint(before_step=latest.step)
        if default is _MISSING:
            raise NoCheckpoint(f"job {self._worker.job!r} has no complete checkpoint that loads")
        return default

    def _read_part(self, part: StoredPart, map_location: str | None) -> Any:
        """Verify, then decode, one part; any problem is a ``CheckpointError``."""
        try:
            name = self.storage.name_of(part.uri)
            expected = Checksum.of(part.algorithm, part.hex_digest)
        except InvalidArgument as err:
            raise CheckpointError(f"part {part.uri} cannot be read here: {err}") from err
        data = self.storage.read_verified(name, expected, part.size_bytes)
        state, _meta = decode(data, map_location=map_location)
        return state

    def _part_to_load(self, latest: LatestCheckpoint) -> StoredPart:
        own = latest.part_of(self._worker.worker_id)
        if own is not None:
            return own
        if not latest.parts:
            raise CheckpointError(f"complete step {latest.step} lists no parts")
        _log.info(
            "no part of %s at step %d (it joined later); loading %s's part",
            self._worker.worker_id,
            latest.step,
            latest.parts[0].worker_id,
        )
        return latest.parts[0]

    # -- closing ------------------------------------------------------------------
    def close(self, timeout_s: float = 30.0) -> None:
        """Finish writing saves in flight, stop the flusher (queued commits stay on disk)."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._worker.checkpoint_progress = None
        self._writer.shutdown(wait=True)
        self._pool.close()  # stops a preparation under way; staging memory goes back
        self._flusher.wait_empty(min(timeout_s, 5.0))
        self._flusher.stop()
        self._collector.close()
        self._worker.metrics.watch_commit_queue(None)  # before the queue closes
        self._queue.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
