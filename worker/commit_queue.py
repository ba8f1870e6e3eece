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

Job lives: every record carries the job life it was made for (``job_life``,
``"<etcd cluster id>/<job uid>"``) and the incarnation that wrote its part.
The queue's key includes the life, so a new life of the job (a fresh
cluster, a wiped prefix) can queue a step an old life's record still holds.
Pending records of another life are *set aside* (``set_aside_other_lives``):
kept in the file, never sent, never blocking the head; ``dtr queue list`` and
``dtr queue clear`` show and remove them. Records without a life (made
before lives existed, schema version 1) are adopted while the worker's own
life is empty too, and set aside once it is not: nothing says they belong to
it, and replaying another life's record is exactly what must not happen.

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
from dataclasses import astuple, dataclass, field
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
_SCHEMA_VERSION = 2
#: Version 2 added the job life and incarnation of each record and the
#: 'set_aside' state; the queue key (UNIQUE) includes the job life, so a new
#: life can queue a step an old life's record still holds.
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
    job_life TEXT NOT NULL DEFAULT '',
    incarnation INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'set_aside')),
    outcome TEXT CHECK (outcome IN ('accepted', 'duplicate', 'superseded', 'rejected')),
    done_at REAL,
    UNIQUE (job, job_life, step, worker_id, generation)
);
CREATE INDEX IF NOT EXISTS commits_by_state ON commits (state, seq);
"""
#: Version 1 files: the table is rebuilt (SQLite cannot change a UNIQUE
#: constraint in place); old rows get job life '' and incarnation 0.
_MIGRATE_FROM_1 = """
ALTER TABLE commits RENAME TO commits_v1;
DROP INDEX IF EXISTS commits_by_state;
{schema}
INSERT INTO commits (seq, job, step, worker_id, generation, uri, size_bytes,
    checksum_algorithm, checksum_hex, format_version, manifest_uri, replicated,
    enqueued_at, state, outcome, done_at)
  SELECT seq, job, step, worker_id, generation, uri, size_bytes,
    checksum_algorithm, checksum_hex, format_version, manifest_uri, replicated,
    enqueued_at, state, outcome, done_at FROM commits_v1;
DROP TABLE commits_v1;
"""
_RECORD_COLUMNS = (
    "job, step, worker_id, generation, uri, size_bytes, checksum_algorithm, "
    "checksum_hex, format_version, manifest_uri, replicated, job_life, incarnation, enqueued_at"
)
_RECORD_COLUMN_COUNT = len(_RECORD_COLUMNS.split(","))
# Keep the newest `keep_done` done rows, and always each job life's row holding its
# highest committed step, so last_committed_step(_of) survives pruning. (SQLite: the
# bare `seq` next to MAX(step) is taken from the row holding the maximum.)
_PRUNE = """
DELETE FROM commits WHERE state = 'done'
  AND seq <= COALESCE((SELECT seq FROM commits WHERE state = 'done'
                      ORDER BY seq DESC LIMIT 1 OFFSET ?), -1)
  AND seq NOT IN (SELECT seq FROM (SELECT seq, MAX(step) FROM commits
                  WHERE outcome IN ('accepted', 'duplicate') GROUP BY job_life))
"""


def state_root(state_dir: str | Path | None = None) -> Path:
    """``state_dir``, else ``$DTR_STATE_DIR``, else ``~/.local/state/dtr``."""
    if state_dir:
        return Path(state_dir)
    return Path(os.environ.get("DTR_STATE_DIR") or Path.home() / ".local" / "state" / "dtr")


def queue_file(job: str, worker_id: str, state_dir: str | Path | None = None) -> Path:
    """Where a worker's queue lives: ``<state root>/<job>/<worker>.commits.sqlite``.

    Shared by the checkpoint manager and ``dtr queue`` so both find the same file.
    """
    return state_root(state_dir) / job / f"{worker_id}.commits.sqlite"


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
    #: The job life the record was made for (``Worker.job_life``); '' when
    #: the coordinator predates job lives. Never replayed into another life.
    job_life: str = ""
    #: The worker incarnation that wrote the part (``Worker.incarnation``).
    incarnation: int = 0
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
        job_life: str = "",
        incarnation: int = 0,
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
            job_life=job_life,
            incarnation=incarnation,
        )

    def __post_init__(self) -> None:
        for name in ("job", "worker_id", "uri", "checksum_algorithm", "checksum_hex"):
            if not getattr(self, name):
                raise InvalidArgument(f"commit record {name}: must not be empty")
        if not isinstance(self.job_life, str):
            raise InvalidArgument(
                f"commit record job_life: must be a string; got {self.job_life!r}"
            )
        for name in ("step", "generation", "size_bytes", "format_version", "incarnation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _INT_LIMIT:
                raise InvalidArgument(
                    f"commit record {name}: must be an integer in [0, 2**63); got {value!r}"
                )

    @property
    def key(self) -> tuple[str, int, str, int]:
        """The idempotency key the coordinator deduplicates on."""
        return (self.job, self.step, self.worker_id, self.generation)

    @property
    def queue_key(self) -> tuple[str, str, int, str, int]:
        """The queue's own key: the coordinator's, within one job life."""
        return (self.job, self.job_life, self.step, self.worker_id, self.generation)

    def has_same_part(self, other: CommitRecord) -> bool:
        """Whether both describe the same bytes (``enqueued_at`` aside)."""
        return self == other


@dataclass(frozen=True)
class CommitEntry:
    """One row of the queue's history: a record and what became of it."""

    seq: int
    record: CommitRecord
    outcome: CommitOutcome | None  # None while pending or set aside
    done_at: float | None
    #: 'pending', 'done' or 'set_aside' (made for another job life: kept, never sent).
    state: str = "pending"

    @property
    def is_pending(self) -> bool:
        return self.state == "pending"

    @property
    def is_set_aside(self) -> bool:
        return self.state == "set_aside"


def _record_of(row: sqlite3.Row | tuple[Any, ...]) -> CommitRecord:
    """A record from the ``_RECORD_COLUMNS`` of a row, in that order."""
    values = list(row[:_RECORD_COLUMN_COUNT])
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
            _create_or_migrate(conn, version)
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
                f"SELECT seq, {_RECORD_COLUMNS} FROM commits WHERE job = ? AND job_life = ? "
                "AND step = ? AND worker_id = ? AND generation = ?",
                record.queue_key,
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
                f"INSERT INTO commits ({_RECORD_COLUMNS}) "
                f"VALUES ({', '.join('?' * _RECORD_COLUMN_COUNT)})",
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
            if row[0] != "pending":
                _log.debug("commit record %d already %s (%s); keeping that", seq, row[0], row[1])
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
        """The highest step the coordinator accepted (or had) in any job life, None if none.

        A worker reports :meth:`last_committed_step_of` its own life: another
        life's steps (the same job name on a fresh cluster) are not this job's.
        """
        with self._transaction("read the last committed step", write=False) as conn:
            row = conn.execute(
                "SELECT MAX(step) FROM commits WHERE outcome IN ('accepted', 'duplicate')"
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def last_committed_step_of(self, job_life: str) -> int | None:
        """The highest step committed in job life ``job_life``, None if none yet."""
        with self._transaction("read the last committed step", write=False) as conn:
            row = conn.execute(
                "SELECT MAX(step) FROM commits WHERE outcome IN ('accepted', 'duplicate') "
                "AND job_life = ?",
                (job_life,),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def history(self) -> list[CommitEntry]:
        """Every row still kept, pending and done, oldest first."""
        with self._transaction("read the history", write=False) as conn:
            rows = conn.execute(
                f"SELECT seq, {_RECORD_COLUMNS}, outcome, done_at, state FROM commits ORDER BY seq"
            ).fetchall()
        return [
            CommitEntry(
                seq=int(row[0]),
                record=_record_of(row[1:]),
                outcome=None if row[-3] is None else CommitOutcome(row[-3]),
                done_at=row[-2],
                state=str(row[-1]),
            )
            for row in rows
        ]

    # -- job lives -----------------------------------------------------------------
    def set_aside_other_lives(self, job_life: str) -> int:
        """Set aside every pending record made for a job life other than ``job_life``.

        Such a record can never commit here (the coordinator's job is another
        life, or its prefix was wiped): replaying it would only block this
        life's head or collide with its steps. It stays in the file (``dtr
        queue list`` shows it, ``dtr queue clear --set-aside`` removes it).
        Records with an empty life predate job lives: they are adopted while
        the current life is empty too, and set aside once it is not, since
        nothing says they belong to it. Returns how many were set aside.
        """
        with self._transaction("set aside records of other job lives") as conn:
            cursor = conn.execute(
                "UPDATE commits SET state = 'set_aside' WHERE state = 'pending' "
                "AND job_life != ? AND (job_life != '' OR ? != '')",
                (job_life, job_life),
            )
            return int(cursor.rowcount)

    def set_aside(self, seq: int) -> None:
        """Set aside one pending record (the coordinator said it is of another job life)."""
        with self._transaction(f"set aside record {seq}") as conn:
            conn.execute(
                "UPDATE commits SET state = 'set_aside' WHERE seq = ? AND state = 'pending'", (seq,)
            )

    def counts(self) -> dict[str, int]:
        """Rows per state: ``{"pending": n, "set_aside": n, "done": n}``."""
        with self._transaction("count records", write=False) as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM commits GROUP BY state").fetchall()
        counts = {"pending": 0, "set_aside": 0, "done": 0}
        counts.update({str(state): int(n) for state, n in rows})
        return counts

    def clear(self, *, set_aside: bool = False, pending: bool = False) -> int:
        """Delete set-aside and/or pending rows (an operator's explicit choice); how many.

        Pending rows are commits not yet answered: deleting them loses those
        commits for good, which is why it takes its own flag.
        """
        states = [
            name for name, wanted in (("set_aside", set_aside), ("pending", pending)) if wanted
        ]
        if not states:
            raise InvalidArgument("say what to clear: set-aside rows, pending rows or both")
        with self._transaction(f"clear {' and '.join(states)} rows") as conn:
            marks = ", ".join("?" * len(states))
            cursor = conn.execute(f"DELETE FROM commits WHERE state IN ({marks})", states)
            return int(cursor.rowcount)

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


def _create_or_migrate(conn: sqlite3.Connection, version: int) -> None:
    """Create the table (a new file) or bring a version-1 file to version 2, atomically."""
    if version == _SCHEMA_VERSION:
        conn.executescript(_SCHEMA)  # IF NOT EXISTS: a no-op on a current file
        return
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'commits'"
    ).fetchone()
    script = _MIGRATE_FROM_1.format(schema=_SCHEMA) if has_table else _SCHEMA
    # One transaction: a crash mid-migration leaves the version-1 file as it was.
    conn.executescript(
        f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {_SCHEMA_VERSION};\nCOMMIT;"
    )
    if has_table:
        _log.info("commit queue migrated from schema version %d to %d", version, _SCHEMA_VERSION)


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
