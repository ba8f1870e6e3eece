"""Adversarial review of issue 19's snapshot path: the reused layout, memmove split, staging pool.

Every state goes through one ``StagingPool`` and one ``LayoutCache`` save after
save, as a ``CheckpointManager`` does, and every part is decoded and compared
bit for bit with the state it was taken from (and, where the state is
canonical, with the format's bytes built the slow, obvious way). Faults are
injected on the copying threads themselves: a failing copy, a signal that
arrives while the caller waits for the helper copy, a pool closed with a
preparation queued. No processes, no network; every wait is bounded.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

import pytest
import torch
from tensor_support import assert_bit_exact, raw_bytes

from dtr.errors import CheckpointError, InvalidArgument
from dtr.worker import snapshot as snapshot_module
from dtr.worker.checkpoint_format import DTYPES, decode, encode_header, encode_tree, plan_layout
from dtr.worker.snapshot import LayoutCache, Snapshot, StagingPool, snapshot
from helpers import wait_until

_SPLIT = 8 << 20  # snapshot._SPLIT_MIN_BYTES: from here on the copy runs on two threads


class Saver:
    """Snapshots through one pool and one layout cache, like a CheckpointManager."""

    def __init__(self, max_buffers: int = 1) -> None:
        self.pool = StagingPool(max_buffers)
        self.layouts = LayoutCache()

    def take(self, state: object, meta: Mapping[str, Any] | None = None) -> Snapshot:
        return snapshot(state, dict(meta or {}), self.pool, layouts=self.layouts)

    def part(self, state: object, meta: Mapping[str, Any] | None = None) -> bytes:
        with self.take(state, meta) as snap:
            return b"".join(snap.buffers())


def reference_part(state: object, meta: Mapping[str, Any]) -> bytes:
    """The part as the format defines it, built without any cache or memmove."""
    encoded = encode_tree(state)
    layout = plan_layout(encoded.tensors)
    data = bytearray(layout.data_nbytes)
    for tensor, spec in zip(encoded.tensors, layout.specs, strict=True):
        data[spec.offset : spec.offset + spec.nbytes] = raw_bytes(tensor)
    return encode_header(encoded.tree, layout.specs, dict(meta)) + bytes(data)


def clone_state(state: object) -> Any:
    """A deep copy with every tensor's value frozen (contiguous clones)."""
    if isinstance(state, torch.Tensor):
        return state.detach().resolve_conj().resolve_neg().clone()
    if isinstance(state, dict):
        return {k: clone_state(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(clone_state(v) for v in state)
    return state


def check_round_trip(saver: Saver, state: object, meta: Mapping[str, Any]) -> Any:
    part = saver.part(state, meta)
    assert part == reference_part(state, meta)
    loaded, got_meta = decode(bytearray(part))
    assert_bit_exact(loaded, state)
    assert got_meta == dict(meta)
    return loaded


# --- the reused layout: what may change while dtypes and shapes stay ------------------------


def test_same_signature_with_renamed_reordered_keys_new_trees_ties_and_views_round_trips() -> None:
    g = torch.Generator().manual_seed(19)
    x, y = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    flat = torch.randn(100, generator=g)
    wide = torch.randn(6, 4, generator=g)
    states: list[dict[str, Any]] = [
        {"a": x, "b": y, "n": 1, "s": "one", "o": None},
        {"b": y, "a": x, "n": 2, "s": "two", "o": [1, 2]},  # keys swapped
        {"renamed": x, "b": y, "n": None, "s": b"\x00\xff", "o": {"k": (1, "v", None)}},
        {"a": x, "b": x, "c": y},  # a tie: still two tensors of (4, 6)
        {"a": x, "b": y, "c": y},  # the tie moved
        {"a": [x, {"deep": (y, 3.5)}], "hp": {"lr": 0.1, "betas": (0.9, 0.999)}},
        {"a": flat[3:27].view(4, 6), "b": wide.t()},  # a storage offset; non-contiguous
        {"a": wide.t().contiguous(), "b": flat[50:74].view(4, 6)},  # swapped kinds
        {"a": x.view(6, 4), "b": y.view(24)},  # the same numel, other shapes
        {"a": x.view(torch.int32), "b": y.to(torch.bfloat16)},  # other dtypes
        {"a": x, "b": y, "n": 1, "s": "one", "o": None},  # back to the first
    ]
    saver = Saver()
    for step, state in enumerate(states):
        loaded = check_round_trip(saver, state, {"step": step})
        if step == 3:
            assert loaded["a"] is loaded["b"] and loaded["a"] is not loaded["c"]
        if step == 4:
            assert loaded["b"] is loaded["c"] and loaded["a"] is not loaded["b"]


def make_values(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values of ``dtype`` without NaN payloads: only canonical bit patterns."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=torch.complex64, generator=g).to(dtype)
    if dtype.is_floating_point:
        values = torch.randn(shape, generator=g) * 4
        if values.numel() >= 3:
            values.view(-1)[:3] = torch.tensor([float("inf"), -float("inf"), -0.0])
        return values.to(dtype)
    high = 100 if dtype in (torch.uint16, torch.uint32, torch.uint64, torch.uint8) else 127
    low = 0 if high == 100 else -100
    return torch.randint(low, high, shape, generator=g).to(dtype)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_dtype_contiguous_strided_and_0_dim_round_trips_save_after_save(name: str) -> None:
    dtype = DTYPES[name]
    saver = Saver()
    for seed in (1, 2, 3):
        grid = make_values(dtype, (9, 7), seed)
        state = {
            "contiguous": make_values(dtype, (33,), seed + 10),
            "transposed": grid.t(),
            "every other": grid[::2, 1::3],
            "offset": grid.view(-1)[5:40],
            "scalar": make_values(dtype, (), seed + 20),
        }
        check_round_trip(saver, state, {"dtype": name, "seed": seed})
    assert saver.layouts.plans_made == 1


def test_tensors_sharing_one_storage_are_saved_as_their_own_values_each_time() -> None:
    w = torch.randn(8, 8)
    state = {
        "w": w,
        "tied": w,
        "row": w[2],
        "col": w[:, 3],
        "t": w.t(),
        "flat": w.view(-1),
        "as int": w.view(torch.int32),
        "overlap": w.view(-1)[1:],
    }
    saver = Saver()
    for _ in range(3):
        loaded = check_round_trip(saver, state, {})
        assert loaded["w"] is loaded["tied"]
        w.mul_(-1.5)  # training changes the shared storage between saves


def test_a_small_contiguous_bool_mask_built_from_bytes_loads_back() -> None:
    """A bool tensor whose bytes are not 0/1 (``uint8.view(torch.bool)``) is still a mask.

    Before issue 19 a small contiguous tensor went through ``copy_``, which
    writes 0/1; now every contiguous tensor is ``memmove``d raw, and the
    decoder refuses a part holding a bool byte other than 0 and 1.
    """
    flags = torch.tensor([0, 1, 2, 4, 255, 0, 8, 1], dtype=torch.uint8)
    mask = flags.view(torch.bool)  # what (x.view(uint8) & 4).view(bool) tricks produce
    state = {"mask": mask, "w": torch.randn(5)}

    part = Saver().part(state)
    loaded, _ = decode(bytearray(part))  # raises CheckpointError: a bool byte other than 0/1

    assert loaded["mask"].tolist() == mask.tolist()
    assert torch.equal(loaded["w"], state["w"])


# --- the copy threads -------------------------------------------------------------------------


def test_the_caller_may_change_or_resize_its_tensors_as_soon_as_snapshot_returns() -> None:
    big = torch.randn((_SPLIT // 4) + 12345)  # past the split: the helper thread copies too
    small = [torch.randn(17 + i) for i in range(50)]
    view = torch.randn(40, 30).t()
    index = torch.arange(9)
    state = {"big": big, "small": small, "view": view, "i": index}
    frozen = clone_state(state)
    saver = Saver()

    with saver.take(state, {"step": 1}) as snap:
        big.fill_(7.0)
        for tensor in small:
            tensor.zero_()
        view.add_(1)
        index.resize_(0)
        part = b"".join(snap.buffers())

    assert_bit_exact(decode(bytearray(part))[0], frozen)


@pytest.mark.parametrize(
    "sizes",
    [
        [3511 + (i % 97) for i in range(600)],  # ~8.1 MiB of small tensors: a cut inside one
        [(_SPLIT // 4) - 1000, 2000],  # the cut falls inside the first, the second is small
        [(_SPLIT // 8) + 1, (_SPLIT // 8) + 3, 5],  # just past the split, odd sizes
        [(_SPLIT // 4) - 40],  # just under the split: one thread
    ],
    ids=["600-small", "cut-in-first", "just-past", "just-under"],
)
def test_the_split_copy_round_trips_whatever_the_sizes(sizes: list[int]) -> None:
    saver = Saver()
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        state = {f"t{i}": torch.randn(n, generator=g) for i, n in enumerate(sizes)}
        check_round_trip(saver, state, {"seed": seed})


def test_a_failing_helper_copy_fails_the_snapshot_and_the_next_one_is_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = snapshot_module._memmove_all
    failed: list[str] = []

    def helper_fails_once(moves: Any) -> None:
        if threading.current_thread() is not threading.main_thread() and not failed:
            failed.append(threading.current_thread().name)
            raise OSError("injected: the helper copy failed")
        real(moves)

    monkeypatch.setattr(snapshot_module, "_memmove_all", helper_fails_once)
    saver = Saver()
    first = {"w": torch.randn(_SPLIT // 4 + 777), "b": torch.randn(3)}

    with pytest.raises(OSError, match="injected"):
        saver.part(first)

    assert failed and failed[0].startswith("dtr-snapshot-copy")
    assert saver.pool.in_use == 0
    second = {"w": torch.randn(_SPLIT // 4 + 777), "b": torch.randn(3)}
    check_round_trip(saver, second, {})


def main_thread_frames() -> Iterator[FrameType]:
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        yield frame
        frame = frame.f_back


def main_thread_waits_for_the_helper_copy() -> bool:
    """Whether the main thread, inside ``snapshot``, is blocked waiting on another thread."""
    frames = list(main_thread_frames())
    return (
        bool(frames)
        and frames[0].f_code.co_filename.endswith("threading.py")
        and any(
            f.f_code.co_name == "snapshot" and f.f_code.co_filename.endswith("snapshot.py")
            for f in frames
        )
    )


def test_a_failing_caller_copy_still_waits_for_the_helper_before_giving_the_buffer_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = snapshot_module._memmove_all
    gate = threading.Event()
    helper_done = threading.Event()

    def gated(moves: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            raise OSError("injected: the caller's copy failed")
        assert gate.wait(30), "the test never opened the gate"
        real(moves)
        helper_done.set()

    monkeypatch.setattr(snapshot_module, "_memmove_all", gated)

    def open_gate() -> None:
        wait_until(main_thread_waits_for_the_helper_copy, 30, "the caller to wait for the helper")
        gate.set()

    opener = threading.Thread(target=open_gate, daemon=True)
    opener.start()
    saver = Saver()
    with pytest.raises(OSError, match="injected"):
        saver.part({"w": torch.randn(_SPLIT // 4 + 99)})
    opener.join(30)

    assert helper_done.is_set(), "the buffer went back while the helper still copied into it"
    assert saver.pool.in_use == 0


class Preempted(Exception):
    """What a preemption or SIGTERM handler raises to trigger an emergency checkpoint."""


def test_a_signal_while_waiting_for_the_helper_copy_does_not_corrupt_the_next_save(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handler that raises (Ctrl-C, a preemption handler) lands while the caller waits.

    ``_memmove_in_two`` waits for the helper in a ``finally``: an exception
    raised by a signal handler during that wait escapes it, ``snapshot``
    gives the buffer back, and the helper's copy lands in it later — in the
    middle of the next save (the emergency checkpoint such a handler saves).
    """
    real = snapshot_module._memmove_all
    gate = threading.Event()
    caller_copies: list[int] = []

    def gated(moves: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            real(moves)
            caller_copies.append(len(moves))
            if len(caller_copies) == 2:
                gate.set()  # the second save's own half is in: let the first's helper run
            return
        if not gate.wait(5):  # a fixed snapshot waits for its helper: let it finish
            gate.set()
        real(moves)

    monkeypatch.setattr(snapshot_module, "_memmove_all", gated)

    def raise_preempted(signum: int, frame: FrameType | None) -> None:
        raise Preempted

    previous: Callable[..., Any] | int | None = signal.signal(signal.SIGUSR1, raise_preempted)
    try:
        main = threading.main_thread().ident or 0

        def interrupt() -> None:
            wait_until(
                main_thread_waits_for_the_helper_copy, 30, "the caller to wait for the helper"
            )
            signal.pthread_kill(main, signal.SIGUSR1)

        saver = Saver()
        first = {"a": torch.full((_SPLIT // 4 + 1024,), 7.0)}  # 8 MiB + 4 KiB: a 9 MiB buffer
        second = {"b": torch.arange((9 << 20) // 4, dtype=torch.float32)}  # fills 9 MiB
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(Preempted):
            saver.part(first)
        part = saver.part(second, {"emergency": True})  # what the handler's caller saves
    finally:
        signal.signal(signal.SIGUSR1, previous)
    loaded, _ = decode(bytearray(part))

    wrong = int((loaded["b"] != second["b"]).sum())
    assert wrong == 0, f"{wrong} values of the next save hold the interrupted save's bytes"
    assert saver.pool.allocations == 1


# --- staging buffers held, reused and prepared ------------------------------------------------


def test_two_snapshots_held_at_once_with_changing_layouts_keep_their_own_bytes() -> None:
    saver = Saver(max_buffers=2)
    g = torch.Generator().manual_seed(3)
    a1 = {"x": torch.randn(1000, generator=g), "y": torch.randn(3, 5, generator=g).t()}
    b1 = {"z": torch.full((4000,), -2.0), "i": torch.arange(7, dtype=torch.int8)}
    a2 = {"x": torch.randn(1000, generator=g), "y": torch.randn(3, 5, generator=g).t()}
    frozen = [clone_state(s) for s in (a1, b1, a2)]

    first = saver.take(a1)
    second = saver.take(b1)  # the other buffer, another layout
    first_bytes = b"".join(first.buffers())
    first.release()
    third = saver.take(a2)  # a1's buffer again, a2's layout equal to a1's but planned anew
    parts = [first_bytes, b"".join(second.buffers()), b"".join(third.buffers())]
    second.release()
    third.release()

    for part, state, expected in zip(parts, (a1, b1, a2), frozen, strict=True):
        assert part == reference_part(state, {})
        assert_bit_exact(decode(bytearray(part))[0], expected)
    assert saver.pool.allocations == 2


def test_a_preparation_still_queued_when_the_pool_closes_fails_and_allocates_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``reserve_async``: "The future fails when the pool is closed first."

    A preparation queued behind another on the helper thread runs after
    ``close()``: it allocates a fresh buffer on a closed pool and its future
    succeeds, though nothing was prepared.
    """
    gate = threading.Event()
    touch = StagingPool._touch

    def gated(pool: StagingPool, buffer: torch.Tensor) -> None:
        assert gate.wait(30), "the test never opened the gate"
        touch(pool, buffer)

    monkeypatch.setattr(StagingPool, "_touch", gated)
    pool = StagingPool(max_buffers=1)
    running = pool.reserve_async(2 << 20)
    queued = pool.reserve_async(2 << 20)
    wait_until(lambda: pool.allocations == 1, 30, "the first preparation to allocate")

    closer = threading.Thread(target=pool.close)
    closer.start()
    wait_until(lambda: pool._closed, 30, "close() to begin")
    gate.set()
    closer.join(30)
    assert not closer.is_alive()
    running.result(timeout=30)

    with pytest.raises(CheckpointError, match="closed"):
        queued.result(timeout=30)
    assert pool.allocations == 1


def test_a_nested_tensor_is_refused_with_a_typed_error_naming_its_path() -> None:
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    with pytest.raises(InvalidArgument, match=r"state\['n'\]"):
        Saver().part({"n": nested})


def test_a_save_right_after_prepare_on_the_same_pool_and_cache_is_exact() -> None:
    saver = Saver()
    state = {"w": torch.randn(1 << 18), "b": torch.randn(3)}
    prepared = snapshot_module.prepare(state, saver.pool, saver.layouts)
    check_round_trip(saver, state, {"step": 1})  # waits for the preparation's buffer
    prepared.result(timeout=30)
    assert saver.pool.allocations == 1 and saver.layouts.plans_made == 1
