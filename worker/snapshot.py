"""The one stage of a save that blocks training: copying the state into staging memory.

``CheckpointManager.save_async`` calls :func:`snapshot` on the training
thread. It walks the state once (``encode_tree``), lays the tensors out in the
checkpoint format, takes a staging buffer from a :class:`StagingPool` and
copies every tensor into its slice of it; CUDA tensors go into pinned host
memory with ``non_blocking=True`` copies and one ``torch.cuda.synchronize()``
per device at the end. When it returns, training may modify its tensors
freely; the :class:`Snapshot` holds the header bytes and memoryviews over the
staging bytes, for ``os.writev`` on a background thread. Tensor bytes never
become Python ``bytes``.

Staging buffers are reused from save to save: a fresh 1 GiB buffer pays 0.4 to
4 s of page faults on the build machine, the copy into a reused one ~0.1 s.
``StagingPool.reserve`` pays the faults ahead of the first save. At most
``max_buffers`` exist (one per save in flight), which is also the
back-pressure: when every buffer is held by a save not yet written, the next
snapshot waits (with a timeout) or fails at once, per the pool's policy.

Large contiguous CPU tensors are copied with libc's ``memmove`` (non-temporal
stores, GIL released): ~1.7x the bandwidth of ``copy_`` on the 2-core build
machine. Everything else goes through ``copy_``, which for large CPU tensors
runs on torch's intra-op pool (``torch.get_num_threads()``): a snapshot briefly
uses every core torch may.

What must not live here: the byte format (``dtr.worker.checkpoint_format``),
writing, checksums and commits (the checkpoint manager and ``dtr.storage``).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import torch

from dtr.errors import CheckpointError, InvalidArgument
from dtr.worker.checkpoint_format import (
    JsonValue,
    TensorSpec,
    encode_header,
    encode_tree,
    plan_layout,
)

__all__ = ["Snapshot", "StagingBusy", "StagingPool", "snapshot"]

_GRANULE_BYTES = 1 << 20  # buffers grow in whole MiB, so small changes in size reuse them
CHUNK_BYTES = 64 << 20  # the most one memoryview of a Snapshot covers
# From this size on, a contiguous CPU tensor is copied by libc's memmove (non-temporal
# stores, no dispatch): ~1.7x the bandwidth of copy_ on the 2-core build machine.
_MEMMOVE_MIN_BYTES = 1 << 20


class StagingBusy(CheckpointError):
    """Every staging buffer is held by a save still being written (too many in flight)."""


@dataclass(eq=False)
class _Slot:
    buffer: torch.Tensor
    pinned: bool


class StagingPool:
    """At most ``max_buffers`` uint8 staging buffers, reused between saves; thread-safe.

    The training thread acquires, the writer thread releases. With ``block``
    (the default) ``acquire`` waits for a release, up to its timeout; without,
    it raises ``StagingBusy`` at once.
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

    @property
    def in_use(self) -> int:
        """Buffers held by snapshots not yet released."""
        with self._cond:
            return len(self._in_use)

    def acquire(
        self, nbytes: int, *, pinned: bool = False, timeout_s: float | None = None
    ) -> torch.Tensor:
        """A buffer of at least ``nbytes`` bytes (pinned if asked), reused when one fits.

        When none fits and the pool is full, a free buffer is dropped and a
        bigger one allocated. Raises ``StagingBusy`` when all are held past
        ``timeout_s`` (``None``: wait as long as it takes).
        """
        if type(nbytes) is not int or nbytes < 0:
            raise InvalidArgument(f"nbytes must be a non-negative int, got {nbytes!r}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while (slot := self._take_fitting(nbytes, pinned)) is None:
                if self._make_room():
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
            self._free.append(slot)
            self._cond.notify_all()

    def reserve(self, nbytes: int, *, pinned: bool = False) -> None:
        """Allocates and touches a buffer ahead of the first save, so it pays no page faults.

        Call it off the training path (at start-up, sized from the model): a
        fresh 1 GiB buffer costs seconds of page faults on some hosts.
        """
        buffer = self.acquire(nbytes, pinned=pinned, timeout_s=0)
        buffer.zero_()
        self.release(buffer)

    def clear(self) -> None:
        """Frees the idle buffers (host memory back to the allocator); held ones stay."""
        with self._cond:
            self._free.clear()

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
        if not self.block or (remaining is not None and remaining <= 0):
            waited = f" after waiting {timeout_s} s" if self.block else ""
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


class Snapshot:
    """A state frozen in staging memory: what the writer thread writes, in order.

    ``prefix`` is everything before the data section (magic, header,
    padding); ``views`` cover the data section in layout order, padding
    included, at most ``CHUNK_BYTES`` each. Call :meth:`release` (or leave the
    ``with`` block) once the last byte is written: the buffer goes back to the
    pool and may be overwritten by the next save.
    """

    def __init__(
        self, prefix: bytes, buffer: torch.Tensor, data_nbytes: int, pool: StagingPool
    ) -> None:
        self.prefix = prefix
        self.nbytes = len(prefix) + data_nbytes
        self._buffer: torch.Tensor | None = buffer
        self._pool = pool
        whole = buffer.numpy().data.cast("B")[:data_nbytes]
        self.views = tuple(whole[i : i + CHUNK_BYTES] for i in range(0, data_nbytes, CHUNK_BYTES))

    def buffers(self) -> list[memoryview]:
        """The whole part, ``prefix`` first: the list to hand to ``os.writev``."""
        if self._buffer is None:
            raise CheckpointError("this snapshot was released; its staging memory is reused")
        return [memoryview(self.prefix), *self.views]

    def release(self) -> None:
        """Returns the staging buffer to the pool; calling it again does nothing."""
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            for view in self.views:
                view.release()
            self._pool.release(buffer)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def snapshot(
    state: object,
    meta: Mapping[str, JsonValue],
    staging: StagingPool,
    *,
    timeout_s: float | None = None,
) -> Snapshot:
    """Copies ``state`` into staging memory and returns it ready to write.

    Blocks until every copy is done (CUDA ones included), so the caller may
    change its tensors as soon as this returns. Raises ``InvalidArgument``
    for a state that cannot be checkpointed (before any copy) and
    ``StagingBusy`` when no staging buffer frees up within ``timeout_s``.
    """
    encoded = encode_tree(state)
    layout = plan_layout(encoded.tensors)
    prefix = encode_header(encoded.tree, layout.specs, meta)
    devices = {t.device for t in encoded.tensors if t.is_cuda}
    buffer = staging.acquire(layout.data_nbytes, pinned=bool(devices), timeout_s=timeout_s)
    try:
        _copy_into(buffer, encoded.tensors, layout.specs)
        for device in devices:
            torch.cuda.synchronize(device)
    except BaseException:
        _settle(devices)
        staging.release(buffer)
        raise
    return Snapshot(prefix, buffer, layout.data_nbytes, staging)


def _copy_into(
    buffer: torch.Tensor, tensors: Sequence[torch.Tensor], specs: Sequence[TensorSpec]
) -> None:
    """Each tensor into its slice, padding zeroed so equal states give equal bytes."""
    end = 0
    moves: list[_Move] = []
    with torch.no_grad():
        for tensor, spec in zip(tensors, specs, strict=True):
            if spec.offset > end:
                buffer[end : spec.offset].zero_()
            end = spec.offset + spec.nbytes
            if spec.nbytes >= _MEMMOVE_MIN_BYTES and _is_dense_on_cpu(tensor):
                moves.append((buffer.data_ptr() + spec.offset, tensor.data_ptr(), spec.nbytes))
            elif spec.nbytes:
                target = buffer[spec.offset : end].view(spec.dtype).view(spec.shape)
                target.copy_(tensor.detach(), non_blocking=tensor.is_cuda)
        _memmove_in_two(moves)


# (destination address, source address, bytes)
_Move = tuple[int, int, int]
#: Below this much, a second copying thread costs more than it saves.
_SPLIT_MIN_BYTES = 64 << 20
_copier: ThreadPoolExecutor | None = None
_copier_lock = threading.Lock()


def _memmove_all(moves: Sequence[_Move]) -> None:
    for destination, source, nbytes in moves:
        ctypes.memmove(destination, source, nbytes)  # a foreign call: the GIL is released


def _memmove_in_two(moves: Sequence[_Move]) -> None:
    """Copy on this thread and one helper thread, half the bytes each.

    The caller is blocked for the snapshot anyway, and one thread cannot
    saturate memory bandwidth: two halve the stall (0.104 s → 0.056 s for
    1 GiB on the 2-core build machine).
    """
    total = sum(nbytes for _, _, nbytes in moves)
    if total < _SPLIT_MIN_BYTES:
        _memmove_all(moves)
        return
    first, second = _split_moves(moves, total // 2)
    global _copier
    with _copier_lock:
        if _copier is None:
            _copier = ThreadPoolExecutor(1, thread_name_prefix="dtr-snapshot-copy")
        helper = _copier.submit(_memmove_all, second)
    try:
        _memmove_all(first)
    finally:
        helper.result()  # never hand back a buffer a copy is still writing


def _split_moves(moves: Sequence[_Move], cut: int) -> tuple[list[_Move], list[_Move]]:
    """The moves before and after byte ``cut`` of their concatenation (one move may split)."""
    first: list[_Move] = []
    second: list[_Move] = []
    done = 0
    for destination, source, nbytes in moves:
        if done >= cut:
            second.append((destination, source, nbytes))
        elif done + nbytes <= cut:
            first.append((destination, source, nbytes))
        else:
            head = cut - done
            first.append((destination, source, head))
            second.append((destination + head, source + head, nbytes - head))
        done += nbytes
    return first, second


def _is_dense_on_cpu(tensor: torch.Tensor) -> bool:
    """Whether the tensor's value is exactly its ``nbytes`` bytes from ``data_ptr()``."""
    return (
        tensor.device.type == "cpu"
        and tensor.is_contiguous()
        and not tensor.is_conj()
        and not tensor.is_neg()
    )


def _settle(devices: set[torch.device]) -> None:
    """Waits out copies still in flight, so none lands in a buffer lent to the next save.

    A failing synchronize means a broken CUDA context: no copy will land after it.
    """
    for device in devices:
        with contextlib.suppress(RuntimeError):
            torch.cuda.synchronize(device)
