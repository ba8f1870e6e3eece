"""What barrier retention forgets, decided without etcd (coordinator/barriers.py)."""

from __future__ import annotations

import json

from dtr.coordinator.barriers import (
    KEEP_RELEASED_BARRIERS,
    Barriers,
    BarrierState,
    StoredBarrier,
    barriers_to_forget,
    forget_ops,
    stored_barriers,
)
from dtr.keys import JobKeys
from dtr.store import Compare, Delete, KeyValue

KEYS = JobKeys("j")


def kv(key: str, value: object, mod_revision: int) -> KeyValue:
    return KeyValue(key, json.dumps(value).encode(), 1, mod_revision, 1, 0)


def test_the_listing_keeps_state_keys_and_skips_arrivals() -> None:
    listed = [
        kv(KEYS.barrier_state("step-1"), {"generation": 2, "released": True}, 10),
        kv(KEYS.barrier_arrival("step-1", "w0"), {"generation": 2}, 9),
        kv(KEYS.barrier_state("step-2"), {"generation": 2, "released": False}, 11),
    ]
    assert stored_barriers(KEYS, listed) == [
        StoredBarrier("step-1", 2, True, 10),
        StoredBarrier("step-2", 2, False, 11),
    ]


def test_the_newest_releases_stay_and_older_ones_go_oldest_first() -> None:
    released = [StoredBarrier(f"step-{i}", 1, True, 100 + i) for i in range(10)]
    forgotten = barriers_to_forget(released, generation=1, keep=3)
    assert [b.name for b in forgotten] == [f"step-{i}" for i in range(7)]
    assert barriers_to_forget(released, generation=1, keep=10) == []
    assert barriers_to_forget(released[:KEEP_RELEASED_BARRIERS], generation=1) == []


def test_a_failed_barrier_goes_and_an_open_one_of_this_generation_stays() -> None:
    failed = StoredBarrier("epoch-1", 1, False, 50)
    open_now = StoredBarrier("epoch-2", 2, False, 60)
    assert barriers_to_forget([failed, open_now], generation=2, keep=5) == [failed]


def test_each_deletion_is_guarded_by_the_listed_revision() -> None:
    barrier = StoredBarrier("step-1", 2, True, 42)
    compares, ops = forget_ops(KEYS, [barrier])
    assert compares == [Compare.modified_at(KEYS.barrier_state("step-1"), 42)]
    assert ops == [Delete(KEYS.barrier_prefix("step-1"), prefix=True)]


def test_the_cache_forgets_only_the_barrier_it_listed() -> None:
    cache = Barriers(KEYS)
    cache.states["step-1"] = BarrierState("step-1", 2, released=True)
    cache.states["step-2"] = BarrierState("step-2", 3)  # reopened since the listing
    cache.forget(StoredBarrier("step-1", 2, True, 10))
    cache.forget(StoredBarrier("step-2", 2, False, 11))
    assert list(cache.states) == ["step-2"]
