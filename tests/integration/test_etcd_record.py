"""Reading etcd's record of a job back (``chaos/etcd_record.py``) from a real etcd.

Each test starts its own etcd: the record is read from revision 1, and other
tests compact the shared one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtr.chaos.etcd_record import RecordReader, marker_key, read_record
from dtr.errors import WatchCompacted
from dtr.etcd import EtcdCluster
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from dtr.store_types import Put

KEYS = JobKeys("record")


@pytest.fixture
def harness_etcd() -> Iterator[EtcdCluster]:
    """A single member started the way the chaos harness starts its etcd."""
    cluster = EtcdCluster.start(1)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_the_record_is_every_revision_of_the_prefix_in_order(harness_etcd: EtcdCluster) -> None:
    endpoints = harness_etcd.endpoints
    with EtcdStore(endpoints) as store:
        first = store.put(KEYS.generation, b"1")
        store.put(JobKeys("other").generation, b"7")  # another job: not in this record
        part = json.dumps({"generation": 1}).encode()
        store.txn([], [Put(KEYS.checkpoint_commit(10, "w"), part), Put(KEYS.writer, b"{}")])
        store.put(KEYS.rendezvous_store("r", "k"), b"x" * 1000)
        store.delete(KEYS.generation)
    events = read_record(endpoints, KEYS)
    assert [(e.revision - first, e.kind, e.key) for e in events] == [
        (0, "put", KEYS.generation),
        (2, "put", KEYS.checkpoint_commit(10, "w")),
        (2, "put", KEYS.writer),
        (3, "put", KEYS.rendezvous_store("r", "k")),
        (4, "delete", KEYS.generation),
    ]
    assert events[1].value == part
    assert events[3].value == b"", "a value no record checker reads is dropped"
    assert marker_key(KEYS) not in {e.key for e in events}


def test_a_record_followed_live_holds_every_write_made_while_it_followed(
    harness_etcd: EtcdCluster,
) -> None:
    reader = RecordReader(harness_etcd.endpoints, KEYS).start()
    try:
        with EtcdStore(harness_etcd.endpoints) as store:
            revisions = [store.put(KEYS.generation, str(i).encode()) for i in range(300)]
        events = reader.finish(stall_s=10.0)
    finally:
        reader.close()
    assert [e.revision for e in events] == revisions
    assert [e.value for e in events] == [str(i).encode() for i in range(300)]


def test_a_compacted_record_is_refused_saying_so(harness_etcd: EtcdCluster) -> None:
    with EtcdStore(harness_etcd.endpoints) as store:
        store.put(KEYS.generation, b"1")
        store.compact(store.put(KEYS.generation, b"2"))
    with pytest.raises(WatchCompacted, match=r"is incomplete: etcd compacted revisions"):
        read_record(harness_etcd.endpoints, KEYS)


def test_the_harness_etcd_runs_without_auto_compaction(harness_etcd: EtcdCluster) -> None:
    """etcd compacts only when told (``--auto-compaction-retention`` defaults to 0)."""
    process = harness_etcd.member(0).process
    assert process is not None
    argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
    environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    assert not [a for a in argv if b"compaction" in a]
    assert not [e for e in environ if e.startswith(b"ETCD_AUTO_COMPACTION")]
