"""The one stage of a save that blocks training: copying the state into staging memory.

``CheckpointManager.save_async`` calls :func:`snapshot` on the training
thread. It walks the state once (``encode_tree``), lays the tensors out in the
checkpoint format (reusing the last save's layout while dtypes and shapes stay
the same: ``dtr.worker.staging_plan``), takes a staging buffer from a
:class:`StagingPool` (``dtr.worker.staging``) and copies every tensor into its
slice of it. When it returns, training may modify its tensors freely; the
:class:`Snapshot` holds the header bytes and memoryviews over the staging
bytes, for ``os.writev`` on a background thread. Tensor bytes never become
Python ``bytes``.

How the copies go, so that the stall is the copy of the bytes whatever the
number of tensors (a 1,000-tensor state stalls like a 10-tensor one of the
same size):

- contiguous CPU tensors, whatever their size, are copied by libc's
  ``memmove`` (non-temporal stores for large ones, the GIL released), split
  by bytes between this thread and one helper thread: one hand-off per save,
  where ``copy_`` per tensor forks and joins torch's intra-op threads per
  tensor (on a loaded 2-core machine 1,000 such joins cost more than the
  copy) and ``torch._foreach_copy_`` does the same inside one call;
- the rest (non-contiguous views, conjugate/negative views, CUDA tensors; bool
  tensors, whose bytes ``copy_`` writes as 0/1 as the format wants; a zero
  tensor, which has no memory; a tensor whose storage does not hold it, which
  is refused, ``_check_readable``) go through one ``torch._foreach_copy_``
  into views of the buffer, kept with the buffer while the layout holds; CUDA
  tensors go into pinned host memory with ``non_blocking=True`` and one
  ``torch.cuda.synchronize()`` per device at the end. **This CUDA path has not
  run on a GPU yet** (no GPU machine so far): it is the same pinned,
  non-blocking path as before, now through ``_foreach_copy_``, and the CUDA
  unit test only runs where CUDA is;
- the alignment padding is zeroed once per buffer and layout (equal states
  give equal bytes; only this module writes into a staging buffer).

What must not live here: the byte format (``dtr.worker.checkpoint_format``),
writing, checksums and commits (the checkpoint manager and ``dtr.storage``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

import torch

from dtr.errors import CheckpointError, InvalidArgument
from dtr.worker.checkpoint_format import JsonValue, encode_tree
from dtr.worker.staging import StagingBusy, StagingPool
from dtr.worker.staging_plan import RAW_REAL, LayoutCache, Plan

__all__ = ["LayoutCache", "Snapshot", "StagingBusy", "StagingPool", "prepare", "snapshot"]

CHUNK_BYTES = 64 << 20  # the most one memoryview of a Snapshot covers


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

    def release_if_cancelled(self, write: Future[Any]) -> None:
        """A done callback for the future that writes this snapshot: a cancelled one never
        runs, so never releases, and its buffer would be held for good."""
        if write.cancelled():
            self.release()

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
    layouts: LayoutCache | None = None,
) -> Snapshot:
    """Copies ``state`` into staging memory and returns it ready to write.

    Blocks until every copy is done (CUDA ones included), so the caller may
    change its tensors as soon as this returns. Raises ``InvalidArgument``
    for a state that cannot be checkpointed (before any copy) and
    ``StagingBusy`` when no staging buffer frees up within ``timeout_s``.
    ``layouts``: where the last save's layout is kept (a manager keeps one).
    """
    encoded = encode_tree(state)
    plan = (layouts or LayoutCache()).plan(encoded)
    prefix = plan.prefix(encoded.tree, meta)
    devices = {t.device for t in encoded.tensors if t.is_cuda}
    buffer = staging.acquire(plan.data_nbytes, pinned=bool(devices), timeout_s=timeout_s)
    try:
        _copy_into(buffer, staging.memo(buffer), encoded.tensors, plan, bool(devices))
        for device in devices:
            torch.cuda.synchronize(device)
    except BaseException:
        _settle(devices)
        staging.release(buffer)
        raise
    return Snapshot(prefix, buffer, plan.data_nbytes, staging)


def prepare(
    state: object, staging: StagingPool, layouts: LayoutCache, *, skip: bool = False
) -> Future[None]:
    """Plans ``state``'s layout now and has its staging buffer allocated and touched.

    The walk runs on the caller's thread (it reads the caller's containers);
    the allocation and the page faults run on the pool's helper thread
    (``StagingPool.reserve_async``). The buffer is as large as ``state``'s
    data section (whole MiB); a CUDA state gets pinned memory. ``skip``
    (a member that never snapshots): the state is only checked.
    """
    encoded = encode_tree(state)
    if skip:
        done: Future[None] = Future()
        done.set_result(None)
        return done
    plan = layouts.plan(encoded)
    pinned = any(t.is_cuda for t in encoded.tensors)
    return staging.reserve_async(plan.data_nbytes, pinned=pinned)


def _copy_into(
    buffer: torch.Tensor,
    memo: dict[str, object],
    tensors: Sequence[torch.Tensor],
    plan: Plan,
    non_blocking: bool,
) -> None:
    """Each tensor into its slice; padding zeroed so equal states give equal bytes.

    ``memo`` (kept with the buffer by the pool) remembers which plan's padding
    is zeroed and the views the last ``_foreach_copy_`` wrote through.
    """
    base = buffer.data_ptr()
    if memo.get("zeroed") is not plan:
        for offset, nbytes in plan.gaps:
            ctypes.memset(base + offset, 0, nbytes)
        memo["zeroed"] = plan
    moves: list[_Move] = []
    others: list[int] = []
    for index, (tensor, offset, nbytes, raw) in enumerate(
        zip(tensors, plan.offsets, plan.sizes, plan.raw, strict=True)
    ):
        if not nbytes:
            continue
        if (
            raw
            and tensor.is_cpu
            and tensor.is_contiguous()
            and not tensor.is_neg()
            and (raw == RAW_REAL or not tensor.is_conj())  # only complex tensors conjugate
        ):
            # Only bytes the tensor's storage holds: not address 0 (a zero tensor, a freed
            # storage), not past a storage shrunk under it (checked on the slow path).
            source, storage = tensor.data_ptr(), tensor.untyped_storage()
            if source and source + nbytes <= storage.data_ptr() + storage.nbytes():
                moves.append((base + offset, source, nbytes))
                continue
        others.append(index)
    if others:
        for index in others:
            _check_readable(tensors[index], index)
        with torch.no_grad():
            torch._foreach_copy_(
                _views(buffer, memo, plan, tuple(others)),
                [tensors[i].detach() for i in others],
                non_blocking=non_blocking,
            )
    _memmove_in_two(moves)


def _check_readable(tensor: torch.Tensor, index: int) -> None:
    """Refuses a tensor whose storage does not hold all of it: copying it would crash.

    A storage freed or shrunk under its tensors (``untyped_storage().resize_(0)``,
    what sharded training does to a parameter between uses) leaves them
    pointing at nothing. A zero tensor (``torch._efficientzerotensor``) has no
    memory by design and copies as zeros.
    """
    if tensor._is_zerotensor():
        return
    end = tensor.storage_offset() + 1  # one past the last element the tensor reads
    end += sum((n - 1) * stride for n, stride in zip(tensor.shape, tensor.stride(), strict=True))
    needed, held = end * tensor.element_size(), tensor.untyped_storage().nbytes()
    if needed > held:
        raise InvalidArgument(
            f"state tensor #{index} ({tensor.dtype}, shape {tuple(tensor.shape)}) reaches byte "
            f"{needed} of a storage of {held} bytes: its storage was freed or shrunk "
            "(untyped_storage().resize_(), as sharded training does); save it while allocated"
        )


def _views(
    buffer: torch.Tensor, memo: dict[str, object], plan: Plan, indices: tuple[int, ...]
) -> list[torch.Tensor]:
    """Views of ``buffer`` shaped as the tensors at ``indices``, reused while they match."""
    kept = memo.get("views")
    if isinstance(kept, tuple) and kept[0] is plan and kept[1] == indices:
        return kept[2]  # type: ignore[no-any-return]
    views: list[torch.Tensor] = []
    for i in indices:
        spec = plan.specs[i]
        span = buffer[spec.offset : spec.offset + spec.nbytes]
        views.append(span.view(spec.dtype).view(spec.shape))
    memo["views"] = (plan, indices, views)
    return views


# (destination address, source address, bytes)
_Move = tuple[int, int, int]
#: Below this much, a second copying thread costs more than it saves (on the 2-core build
#: machine two threads were no slower from 8 MiB on, and 1.2x faster at 8 and 64 MiB).
_SPLIT_MIN_BYTES = 8 << 20
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
        _join(helper)  # never hand back a buffer a copy is still writing


def _join(helper: Future[None]) -> None:
    """Waits for the helper's copy even through exceptions raised while waiting.

    A signal handler that raises (Ctrl-C, a preemption handler saving an
    emergency checkpoint) interrupts the wait; returning then would hand the
    buffer back while the helper still writes into it: into the next save.
    The first such exception is raised once the copy is done; the helper's own
    failure otherwise.
    """
    interrupted: BaseException | None = None
    for _ in range(1_000_000):  # one pass per exception raised while waiting
        try:
            helper.exception()
            break
        except BaseException as err:  # re-raised below, once the copy is done
            interrupted = interrupted or err
    if interrupted is not None:
        raise interrupted
    helper.result()


def _forget_copier() -> None:
    """In a forked child the helper thread is gone: the next split starts a new one."""
    global _copier, _copier_lock
    _copier, _copier_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_copier)


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


def _settle(devices: set[torch.device]) -> None:
    """Waits out copies still in flight, so none lands in a buffer lent to the next save.

    A failing synchronize means a broken CUDA context: no copy will land after it.
    """
    for device in devices:
        with contextlib.suppress(RuntimeError):
            torch.cuda.synchronize(device)
