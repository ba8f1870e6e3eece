"""StagingPool's preparation: a buffer allocated and touched on a helper thread before a save.

The helper's touching is held at a gate (an event the test opens) where a
test must observe the pool while a preparation is under way; otherwise the
real allocation and memset run. Bounded waits only. No processes.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Iterator

import pytest
import torch

from dtr.errors import CheckpointError
from dtr.worker import staging as staging_module
from dtr.worker.checkpoint_format import decode
from dtr.worker.snapshot import LayoutCache, StagingBusy, StagingPool, prepare, snapshot
from helpers import wait_until


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Holds every preparation before it touches its buffer until the event is set."""
    opened = threading.Event()
    touch = StagingPool._touch

    def gated(pool: StagingPool, buffer: torch.Tensor) -> None:
        assert opened.wait(timeout=30), "the test never opened the gate"
        touch(pool, buffer)

    monkeypatch.setattr(StagingPool, "_touch", gated)
    yield opened
    opened.set()


def test_reserve_async_allocates_and_touches_a_buffer_the_first_save_reuses() -> None:
    pool = StagingPool(max_buffers=1)
    state = {"w": torch.randn(300_000), "b": torch.randn(7)}

    prepare(state, pool, LayoutCache()).result(timeout=30)
    assert pool.allocations == 1 and pool.in_use == 0
    with snapshot(state, {}, pool) as snap:
        part = bytearray(b"".join(snap.buffers()))

    assert pool.allocations == 1
    assert torch.equal(decode(part)[0]["w"], state["w"])
    pool.close()


def test_the_prepared_buffer_is_touched_once_and_then_kept() -> None:
    pool = StagingPool(max_buffers=1)
    pool.reserve_async(3 << 20).result(timeout=30)
    buffer = pool.acquire(3 << 20)
    memo = pool.memo(buffer)
    address = buffer.data_ptr()
    pool.release(buffer)

    pool.reserve_async(1 << 20).result(timeout=30)  # fits: kept, not touched again

    again = pool.acquire(1)
    assert memo["touched"] is True and again.data_ptr() == address and pool.allocations == 1
    pool.release(again)
    pool.close()


def test_a_save_during_a_preparation_waits_for_it_even_when_the_pool_never_waits(
    gate: threading.Event,
) -> None:
    pool = StagingPool(max_buffers=2, block=False)  # "drop" policy: never waits for saves
    prepared = pool.reserve_async(1 << 20)

    started = time.monotonic()
    with pytest.raises(StagingBusy, match=r"after waiting 0\.2 s"):
        pool.acquire(1000, timeout_s=0.2)  # waited for the preparation, then gave up
    assert time.monotonic() - started >= 0.2 and pool.allocations <= 1

    got: list[torch.Tensor] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(1000, timeout_s=30)))
    waiter.start()
    gate.set()
    prepared.result(timeout=30)
    waiter.join(timeout=30)

    assert got and got[0].numel() >= 1 << 20 and pool.allocations == 1  # the prepared one
    pool.release(got[0])
    pool.close()


def test_without_a_preparation_a_non_blocking_full_pool_still_refuses_at_once() -> None:
    pool = StagingPool(max_buffers=1, block=False)
    held = pool.acquire(10)

    started = time.monotonic()
    with pytest.raises(StagingBusy) as refused:
        pool.acquire(10, timeout_s=60)

    assert time.monotonic() - started < 5 and "after waiting" not in str(refused.value)
    pool.release(held)


def test_a_preparation_waits_for_a_buffer_held_by_a_save_and_reuses_it() -> None:
    pool = StagingPool(max_buffers=1)
    held = pool.acquire(2 << 20)
    prepared = pool.reserve_async(1 << 20)
    assert not prepared.done()  # the pool is full: it waits for the save's buffer

    pool.release(held)
    prepared.result(timeout=30)

    assert pool.allocations == 1
    pool.close()


def test_closing_the_pool_ends_a_waiting_preparation_and_refuses_new_ones() -> None:
    pool = StagingPool(max_buffers=1)
    held = pool.acquire(10)
    prepared = pool.reserve_async(10)

    pool.close()

    with pytest.raises(CheckpointError, match="closed"):
        prepared.result(timeout=30)
    with pytest.raises(CheckpointError, match="closed"):
        pool.reserve_async(10)
    pool.release(held)  # a buffer held across close is dropped on release
    assert pool.in_use == 0


def test_closing_during_the_touch_stops_it_between_chunks(
    monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    monkeypatch.setattr(staging_module, "_TOUCH_CHUNK_BYTES", 1 << 20)
    memsets: list[int] = []
    real_memset = ctypes.memset
    monkeypatch.setattr(
        ctypes, "memset", lambda a, v, n: (memsets.append(n), real_memset(a, v, n))[1]
    )
    pool = StagingPool(max_buffers=1)
    prepared = pool.reserve_async(8 << 20)

    closer = threading.Thread(target=pool.close)
    closer.start()
    wait_until(lambda: pool._closed, 30, "close() to set its flag")
    gate.set()  # the touch starts after close() began: it must stop before the first chunk
    closer.join(timeout=30)

    assert not closer.is_alive()
    prepared.result(timeout=30)  # ends quietly: close() is not an error for a preparation
    assert memsets == [] and pool.in_use == 0


def test_the_synchronous_reserve_refuses_at_once_when_every_buffer_is_held() -> None:
    pool = StagingPool(max_buffers=1)
    held = pool.acquire(10)

    with pytest.raises(StagingBusy, match="nothing to reserve into"):
        pool.reserve(10)

    pool.release(held)
    pool.reserve(10)
    assert pool.allocations == 1


def test_a_state_that_grows_after_preparation_gets_a_bigger_buffer() -> None:
    pool = StagingPool(max_buffers=1)
    layouts = LayoutCache()
    small = {"w": torch.randn(1000)}
    prepare(small, pool, layouts).result(timeout=30)

    grown = {"w": torch.randn(1000), "exp_avg": torch.randn(3 << 20)}
    with snapshot(grown, {}, pool, layouts=layouts) as snap:
        part = bytearray(b"".join(snap.buffers()))

    loaded, _ = decode(part)
    assert torch.equal(loaded["exp_avg"], grown["exp_avg"]) and torch.equal(loaded["w"], grown["w"])
    assert pool.allocations == 2 and layouts.plans_made == 2
    pool.close()


def test_the_helper_thread_runs_at_a_lower_priority() -> None:
    pool = StagingPool(max_buffers=1)
    pool.reserve_async(10).result(timeout=30)
    assert pool._helper is not None

    helper_nice = pool._helper.submit(
        lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    ).result(timeout=30)

    assert helper_nice >= 10
    pool.close()
