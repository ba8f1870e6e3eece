"""Staging memory for snapshots: a few reused host buffers, and touching them ahead of time.

A snapshot copies the state into a staging buffer (``dtr.worker.snapshot``).
Buffers are reused from save to save: a fresh 1 GiB buffer pays 0.4 to 4 s of
page faults on the build machine, the copy into a reused one ~0.05 s. At most
``max_buffers`` exist (one per save in flight), which is also the
back-pressure: when every buffer is held by a save not yet written, the next
snapshot waits (with a timeout) or fails at once, per the pool's policy.

``StagingPool.reserve`` pays the page faults ahead of the first save:
``CheckpointManager.prepare`` runs it on a helper thread while training goes
on. Touching is one thread writing zeros (``memset``, the GIL released) in
bounded chunks, so it takes one core at most, and it stops early when the
pool is closed. A save that needs a buffer while one is being prepared waits
for it rather than allocate a second one (or be dropped as "too many in
flight"): the memory cost stays one buffer per save in flight.

What must not live here: what goes into a buffer (``dtr.worker.snapshot``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from dtr.errors import CheckpointError, InvalidArgument

__all__ = ["StagingBusy", "StagingPool", "lower_priority"]

_GRANULE_BYTES = 1 << 20  # buffers grow in whole MiB, so small changes in size reuse them
_TOUCH_CHUNK_BYTES = 64 << 20  # one memset while touching: the stop flag is read in between


def lower_priority() -> None:
    """Let background checkpoint work give way to training when the cores are busy.

    On Linux a thread is a task with its own nice value, so this lowers the
    calling thread alone (and the threads it starts): the pool's preparing
    helper, the checkpoint writer. Elsewhere it does nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


class StagingBusy(CheckpointError):
    """Every staging buffer is held by a save still being written (too many in flight)."""


@dataclass(eq=False)
class _Slot:
    buffer: torch.Tensor
    pinned: bool
    #: What the snapshot code keeps about this buffer's contents between saves (which
    #: layout's padding is zeroed, views of it); dropped with the buffer.
    memo: dict[str, object] = field(default_factory=dict)


class StagingPool:
    """At most ``max_buffers`` uint8 staging buffers, reused between saves; thread-safe.

    The training thread acquires, the writer thread releases. With ``block``
    (the default) ``acquire`` waits for a release, up to its timeout; without,
    it raises ``StagingBusy`` at once, unless a buffer is being prepared
    (``reserve``): that one is waited for.
    """

    def __init__(self, max_buffers: int = 2, *, block: bool = True) -> None:
        if type(max_buffers) is not int or max_buffers < 1:
            raise InvalidArgument(f"max_buffers must be a positive int, got {max_buffers!r}")
        self.max_buffers = max_buffers
        self.block = block
        self.allocations = 0  # buffers ever allocated: stays flat while saves reuse them
        self._cond = threading.Condition()
        self._free: list[_Slot] = []
        self._in_use: dict[int, _Slot] = {}
        self._reserved = 0  # slots being allocated outside the lock
        self._preparing = 0  # reserve() calls under way: acquire waits for them
        self._closed = False
        self._helper: ThreadPoolExecutor | None = None  # runs reserve_async

    @property
    def in_use(self) -> int:
        """Buffers held by snapshots (or preparations) not yet released."""
        with self._cond:
            return len(self._in_use)

    def acquire(
        self, nbytes: int, *, pinned: bool = False, timeout_s: float | None = None
    ) -> torch.Tensor:
        """A buffer of at least ``nbytes`` bytes (pinned if asked), reused when one fits.

        When none fits and the pool is full, a free buffer is dropped and a
        bigger one allocated. Raises ``StagingBusy`` when all are held past
        ``timeout_s`` (``None``: wait as long as it takes), ``CheckpointError``
        once the pool is closed.
        """
        if type(nbytes) is not int or nbytes < 0:
            raise InvalidArgument(f"nbytes must be a non-negative int, got {nbytes!r}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while (slot := self._take_fitting(nbytes, pinned)) is None:
                self._refuse_if_closed()
                # Not while a buffer is being prepared: that one is meant for this save.
                if not self._preparing and self._make_room():
                    break
                self._wait(deadline, timeout_s)
            if slot is not None:
                self._in_use[id(slot.buffer)] = slot
                return slot.buffer
        return self._allocate(nbytes, pinned)  # outside the lock: it may take a while

    def release(self, buffer: torch.Tensor) -> None:
        """Gives back a buffer from :meth:`acquire`; its contents may be overwritten at once."""
        with self._cond:
            slot = self._in_use.pop(id(buffer), None)
            if slot is None or slot.buffer is not buffer:
                raise InvalidArgument("release() of a buffer this pool did not lend (or twice)")
            if not self._closed:
                self._free.append(slot)
            self._cond.notify_all()

    def memo(self, buffer: torch.Tensor) -> dict[str, object]:
        """Notes about a lent buffer's contents, kept while the pool keeps the buffer."""
        with self._cond:
            slot = self._in_use.get(id(buffer))
        if slot is None or slot.buffer is not buffer:
            raise InvalidArgument("memo() of a buffer this pool has not lent")
        return slot.memo

    def reserve(self, nbytes: int, *, pinned: bool = False) -> None:
        """Allocates and touches a buffer ahead of the first save, so it pays no page faults.

        Call it off the training path (at start-up, or :meth:`reserve_async`):
        a fresh 1 GiB buffer costs seconds of page faults on some hosts. A
        buffer that already fits is kept (and touched once). Raises
        ``StagingBusy`` at once when every buffer is held by a save.
        """
        self._begin_reserve()
        self._reserve(nbytes, pinned, wait=False)

    def reserve_async(self, nbytes: int, *, pinned: bool = False) -> Future[None]:
        """:meth:`reserve` on the pool's helper thread (lower priority, one core at most).

        From this call on, ``acquire`` waits for the buffer being prepared
        rather than allocate another or report the pool full; the helper
        waits for a buffer a save holds to come back when the pool is full.
        The future fails when the pool is closed first.
        """
        self._begin_reserve()
        try:
            with self._cond:
                if self._helper is None:
                    self._helper = ThreadPoolExecutor(
                        1, thread_name_prefix="dtr-staging-prepare", initializer=lower_priority
                    )
                return self._helper.submit(self._reserve, nbytes, pinned, wait=True)
        except BaseException:
            self._end_reserve()
            raise

    def close(self) -> None:
        """Frees the idle buffers and stops the helper (a preparation under way stops early).

        Buffers still held by saves are freed when released.
        """
        with self._cond:
            self._closed = True
            self._free.clear()
            helper, self._helper = self._helper, None
            self._cond.notify_all()
        if helper is not None:
            helper.shutdown(wait=True)  # bounded: one memset chunk, or one allocation

    def clear(self) -> None:
        """Frees the idle buffers (host memory back to the allocator); held ones stay."""
        with self._cond:
            self._free.clear()

    def _begin_reserve(self) -> None:
        with self._cond:
            self._refuse_if_closed()
            self._preparing += 1

    def _refuse_if_closed(self) -> None:
        """Under the lock: a closed pool lends and allocates nothing (its owner is closing)."""
        if self._closed:
            raise CheckpointError("the staging pool is closed (its checkpoint manager is closing)")

    def _end_reserve(self) -> None:
        with self._cond:
            self._preparing -= 1
            self._cond.notify_all()

    def _reserve(self, nbytes: int, pinned: bool, *, wait: bool) -> None:
        try:
            buffer = self._acquire_for_reserve(nbytes, pinned, wait)
            try:
                self._touch(buffer)
            finally:
                self.release(buffer)
        finally:
            self._end_reserve()

    def _acquire_for_reserve(self, nbytes: int, pinned: bool, wait: bool) -> torch.Tensor:
        if type(nbytes) is not int or nbytes < 0:
            raise InvalidArgument(f"nbytes must be a non-negative int, got {nbytes!r}")
        with self._cond:
            while (slot := self._take_fitting(nbytes, pinned)) is None:
                self._refuse_if_closed()  # a preparation queued behind close() allocates nothing
                if self._make_room():
                    break
                if not wait:
                    raise StagingBusy(
                        f"all {self.max_buffers} staging buffers are held by saves still being "
                        "written: nothing to reserve into"
                    )
                self._cond.wait()  # a save's buffer comes back once written
            if slot is not None:
                self._in_use[id(slot.buffer)] = slot
                return slot.buffer
        return self._allocate(nbytes, pinned)

    def _touch(self, buffer: torch.Tensor) -> None:
        """Writes every page of a buffer once (one thread, GIL released, bounded chunks).

        Once per buffer: a buffer a save allocated is touched again in full (a
        save writes only what its state needs), which costs memory bandwidth
        on this helper thread, not page faults on the training thread.
        """
        memo = self.memo(buffer)
        if memo.get("touched"):
            return
        address, nbytes = buffer.data_ptr(), buffer.numel()
        for start in range(0, nbytes, _TOUCH_CHUNK_BYTES):
            if self._closed:
                return
            ctypes.memset(address + start, 0, min(_TOUCH_CHUNK_BYTES, nbytes - start))
        memo["touched"] = True

    def _take_fitting(self, nbytes: int, pinned: bool) -> _Slot | None:
        fits = [s for s in self._free if s.buffer.numel() >= nbytes and (s.pinned or not pinned)]
        if not fits:
            return None
        best = min(fits, key=lambda s: s.buffer.numel())
        self._free.remove(best)
        return best

    def _make_room(self) -> bool:
        """Reserves a slot for a new buffer, dropping an unfit free one if the pool is full."""
        if len(self._free) + len(self._in_use) + self._reserved >= self.max_buffers:
            if not self._free:
                return False
            self._free.pop(0)  # the only reference: its memory goes before the new one comes
        self._reserved += 1
        return True

    def _wait(self, deadline: float | None, timeout_s: float | None) -> None:
        remaining = None if deadline is None else deadline - time.monotonic()
        may_wait = self.block or self._preparing > 0
        if not may_wait or (remaining is not None and remaining <= 0):
            waited = f" after waiting {timeout_s} s" if may_wait else ""
            raise StagingBusy(
                f"all {self.max_buffers} staging buffers are held by saves still being written"
                f"{waited}: too many saves in flight"
            )
        self._cond.wait(remaining)

    def _allocate(self, nbytes: int, pinned: bool) -> torch.Tensor:
        """A new buffer in the slot ``_make_room`` reserved, lent at once."""
        capacity = -(-max(nbytes, 1) // _GRANULE_BYTES) * _GRANULE_BYTES
        try:
            buffer = torch.empty(capacity, dtype=torch.uint8, pin_memory=pinned)
        except BaseException:
            with self._cond:
                self._reserved -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._reserved -= 1
            self.allocations += 1
            self._in_use[id(buffer)] = _Slot(buffer, pinned)
        return buffer
