"""``CheckpointManager``: asynchronous, verified checkpoints that survive partitions.

One save goes through four stages, and only the first blocks training:

1. **snapshot** (caller's thread): tensors are copied into reused staging
   memory (``snapshot.py``; pinned memory and one synchronize for CUDA);
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

Storage clean-up: each worker deletes its own parts of steps that can no
longer be loaded (superseded commits, steps older than the newest
``keep`` complete ones it knows of); the leader deletes the records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtr.errors import CheckpointError, DtrError, InvalidArgument, NoCheckpoint
from dtr.keys import validate_step
from dtr.proto import coordinator_pb2 as pb
from dtr.storage import Checksum, Storage, StoredObject, open_storage

from .checkpoint_format import FORMAT_VERSION, JsonValue, decode
from .checkpoint_rpc import LatestCheckpoint, StoredPart
from .commit_flusher import CommitAck, CommitFlusher
from .commit_queue import CommitOutcome, CommitQueue, CommitRecord
from .replicated import await_manifest, manifest_name, replicated_name, write_manifest
from .snapshot import Snapshot, StagingBusy, StagingPool, snapshot
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


def _lower_priority() -> None:
    """Let background saving give way to training when the cores are busy.

    On Linux a thread is a task with its own nice value, so this lowers the
    writer thread alone (and the threads it starts). Elsewhere it does nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def part_name(step: int, worker_id: str) -> str:
    """Where a worker's part of a step lives under the checkpoint URI (steps sort by name)."""
    return f"step-{validate_step(step):020d}/{worker_id}.dtr"


def default_queue_path(job: str, worker_id: str) -> Path:
    """``$DTR_STATE_DIR`` (else ``~/.local/state/dtr``)``/<job>/<worker>.commits.sqlite``.

    Keyed by the stable worker id, so a restarted worker finds and replays
    the commits its previous process queued.
    """
    root = Path(os.environ.get("DTR_STATE_DIR") or Path.home() / ".local" / "state" / "dtr")
    return root / job / f"{worker_id}.commits.sqlite"


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
        self._worker, self.keep, self.checksum, self.when_full = worker, keep, checksum, when_full
        self.replicated, self.writer, self.replica_wait_s = replicated, writer, replica_wait_s
        self._stopping = threading.Event()
        self._on_commit = on_commit
        self.storage: Storage = open_storage(uri, **(storage_options or {}))
        if queue_path:
            path = Path(queue_path)
        else:  # dtr's own location: create it (the tutorial's first run found it missing)
            path = default_queue_path(worker.job, worker.worker_id)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise CheckpointError(
                    f"cannot create the commit queue's directory {path.parent}: {err.strerror}; "
                    "set DTR_STATE_DIR to a writable directory or pass queue_path"
                ) from None
        self._queue = CommitQueue(path)
        self._pool = StagingPool(max_buffers=max_in_flight, block=when_full == "wait")
        self._writer = ThreadPoolExecutor(
            1, thread_name_prefix="dtr-checkpoint-writer", initializer=_lower_priority
        )
        self._lock = threading.Lock()
        self._in_flight: set[Future[SaveResult]] = set()
        self._complete: set[int] = set()
        self._last_durable_step: int | None = None
        self._closed = False
        self._flusher = CommitFlusher(self._queue, self._send, on_outcome=self._on_outcome)
        self._flusher.start()
        worker.checkpoint_progress = self._progress
        worker.metrics.watch_commit_queue(lambda: self._queue.depth)

    # -- saving -------------------------------------------------------------------
    def save_async(self, state: Any, step: int) -> Future[SaveResult]:
        """Snapshot ``state`` now and write it in the background; see the module docstring.

        Raises ``InvalidArgument`` at once for state that cannot be saved
        (naming where in the state); write errors arrive on the future.
        """
        validate_step(step)
        if self._closed:
            raise CheckpointError("the checkpoint manager is closed")
        generation = self._worker.generation
        if self.replicated and not self.writer:
            return self._track(self._writer.submit(self._adopt_and_queue, step, generation))
        meta: dict[str, JsonValue] = {
            "step": step,
            "worker_id": self._worker.worker_id,
            "generation": generation,
        }
        started = time.perf_counter()
        try:
            snap = snapshot(state, meta, self._pool)
        except StagingBusy:
            if self.when_full != "drop":
                raise
            _log.warning("checkpoint step %d dropped: a previous save is still writing", step)
            dropped: Future[SaveResult] = Future()
            dropped.set_result(SaveResult(step, dropped=True))
            return dropped
        finally:
            self._worker.metrics.checkpoint_stall_seconds.observe(time.perf_counter() - started)
        return self._track(self._writer.submit(self._write_and_queue, snap, step, generation))

    def _track(self, future: Future[SaveResult]) -> Future[SaveResult]:
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._forget)
        return future

    def _object_name(self, step: int) -> str:
        if self.replicated:
            return replicated_name(step)
        return part_name(step, self._worker.worker_id)

    def _forget(self, future: Future[SaveResult]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def _write_and_queue(self, snap: Snapshot, step: int, generation: int) -> SaveResult:
        started = time.perf_counter()
        try:
            stored = self.storage.write(
                self._object_name(step), snap.buffers(), algorithm=self.checksum
            )
        finally:
            snap.release()
        self._worker.metrics.wrote_part(time.perf_counter() - started, stored.size_bytes)
        if self.replicated:
            write_manifest(self.storage, step, stored)
        return self._queue_commit(step, generation, stored)

    def _adopt_and_queue(self, step: int, generation: int) -> SaveResult:
        stored = await_manifest(self.storage, step, self.replica_wait_s, self._stopping)
        return self._queue_commit(step, generation, stored)

    def _queue_commit(self, step: int, generation: int, stored: StoredObject) -> SaveResult:
        """Append the commit of a durable part to the on-disk queue and wake the flusher."""
        worker_id = self._worker.worker_id
        record = CommitRecord.for_part(
            stored,
            job=self._worker.job,
            step=step,
            worker_id=worker_id,
            generation=generation,
            format_version=FORMAT_VERSION,
            replicated=self.storage.is_replicated,
        )
        self._queue.append(record)
        self._flusher.kick()
        self._last_durable_step = max(step, self._last_durable_step or 0)
        checksum = f"{record.checksum_algorithm}:{record.checksum_hex}"
        return SaveResult(step, stored.uri, stored.size_bytes, checksum)

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until every save is durable and every queued commit acknowledged.

        Raises the first failed save's error, or ``CheckpointError`` when
        commits are still queued at ``timeout_s`` (no coordinator answered).
        """
        with self._lock:
            pending = list(self._in_flight)
        for future in pending:
            future.result(timeout=timeout_s)
        if not self._flusher.wait_empty(timeout_s):
            raise CheckpointError(
                f"{self._queue.depth} checkpoint commits still queued after {timeout_s} s: no "
                "coordinator acknowledged them yet (they stay queued on disk and are retried)"
            )

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
        return self._queue.last_committed_step

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
        doomed = [record.step] if ack.outcome is CommitOutcome.SUPERSEDED else []
        kept = sorted(self._complete)[-self.keep :]
        if len(kept) == self.keep:
            doomed += [s for s in self._own_steps() if s < kept[0]]
            self._complete = set(kept)
        for step in doomed:
            try:
                self.storage.delete(self._object_name(step))
                if self.replicated:
                    self.storage.delete(manifest_name(step))
            except DtrError as err:  # harmless: retried with the next ack
                _log.warning("could not delete the part of step %d: %s", step, err)

    def _own_steps(self) -> list[int]:
        suffix = "/" + self._object_name(0).rsplit("/", 1)[1]
        names = (n for n in self.storage.list("step-") if n.endswith(suffix))
        return [int(n[len("step-") : -len(suffix)]) for n in names]

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
        self._flusher.wait_empty(min(timeout_s, 5.0))
        self._flusher.stop()
        self._worker.metrics.watch_commit_queue(None)  # before the queue closes
        self._queue.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
