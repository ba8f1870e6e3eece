"""The worker's durable commit queue: checkpoint commit records on local disk (STYLE rule 6).

Once a worker's checkpoint part is durable on storage, its commit record must
reach the coordinator (``CommitCheckpoint``). A coordinator may be down or
partitioned away for a long time, and the worker keeps training meanwhile, so
the record goes here first: ``append`` returns only once the record is on
disk, and the record leaves the queue only when the coordinator gave a
verdict (``mark_done``): ACCEPTED / DUPLICATE (committed), SUPERSEDED (will
never be needed), or REJECTED (the flusher's own verdict, see
``commit_flusher``). A record whose send timed out stays ``pending``: its
outcome is unknown and replaying it is safe, because the coordinator
deduplicates on the record's key ``(job, step, worker_id, generation)``.
This is DESIGN §5 invariant 5: nothing accepted here is lost, across a
partition and across a crash of the worker process.

The store is one SQLite file in WAL mode with ``synchronous=FULL``; done rows
are kept (bounded by ``keep_done``) so heartbeats, tests and the chaos checker
can read what happened to each record.

What must not live here: gRPC or any coordinator call. Delivery is
``commit_flusher.CommitFlusher``, which is handed the send function.
"""

from __future__ import annotations

import enum
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from dtr.errors import AlreadyExists, CheckpointError, InvalidArgument, NotFound
from dtr.storage import StoredObject

_log = logging.getLogger(__name__)

#: Done rows kept for history() beyond the pending ones; older ones are pruned.
DEFAULT_KEEP_DONE = 1000
#: SQLite integers are signed 64-bit: larger steps, generations or sizes cannot be stored.
_INT_LIMIT = 2**63
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS commits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    step INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    uri TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    checksum_algorithm TEXT NOT NULL,
    checksum_hex TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    manifest_uri TEXT NOT NULL,
    replicated INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done')),
    outcome TEXT CHECK (outcome IN ('accepted', 'duplicate', 'superseded', 'rejected')),
    done_at REAL,
    UNIQUE (job, step, worker_id, generation)
);
CREATE INDEX IF NOT EXISTS commits_by_state ON commits (state, seq);
"""
_RECORD_COLUMNS = (
    "job, step, worker_id, generation, uri, size_bytes, checksum_algorithm, "
    "checksum_hex, format_version, manifest_uri, replicated, enqueued_at"
)
# Keep the newest `keep_done` done rows, and always the row holding the highest
# committed step, so last_committed_step survives pruning.
_PRUNE = """
DELETE FROM commits WHERE state = 'done'
  AND seq <= COALESCE((SELECT seq FROM commits WHERE state = 'done'
                      ORDER BY seq DESC LIMIT 1 OFFSET ?), -1)
  AND seq != COALESCE((SELECT seq FROM commits WHERE outcome IN ('accepted', 'duplicate')
                       ORDER BY step DESC, seq DESC LIMIT 1), -1)
"""


class CommitOutcome(enum.StrEnum):
    """Why a record left the queue."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # an earlier attempt applied; as good as accepted
    SUPERSEDED = "superseded"  # the coordinator will never need it (DESIGN §5 invariant 5)
    REJECTED = "rejected"  # the coordinator refused it for good; logged as an error

    @property
    def is_committed(self) -> bool:
        return self in (CommitOutcome.ACCEPTED, CommitOutcome.DUPLICATE)


@dataclass(frozen=True)
class CommitRecord:
    """One worker's part of one checkpoint step, as ``CommitCheckpoint`` sends it.

    ``checksum_algorithm`` is the lowercase name ("sha256", "crc32c",
    "blake2b"); the send function maps it to the wire enum. ``enqueued_at``
    is wall time, for humans only: order is the queue's sequence.
    """

    job: str
    step: int
    worker_id: str
    generation: int
    uri: str
    size_bytes: int
    checksum_algorithm: str
    checksum_hex: str
    format_version: int
    manifest_uri: str = ""
    replicated: bool = False
    enqueued_at: float = field(default_factory=time.time, compare=False)

    @classmethod
    def for_part(
        cls,
        stored: StoredObject,
        *,
        job: str,
        step: int,
        worker_id: str,
        generation: int,
        format_version: int,
        replicated: bool,
    ) -> CommitRecord:
        """The record of a part just made durable (``stored``: what storage answered)."""
        return cls(
            job=job,
            step=step,
            worker_id=worker_id,
            generation=generation,
            uri=stored.uri,
            size_bytes=stored.size_bytes,
            checksum_algorithm=stored.checksum.algorithm,
            checksum_hex=stored.checksum.hex_digest,
            format_version=format_version,
            replicated=replicated,
        )

    def __post_init__(self) -> None:
        for name in ("job", "worker_id", "uri", "checksum_algorithm", "checksum_hex"):
            if not getattr(self, name):
                raise InvalidArgument(f"commit record {name}: must not be empty")
        for name in ("step", "generation", "size_bytes", "format_version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _INT_LIMIT:
                raise InvalidArgument(
                    f"commit record {name}: must be an integer in [0, 2**63); got {value!r}"
                )

    @property
    def key(self) -> tuple[str, int, str, int]:
        """The idempotency key the coordinator deduplicates on."""
        return (self.job, self.step, self.worker_id, self.generation)

    def has_same_part(self, other: CommitRecord) -> bool:
        """Whether both describe the same bytes (``enqueued_at`` aside)."""
        return self == other


@dataclass(frozen=True)
class CommitEntry:
    """One row of the queue's history: a record and what became of it."""

    seq: int
    record: CommitRecord
    outcome: CommitOutcome | None  # None while pending
    done_at: float | None

    @property
    def is_pending(self) -> bool:
        return self.outcome is None


def _record_of(row: sqlite3.Row | tuple[Any, ...]) -> CommitRecord:
    """A record from the ``_RECORD_COLUMNS`` of a row, in that order."""
    values = list(row[: len(fields(CommitRecord))])
    values[10] = bool(values[10])  # replicated
    return CommitRecord(*values)


class CommitQueue:
    """A durable, ordered queue of commit records in one SQLite file.

    Thread-safe through one connection guarded by one lock: the training
    thread appends while the flusher thread reads and marks done. SQLite
    serializes writers to a file anyway, so per-thread connections would buy
    no parallelism, only ``database is locked`` retries between our own
    threads and connections left open by threads that ended. Every operation
    is short (one small transaction), so the lock is never held for long.
    """

    def __init__(self, path: Path | str, *, keep_done: int = DEFAULT_KEEP_DONE) -> None:
        if keep_done < 0:
            raise InvalidArgument(f"keep_done must be >= 0; got {keep_done}")
        self.path = Path(path)
        self.keep_done = keep_done
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._conn = self._open()
        except (sqlite3.Error, OSError) as err:
            hint = (
                "; its directory must exist and be writable by this process"
                if isinstance(err, sqlite3.OperationalError | OSError)
                else ""
            )
            raise CheckpointError(f"commit queue {self.path}: cannot open ({err}){hint}") from err

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; each method opens its own.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")  # a leftover process may hold the file
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            # FULL fsyncs the WAL on every commit: an append acknowledged to its
            # caller must survive power loss, not just a crash of this process.
            # (NORMAL, the usual WAL setting, may lose the last commits on power loss.)
            conn.execute("PRAGMA synchronous = FULL")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > _SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this dtr's {_SCHEMA_VERSION}"
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        _fsync_directory(self.path.parent)  # the new file's directory entry, too
        return conn

    @contextmanager
    def _transaction(self, what: str, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; SQLite errors become ``CheckpointError``."""
        with self._lock:
            if self._closed:
                raise CheckpointError(f"commit queue {self.path} is closed; cannot {what}")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                raise CheckpointError(f"commit queue {self.path}: cannot {what}: {err}") from err

    def append(self, record: CommitRecord) -> int:
        """Store ``record`` durably and return its sequence number.

        Idempotent: the same key with the same part returns the sequence it
        already has (pending or done; a done record is not queued again, the
        coordinator already gave its verdict). The same key with a different
        part raises ``AlreadyExists``, as the coordinator would.
        """
        with self._transaction("append a commit record") as conn:
            row = conn.execute(
                f"SELECT seq, {_RECORD_COLUMNS} FROM commits "
                "WHERE job = ? AND step = ? AND worker_id = ? AND generation = ?",
                record.key,
            ).fetchone()
            if row is not None:
                existing = _record_of(row[1:])
                if not existing.has_same_part(record):
                    raise AlreadyExists(
                        f"commit queue {self.path}: step {record.step} of worker "
                        f"{record.worker_id!r} (generation {record.generation}) is already "
                        f"queued with part {existing.uri!r}; refusing a different part "
                        f"{record.uri!r}"
                    )
                return int(row[0])
            cursor = conn.execute(
                f"INSERT INTO commits ({_RECORD_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                astuple(record),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def pending(self, limit: int | None = None) -> list[tuple[int, CommitRecord]]:
        """Pending records, oldest first (at most ``limit``)."""
        with self._transaction("read pending records", write=False) as conn:
            rows = conn.execute(
                f"SELECT seq, {_RECORD_COLUMNS} FROM commits WHERE state = 'pending' "
                "ORDER BY seq LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return [(int(row[0]), _record_of(row[1:])) for row in rows]

    def mark_done(self, seq: int, outcome: CommitOutcome | str) -> None:
        """Take record ``seq`` out of the queue with ``outcome``, durably.

        Marking a done record again keeps its first outcome (a no-op, logged);
        an unknown ``seq`` raises ``NotFound``.
        """
        try:
            outcome = CommitOutcome(outcome)
        except ValueError:
            known = ", ".join(o.value for o in CommitOutcome)
            raise InvalidArgument(f"outcome must be one of {known}; got {outcome!r}") from None
        with self._transaction(f"mark record {seq} {outcome}") as conn:
            row = conn.execute(
                "SELECT state, outcome FROM commits WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                raise NotFound(f"commit queue {self.path}: no record with sequence {seq}")
            if row[0] == "done":
                _log.debug("commit record %d already done (%s); keeping that", seq, row[1])
                return
            conn.execute(
                "UPDATE commits SET state = 'done', outcome = ?, done_at = ? WHERE seq = ?",
                (outcome.value, time.time(), seq),
            )
            conn.execute(_PRUNE, (self.keep_done,))

    @property
    def depth(self) -> int:
        """How many records are pending (CheckpointProgress.commits_queued)."""
        with self._transaction("count pending records", write=False) as conn:
            return int(
                conn.execute("SELECT COUNT(*) FROM commits WHERE state = 'pending'").fetchone()[0]
            )

    @property
    def last_committed_step(self) -> int | None:
        """The highest step the coordinator accepted (or had), None if none yet."""
        with self._transaction("read the last committed step", write=False) as conn:
            row = conn.execute(
                "SELECT MAX(step) FROM commits WHERE outcome IN ('accepted', 'duplicate')"
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def history(self) -> list[CommitEntry]:
        """Every row still kept, pending and done, oldest first."""
        with self._transaction("read the history", write=False) as conn:
            rows = conn.execute(
                f"SELECT seq, {_RECORD_COLUMNS}, outcome, done_at FROM commits ORDER BY seq"
            ).fetchall()
        return [
            CommitEntry(
                seq=int(row[0]),
                record=_record_of(row[1:]),
                outcome=None if row[-2] is None else CommitOutcome(row[-2]),
                done_at=row[-1],
            )
            for row in rows
        ]

    def close(self) -> None:
        """Close the file; idempotent. Later calls raise ``CheckpointError``."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> CommitQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _fsync_directory(directory: Path) -> None:
    """Make a newly created file's directory entry durable (best effort on odd filesystems)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
