"""The batched snapshot: one layout reused between saves, copies without per-tensor torch ops.

Every state is snapshotted twice or more through the same ``LayoutCache`` and
``StagingPool``, as a manager does, and each part is decoded and compared bit
for bit; the second save of a state exercises the reused layout, padding and
views. The bytes must also equal what the format's reference encoder
(``encode_header`` over ``plan_layout``) and a plain per-tensor copy give:
caching changes nothing on disk. No processes, no network.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
import torch

from dtr.errors import InvalidArgument
from dtr.worker import snapshot as snapshot_module
from dtr.worker.checkpoint_format import (
    ALIGNMENT,
    FORMAT_VERSION,
    MAGIC,
    MAX_DEPTH,
    decode,
    encode_header,
    encode_header_with,
    encode_specs,
    encode_tree,
    plan_layout,
)
from dtr.worker.snapshot import LayoutCache, StagingPool, snapshot


def reference_part(state: object, meta: dict[str, Any]) -> bytes:
    """The part as the format defines it, built the slow, obvious way (no cache, no memmove)."""
    encoded = encode_tree(state)
    layout = plan_layout(encoded.tensors)
    header = {
        "format_version": FORMAT_VERSION,
        "tree": encoded.tree,
        "tensors": [spec.to_json() for spec in layout.specs],
        "meta": meta,
    }
    body = json.dumps(header, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    prefix = struct.pack("<8sQ", MAGIC, len(body)) + body.encode("ascii")
    prefix += bytes(-len(prefix) % ALIGNMENT)
    data = bytearray(layout.data_nbytes)
    for tensor, spec in zip(encoded.tensors, layout.specs, strict=True):
        value = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
        raw = value.reshape(-1).view(torch.uint8) if value.numel() else torch.empty(0)
        data[spec.offset : spec.offset + spec.nbytes] = bytes(raw.numpy().tobytes())
    return prefix + bytes(data)


class Saver:
    """Snapshots through one pool and one layout cache, like a CheckpointManager."""

    def __init__(self, max_buffers: int = 1) -> None:
        self.pool = StagingPool(max_buffers)
        self.layouts = LayoutCache()

    def part(self, state: object, meta: dict[str, Any] | None = None) -> bytes:
        with snapshot(state, meta or {}, self.pool, layouts=self.layouts) as snap:
            return b"".join(snap.buffers())


def assert_bit_exact(loaded: object, expected: object) -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(loaded, torch.Tensor)
        assert (loaded.dtype, loaded.shape) == (expected.dtype, expected.shape)
        want = expected.detach().resolve_conj().resolve_neg().contiguous()
        assert torch.equal(loaded.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))
    elif isinstance(expected, dict):
        assert isinstance(loaded, dict) and list(loaded) == list(expected)
        for key, value in expected.items():
            assert_bit_exact(loaded[key], value)
    elif isinstance(expected, list | tuple):
        assert type(loaded) is type(expected) and len(loaded) == len(expected)
        for got, value in zip(loaded, expected, strict=True):
            assert_bit_exact(got, value)
    else:
        assert loaded == expected


def mixed_state(seed: int) -> dict[str, Any]:
    """Every path of the copy: contiguous and not, odd sizes (padding), 0-dim, empty, views."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(37, 29, generator=g)
    z = torch.randn(5, 3, dtype=torch.complex64, generator=g)
    return {
        "f32": torch.randn(1001, generator=g),
        "f64": torch.randn(7, 3, dtype=torch.float64, generator=g),
        "bf16": torch.randn(33, generator=g).to(torch.bfloat16),
        "f16": torch.randn(3, 5, generator=g).to(torch.float16),
        "i8": torch.randint(-128, 127, (13,), dtype=torch.int8, generator=g),
        "i64": torch.randint(0, 1 << 40, (3,), generator=g),
        "u8": torch.randint(0, 255, (1,), dtype=torch.uint8, generator=g),
        "bool": torch.rand(17, generator=g) > 0.5,
        "c64": torch.randn(6, dtype=torch.complex64, generator=g),
        "scalar": torch.tensor(2.5),
        "scalar int": torch.tensor(-3, dtype=torch.int32),
        "empty": torch.empty(0, 4),
        "empty int": torch.zeros(0, dtype=torch.int16),
        "transposed": base.t(),
        "strided": base[::3, 1::7],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "conj": z.conj(),
        "neg": z.conj().imag,
        "offset slice": base.view(-1)[5:200],
        "parameter": torch.nn.Parameter(torch.randn(4, 4, generator=g)),
        "big": torch.randn(1 << 19, generator=g),  # 2 MiB
        "nested": [{"step": torch.tensor(seed), "lr": 0.1 * seed}, (torch.arange(3) + seed,)],
        "epoch": seed,
    }


def test_mixed_dtypes_and_views_round_trip_bit_exact_save_after_save() -> None:
    saver = Saver()
    for seed in (1, 2, 3):  # same shapes each time: the second and third reuse the layout
        state = mixed_state(seed)
        part = saver.part(state, {"step": seed})

        assert part == reference_part(state, {"step": seed})
        loaded, meta = decode(bytearray(part))
        assert_bit_exact(loaded, state)
        assert meta == {"step": seed}
    assert saver.layouts.plans_made == 1 and saver.pool.allocations == 1


def test_a_state_whose_shapes_change_between_saves_gets_a_new_layout_each_time() -> None:
    saver = Saver()
    states = [
        {"w": torch.randn(10, 10), "b": torch.randn(10)},
        {"w": torch.randn(10, 12), "b": torch.randn(10)},  # a shape changed
        {"w": torch.randn(10, 12).double(), "b": torch.randn(10)},  # a dtype changed
        {"w": torch.randn(3), "b": torch.randn(10), "new": torch.ones(5, dtype=torch.int8)},
        {"w": torch.randn(10, 10), "b": torch.randn(10)},  # back to the first shapes
    ]

    for state in states:
        part = saver.part(state)
        assert part == reference_part(state, {})
        assert_bit_exact(decode(bytearray(part))[0], state)
    assert saver.layouts.plans_made == len(states)


def test_reused_padding_is_zero_after_another_layout_dirtied_the_buffer() -> None:
    saver = Saver()
    odd = {"a": torch.ones(3), "b": torch.full((5,), 7, dtype=torch.int8), "c": torch.ones(2)}
    first = saver.part(odd)
    saver.part({"noise": torch.full((100,), -1.0)})  # covers the padding of ``odd``

    assert saver.part(odd) == first == reference_part(odd, {})


def test_a_tensor_that_turns_non_contiguous_with_the_same_shape_is_copied_as_its_value() -> None:
    saver = Saver()
    square = torch.arange(64.0).view(8, 8)
    for value in (square, square.t(), square.t().contiguous() + 1, square.t()):
        state = {"m": value, "v": torch.arange(5)}
        part = saver.part(state)
        assert part == reference_part(state, {})
        assert_bit_exact(decode(bytearray(part))[0], state)


def test_a_thousand_small_tensors_round_trip_bit_exact() -> None:
    g = torch.Generator().manual_seed(7)
    state = {f"layer.{i}": torch.randn(1 + i % 37, generator=g) for i in range(1000)}
    state["big"] = torch.randn(20 << 20, generator=g)  # 80 MiB: the two copying threads split
    saver = Saver()

    for _ in range(2):
        part = saver.part(state, {"step": 1})
        assert part == reference_part(state, {"step": 1})
    assert_bit_exact(decode(bytearray(part))[0], state)


def test_tied_tensors_are_stored_once_and_views_of_the_same_memory_are_not_confused() -> None:
    weight = torch.randn(4, 6)
    state = {
        "encoder": weight,
        "decoder": weight,  # tied: the same tensor twice
        "first row": weight[0],  # same address, another view
        "transposed": weight.t(),  # same address, other strides
        "empty a": torch.empty(0),
        "empty b": torch.empty(0, 3),
    }
    encoded = encode_tree(state)
    assert len(encoded.tensors) == 5

    part = Saver().part(state)
    loaded, _ = decode(bytearray(part))

    assert loaded["encoder"] is loaded["decoder"]
    assert_bit_exact(loaded, state)


def test_header_from_cached_parts_equals_the_header_encoded_at_once() -> None:
    for state in (mixed_state(4), {}, {"x": [1.5, math.inf, None, "ü", b"\x00"]}):
        encoded = encode_tree(state)
        specs = plan_layout(encoded.tensors).specs
        meta = {"step": 9, "worker_id": "w-0", "generation": 2}
        expected = encode_header(encoded.tree, specs, meta)
        assert encode_header_with(encoded.tree, encode_specs(specs), meta) == expected
        assert Saver().part(state, meta)[: len(expected)] == expected


def test_the_walk_records_each_tensors_dtype_and_shape_in_layout_order() -> None:
    state = {"a": torch.zeros(2, 3), "b": [torch.ones(4, dtype=torch.int8)], "c": torch.tensor(1)}

    encoded = encode_tree(state)

    assert encoded.signature == (
        (torch.float32, torch.Size([2, 3])),
        (torch.int8, torch.Size([4])),
        (torch.int64, torch.Size([])),
    )


def test_contiguous_cpu_tensors_are_copied_by_memmove_the_rest_by_one_foreach_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = torch._foreach_copy_

    def counting(views: list[torch.Tensor], sources: list[torch.Tensor], **kw: Any) -> None:
        calls.append(len(sources))
        real(views, sources, **kw)

    monkeypatch.setattr(torch, "_foreach_copy_", counting)
    state = {f"t{i}": torch.randn(10) for i in range(300)}
    state.update(t=torch.randn(5, 7).t(), s=torch.arange(20.0)[::2])
    saver = Saver()

    part = saver.part(state)

    assert calls == [2]  # one call for both non-contiguous tensors, none per contiguous one
    assert part == reference_part(state, {})


def test_the_same_views_are_reused_while_the_layout_holds() -> None:
    saver = Saver()
    state = {"t": torch.randn(6, 4).t(), "c": torch.ones(3)}
    saver.part(state)
    buffer = saver.pool.acquire(1)
    first = saver.pool.memo(buffer)["views"]
    saver.pool.release(buffer)

    saver.part({"t": torch.randn(6, 4).t(), "c": torch.zeros(3)})

    buffer = saver.pool.acquire(1)
    assert saver.pool.memo(buffer)["views"] is first
    saver.pool.release(buffer)


def test_the_snapshot_module_keeps_its_public_names() -> None:
    for name in ("Snapshot", "StagingBusy", "StagingPool", "snapshot", "prepare", "LayoutCache"):
        assert hasattr(snapshot_module, name), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; runs on GPU CI")
def test_a_cuda_state_goes_through_prepared_pinned_staging_bit_exact_save_after_save() -> None:
    def on_cuda(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.cuda()
        if isinstance(value, dict):
            return {k: on_cuda(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(on_cuda(v) for v in value)
        return value

    saver = Saver()
    snapshot_module.prepare(on_cuda(mixed_state(0)), saver.pool, saver.layouts).result(timeout=60)
    for seed in (1, 2):
        state = on_cuda(mixed_state(seed))
        part = saver.part(state, {"step": seed})
        assert part == reference_part(state, {"step": seed})
        assert_bit_exact(decode(bytearray(part))[0], mixed_state(seed))  # the same values, on CPU

    buffer = saver.pool.acquire(1, pinned=True)
    assert buffer.is_pinned() and saver.pool.allocations == 1
    assert saver.layouts.plans_made == 1
    saver.pool.release(buffer)


def test_a_tensor_nested_past_the_depth_limit_is_refused_as_before() -> None:
    state: dict[str, Any] = {"t": torch.ones(1)}
    for _ in range(MAX_DEPTH):
        state = {"d": state}

    with pytest.raises(InvalidArgument, match="nested deeper"):
        encode_tree(state)
    assert len(encode_tree(state["d"]).tensors) == 1  # one level less: saved, and it loads
    assert decode(bytearray(Saver().part(state["d"])))[0] is not None
