"""etcd's own record of a job: every revision of its prefix, read back after a run.

The checkers of ``checker_record.py`` judge what etcd *recorded*, not what
workers reported: a worker that never noticed a split brain cannot hide it
from the revision history. The harness reads the history with one watch
from revision 1 (chaos runs never compact etcd), up to a marker key it puts
under the job's prefix at the end, so it knows when the whole record has
arrived whatever other jobs wrote to the same etcd meanwhile.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dtr.errors import StoreError
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from dtr.watch import WatchBatch

#: The key the harness writes last; the checkers ignore it.
MARKER_SUFFIX = "audit-marker"


@dataclass(frozen=True)
class RecordEvent:
    """One change etcd recorded under the job's prefix."""

    revision: int
    kind: str  # "put" or "delete"
    key: str
    value: bytes = b""
    create_revision: int = 0


def marker_key(keys: JobKeys) -> str:
    return f"{keys.prefix}{MARKER_SUFFIX}"


def read_record(
    endpoints: Sequence[str], keys: JobKeys, *, timeout_s: float = 60.0
) -> list[RecordEvent]:
    """Every event under ``keys.prefix`` from revision 1, in revision order.

    Raises ``StoreError`` if etcd compacted part of the history away or the
    record did not arrive within ``timeout_s``.
    """
    with EtcdStore(list(endpoints), timeout_s=5.0) as store:
        end = store.put(marker_key(keys), b"end of the run")
        batches: queue.Queue[WatchBatch] = queue.Queue()
        watch = store.watch_prefix(keys.prefix, batches.put, start_revision=1)
        events: list[RecordEvent] = []
        deadline = time.monotonic() + timeout_s
        try:
            while not events or events[-1].revision < end:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreError(
                        f"etcd's record of {keys.prefix} did not arrive in {timeout_s} s"
                    )
                try:
                    batch = batches.get(timeout=remaining)
                except queue.Empty:
                    continue
                if batch.error is not None:
                    raise batch.error
                events += [
                    RecordEvent(
                        e.kv.mod_revision,
                        e.kind,
                        e.kv.key,
                        e.kv.value if e.kind == "put" else b"",
                        e.kv.create_revision,
                    )
                    for e in batch.events
                ]
        finally:
            watch.cancel()
    return [e for e in events if e.revision < end]
