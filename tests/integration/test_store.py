"""dtr.store against real etcd processes: keys, fenced transactions, leases, watches.

The fault tests restart or kill real etcd members and check the two defects of
python3-etcd3 0.13.0 that dtr.store works around: no recovery after an etcd
restart, and a crash when a client with a watch is closed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest

from dtr.errors import LeaseExpired, StoreUnavailable, WatchCompacted
from dtr.etcd import EtcdCluster, RunningEtcd
from dtr.store import Compare, Delete, EtcdStore, Get, Put
from dtr.watch import WatchBatch, WatchEvent
from helpers import wait_until

pytestmark = pytest.mark.integration


class Collector:
    """Gathers watch batches so a test can wait for a number of events."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()

    def __call__(self, batch: WatchBatch) -> None:
        with self._lock:
            self.events.extend(batch.events)
            if batch.error is not None:
                self.errors.append(batch.error)

    def keys(self) -> list[str]:
        with self._lock:
            return [e.kv.key for e in self.events]

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[str]:
        wait_until(lambda: len(self.keys()) >= count, timeout_s, f"{count} watch events")
        return self.keys()


@pytest.fixture
def store(etcd: RunningEtcd) -> Iterator[EtcdStore]:
    with EtcdStore(etcd.endpoints, timeout_s=5.0) as s:
        yield s


def test_put_get_prefix_and_delete_round_trip(store: EtcdStore, etcd_prefix: str) -> None:
    first = store.put(f"{etcd_prefix}a", b"1")
    second = store.put(f"{etcd_prefix}b", b"2")
    store.put(f"{etcd_prefix}c/d", b"3")
    assert second > first

    kv = store.get(f"{etcd_prefix}a")
    assert kv is not None and kv.value == b"1" and kv.create_revision == first
    assert store.get(f"{etcd_prefix}missing") is None

    snapshot = store.get_prefix(etcd_prefix)
    assert [kv.key for kv in snapshot.kvs] == [f"{etcd_prefix}{k}" for k in ("a", "b", "c/d")]
    assert snapshot.revision >= second

    assert store.delete(f"{etcd_prefix}c", prefix=True) == 1
    assert store.delete(f"{etcd_prefix}a") == 1
    assert [kv.key for kv in store.get_prefix(etcd_prefix).kvs] == [f"{etcd_prefix}b"]


def test_fenced_transaction_applies_only_while_the_fence_holds(
    store: EtcdStore, etcd_prefix: str
) -> None:
    leader_key, state_key = f"{etcd_prefix}leader", f"{etcd_prefix}state"
    term = store.put(leader_key, b"replica-1")
    fenced = [Compare.created_at(leader_key, term)]

    won = store.txn(fenced, [Put(state_key, b"v1"), Get(state_key)])
    assert won.succeeded
    assert won.results[1] and won.results[1][0].value == b"v1"  # type: ignore[index]

    # Deposed: the leader key is recreated by someone else (a new term).
    store.delete(leader_key)
    store.put(leader_key, b"replica-2")
    lost = store.txn(fenced, [Put(state_key, b"v2")], [Get(state_key)])
    assert not lost.succeeded
    assert lost.results[0][0].value == b"v1"  # type: ignore[index]
    state = store.get(state_key)
    assert state is not None and state.value == b"v1"


def test_absent_and_modified_at_compares_give_create_once_and_compare_and_set(
    store: EtcdStore, etcd_prefix: str
) -> None:
    key = f"{etcd_prefix}cas"
    assert store.txn([Compare.absent(key)], [Put(key, b"0")]).succeeded
    assert not store.txn([Compare.absent(key)], [Put(key, b"again")]).succeeded

    current = store.get(key)
    assert current is not None
    assert store.txn([Compare.modified_at(key, current.mod_revision)], [Put(key, b"1")]).succeeded
    # The same (now stale) token loses.
    stale = store.txn([Compare.modified_at(key, current.mod_revision)], [Put(key, b"2")])
    assert not stale.succeeded
    final = store.get(key)
    assert final is not None and final.value == b"1"
    assert store.txn([Compare.value_is(key, b"1")], [Delete(key)]).results == (1,)


def test_lease_binds_keys_and_revoke_deletes_them(store: EtcdStore, etcd_prefix: str) -> None:
    lease = store.grant_lease(10)
    key = f"{etcd_prefix}leased"
    store.put(key, b"x", lease_id=lease.lease_id)
    kv = store.get(key)
    assert kv is not None and kv.lease_id == lease.lease_id
    assert store.refresh_lease(lease.lease_id) == 10
    ttl = store.lease_ttl(lease.lease_id)
    assert ttl is not None and 0 < ttl <= 10

    store.revoke_lease(lease.lease_id)
    store.revoke_lease(lease.lease_id)  # idempotent
    assert store.get(key) is None
    assert store.lease_ttl(lease.lease_id) is None
    with pytest.raises(LeaseExpired):
        store.refresh_lease(lease.lease_id)


def test_an_unrenewed_lease_expires_and_takes_its_keys(store: EtcdStore, etcd_prefix: str) -> None:
    lease = store.grant_lease(2)
    key = f"{etcd_prefix}ephemeral"
    store.put(key, b"x", lease_id=lease.lease_id)
    wait_until(lambda: store.get(key) is None, 15.0, "the leased key to vanish")
    with pytest.raises(LeaseExpired):
        store.refresh_lease(lease.lease_id)


def test_watch_delivers_puts_and_deletes_in_revision_order(
    store: EtcdStore, etcd_prefix: str
) -> None:
    collector = Collector()
    watch = store.watch_prefix(etcd_prefix, collector)
    assert watch.wait_created(5.0)
    for i in range(20):
        store.put(f"{etcd_prefix}k{i:02d}", str(i).encode())
    store.delete(f"{etcd_prefix}k00")
    store.put(f"{etcd_prefix[:-1]}-sibling", b"not under the prefix")

    collector.wait_for(21)
    revisions = [e.kv.mod_revision for e in collector.events]
    assert revisions == sorted(set(revisions))
    assert collector.events[-1].kind == "delete"
    assert all(e.kv.key.startswith(etcd_prefix) for e in collector.events)
    watch.cancel()
    assert not watch.is_running


def test_watch_from_a_past_revision_replays_history(store: EtcdStore, etcd_prefix: str) -> None:
    start = store.put(f"{etcd_prefix}old", b"1")
    store.put(f"{etcd_prefix}newer", b"2")
    collector = Collector()
    store.watch_prefix(etcd_prefix, collector, start_revision=start)
    assert collector.wait_for(2) == [f"{etcd_prefix}old", f"{etcd_prefix}newer"]


def test_watch_on_compacted_history_reports_watch_compacted(
    store: EtcdStore, etcd_prefix: str
) -> None:
    start = store.put(f"{etcd_prefix}a", b"1")
    latest = store.put(f"{etcd_prefix}a", b"2")
    store.compact(latest)
    collector = Collector()
    watch = store.watch_prefix(etcd_prefix, collector, start_revision=start)
    wait_until(lambda: bool(collector.errors), 10.0, "a compaction error")
    assert isinstance(collector.errors[0], WatchCompacted)
    wait_until(lambda: not watch.is_running, 5.0, "the watch thread to end")


def test_closing_a_store_with_live_watches_stops_them_cleanly(
    etcd: RunningEtcd, etcd_prefix: str
) -> None:
    store = EtcdStore(etcd.endpoints)
    watches = [store.watch_prefix(f"{etcd_prefix}{i}/", Collector()) for i in range(3)]
    assert all(w.wait_created(5.0) for w in watches)
    store.close()  # python3-etcd3's client raises NameError: six here
    store.close()
    assert not any(w.is_running for w in watches)
    with pytest.raises(StoreUnavailable):
        store.get(f"{etcd_prefix}x")


def test_store_recovers_within_one_second_of_an_etcd_restart(fresh_etcd: RunningEtcd) -> None:
    with EtcdStore(fresh_etcd.endpoints, timeout_s=1.0) as store:
        store.put("/restart/before", b"1")
        fresh_etcd.stop_member(0)
        with pytest.raises(StoreUnavailable):
            store.get("/restart/before")
        fresh_etcd.start_member(0)  # returns once etcd reports healthy

        recovered: list[bytes] = []

        def reads() -> bool:
            try:
                kv = store.get("/restart/before")
            except StoreUnavailable:
                return False
            recovered.append(kv.value if kv else b"")
            return True

        wait_until(reads, 1.0, "the store's first successful read after the restart")
        assert recovered == [b"1"]


def test_watch_survives_an_etcd_restart_without_losing_or_repeating_events(
    fresh_etcd: RunningEtcd,
) -> None:
    with EtcdStore(fresh_etcd.endpoints, timeout_s=1.0) as store:
        collector = Collector()
        watch = store.watch_prefix("/w/", collector)
        assert watch.wait_created(5.0)
        store.put("/w/1", b"before")
        collector.wait_for(1)

        fresh_etcd.stop_member(0)
        fresh_etcd.start_member(0)
        # Written by another client before the watch has had a chance to reconnect.
        with EtcdStore(fresh_etcd.endpoints) as other:
            other.put("/w/2", b"after")
            other.put("/w/3", b"after")

        assert collector.wait_for(3) == ["/w/1", "/w/2", "/w/3"]
        assert watch.streams_opened >= 2


def test_store_and_watch_fail_over_when_a_cluster_member_dies(etcd_cluster3: EtcdCluster) -> None:
    with EtcdStore(etcd_cluster3.endpoints, timeout_s=2.0) as store:
        collector = Collector()
        watch = store.watch_prefix("/f/", collector)
        assert watch.wait_created(5.0)
        store.put("/f/0", b"x")
        collector.wait_for(1)

        dead = store.current_endpoint
        etcd_cluster3.kill_member(etcd_cluster3.endpoints.index(dead))
        written: list[int] = []

        def put_next() -> bool:
            try:
                store.put(f"/f/{len(written) + 1}", b"x")
            except StoreUnavailable:
                return False  # one failed call moves the store to the next member
            written.append(len(written) + 1)
            return len(written) == 5

        wait_until(put_next, 15.0, "five writes after a member died")
        assert store.current_endpoint != dead
        assert collector.wait_for(6) == [f"/f/{i}" for i in range(6)]


def test_unknown_outcome_is_reported_as_unavailable_when_etcd_is_unreachable(
    fresh_etcd: RunningEtcd,
) -> None:
    with EtcdStore(fresh_etcd.endpoints, timeout_s=0.5) as store:
        fresh_etcd.stop_member(0)
        received: queue.Queue[object] = queue.Queue()
        for call in (
            lambda: store.put("/u/k", b"v"),
            lambda: store.txn([], [Put("/u/k", b"v")]),
            lambda: store.grant_lease(5),
        ):
            with pytest.raises(StoreUnavailable) as info:
                call()
            received.put(info.value)
        assert received.qsize() == 3
