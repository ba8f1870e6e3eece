"""etcd's own record of a job: every revision of its prefix, followed during a run.

The checkers of ``checker_record.py`` judge what etcd *recorded*, not what
workers reported: a worker that never noticed a split brain cannot hide it
from the revision history. The harness follows the history with one watch
from revision 1 (``RecordReader``, started with the cluster) and, at the
end, puts a marker key under the job's prefix and waits for every revision
before it, so it knows when the whole record has arrived whatever other
jobs wrote to the same etcd meanwhile.

Chaos runs never compact etcd: the harness's etcd runs without
``--auto-compaction-retention`` (0: off) and ``dtr.etcd`` strips ``ETCD_*``
variables from its environment; no coordinator compacts. A record that was
compacted anyway is refused with ``WatchCompacted``, saying so.

A 30-minute soak with hundreds of workers writes millions of revisions, so
the wait has no flat deadline: it fails when nothing arrives for ``stall_s``
(etcd stopped sending), or past a generous ``overall_s``. Values of keys no
checker reads (torchrun's rendezvous store, datasets, replica addresses) are
dropped as they arrive, to keep memory proportional to what is judged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dtr.errors import StoreError, WatchCompacted
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from dtr.watch import WatchBatch, WatchEvent

#: The key the harness writes last; the checkers ignore it.
MARKER_SUFFIX = "audit-marker"
#: No event for this long: etcd stopped sending the record.
STALL_S = 60.0
#: However steadily it arrives, a record that takes longer than this is refused.
OVERALL_S = 3600.0
#: Key segments below the job prefix whose values no record checker reads.
_VALUELESS = ("rendezvous/", "datasets/", "replicas/")


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """One change etcd recorded under the job's prefix."""

    revision: int
    kind: str  # "put" or "delete"
    key: str
    value: bytes = b""
    create_revision: int = 0


def marker_key(keys: JobKeys) -> str:
    return f"{keys.prefix}{MARKER_SUFFIX}"


class RecordReader:
    """One watch on the job's prefix from revision 1, followed live for the whole run.

    Started with the cluster, the watch keeps up as the job writes, so the
    record is in hand when the run ends. A watch that only starts at the end
    must catch up from revision 1, which etcd serves in batches, and that
    cost grows faster than the record (``benchmarks/record_read.py``: 20,000
    revisions in 2.6 s, 200,000 in 139 s; followed live, the 200,000 were in
    hand as the last write landed).
    """

    def __init__(self, endpoints: Sequence[str], keys: JobKeys) -> None:
        self.endpoints, self.keys = list(endpoints), keys
        self._valueless = tuple(f"{keys.prefix}{segment}" for segment in _VALUELESS)
        self._arrived = threading.Condition()
        self._events: list[RecordEvent] = []
        self._error: StoreError | None = None
        self._store: EtcdStore | None = None

    def start(self) -> RecordReader:
        self._store = EtcdStore(self.endpoints, timeout_s=5.0)
        self._store.watch_prefix(self.keys.prefix, self._on_batch, start_revision=1)
        return self

    def _on_batch(self, batch: WatchBatch) -> None:
        events = [_event(e, self._valueless) for e in batch.events]
        with self._arrived:
            self._events += events
            self._error = self._error or batch.error
            self._arrived.notify_all()

    def finish(
        self, *, stall_s: float = STALL_S, overall_s: float = OVERALL_S
    ) -> list[RecordEvent]:
        """Put the end marker and wait for every revision before it; then stop the watch.

        Raises ``WatchCompacted`` (saying so plainly) if etcd compacted part
        of the history away, ``StoreError`` if nothing arrived for
        ``stall_s`` or the wait took longer than ``overall_s``.
        """
        assert self._store is not None, "start() first"
        end = self._store.put(marker_key(self.keys), b"end of the run")
        started = time.monotonic()
        with self._arrived:
            seen = len(self._events)
            last_news = started
            while not self._events or self._events[-1].revision < end:
                _raise_error(self._error, self.keys)
                now = time.monotonic()
                if len(self._events) > seen:
                    seen, last_news = len(self._events), now
                _check_deadlines(self.keys, now - started, now - last_news, stall_s, overall_s)
                self._arrived.wait(min(1.0, stall_s))
            events, self._events = self._events, []
        self.close()
        return [e for e in events if e.revision < end]

    def close(self) -> None:
        """Stop the watch and close the connection (idempotent)."""
        if self._store is not None:
            self._store.close()


def read_record(
    endpoints: Sequence[str],
    keys: JobKeys,
    *,
    stall_s: float = STALL_S,
    overall_s: float = OVERALL_S,
) -> list[RecordEvent]:
    """Every event under ``keys.prefix`` from revision 1, in revision order, read now.

    For a record already written (tests, benchmarks); a run follows the
    record live with ``RecordReader``. Raises as ``RecordReader.finish``.
    """
    reader = RecordReader(endpoints, keys).start()
    try:
        return reader.finish(stall_s=stall_s, overall_s=overall_s)
    finally:
        reader.close()


def _check_deadlines(
    keys: JobKeys, elapsed_s: float, quiet_s: float, stall_s: float, overall_s: float
) -> None:
    if elapsed_s > overall_s:
        raise StoreError(f"etcd's record of {keys.prefix} took longer than {overall_s:g} s")
    if quiet_s > stall_s:
        raise StoreError(
            f"etcd's record of {keys.prefix} stalled: nothing arrived for {stall_s:g} s "
            f"({elapsed_s:.0f} s into the wait for the end marker)"
        )


def _raise_error(error: StoreError | None, keys: JobKeys) -> None:
    if isinstance(error, WatchCompacted):
        raise WatchCompacted(
            f"etcd's record of {keys.prefix} is incomplete: etcd compacted revisions the "
            f"record checkers need ({error}); a chaos run's etcd must keep every "
            "revision until the checkers ran"
        ) from error
    if error is not None:
        raise error


def _event(event: WatchEvent, valueless: tuple[str, ...]) -> RecordEvent:
    kv = event.kv
    keep = event.kind == "put" and not kv.key.startswith(valueless)
    return RecordEvent(
        kv.mod_revision, event.kind, kv.key, kv.value if keep else b"", kv.create_revision
    )
