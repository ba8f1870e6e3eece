"""dtr.worker.checkpoint_format and dtr.worker.snapshot: exact round trips, safe loading.

A part is built the way a save builds it (``snapshot`` into a ``StagingPool``,
then the snapshot's buffers joined) and read back with ``decode``. Corrupt and
hostile parts are crafted from a valid one by editing its header or bytes;
decoding must refuse every one with ``CheckpointError`` and never unpickle.
No processes, no network; the CUDA test runs only where CUDA exists.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import pickle
import random
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dtr.errors import CheckpointError, InvalidArgument
from dtr.worker import snapshot as snapshot_module
from dtr.worker.checkpoint_format import ALIGNMENT, DTYPES, MAGIC, decode, decode_header
from dtr.worker.snapshot import Snapshot, StagingBusy, StagingPool, snapshot

PWNED: list[str] = []  # a hostile payload would append here if anything unpickled it


def encode(state: object, meta: dict[str, Any] | None = None) -> bytearray:
    """The bytes a save writes for ``state``."""
    with snapshot(state, meta or {}, StagingPool(1)) as snap:
        return bytearray(b"".join(snap.buffers()))


def assert_same(actual: object, expected: object, path: str = "state") -> None:
    """Equal values of exactly the same types, recursively; tensors equal bit for bit."""
    assert type(actual) is type(expected) or isinstance(expected, dict), path
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor)
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), path
        assert torch.equal(
            actual.reshape(-1).view(torch.uint8),
            expected.contiguous().reshape(-1).view(torch.uint8),
        ), path
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert [(type(k), k) for k in actual] == [(type(k), k) for k in expected], path
        for key, value in expected.items():
            assert_same(actual[key], value, f"{path}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), path
    else:
        assert actual == expected, path


def trained_model_and_adam() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 6)).pow(2).sum().backward()
    opt.step()
    return model, opt


# --- round trips -----------------------------------------------------------------------


def test_model_and_adam_state_round_trip_and_load_into_fresh_objects() -> None:
    model, opt = trained_model_and_adam()
    model_state = model.state_dict()
    state = {"model": model_state, "opt": opt.state_dict(), "step": 7}

    loaded, meta = decode(encode(state, {"step": 7, "worker": "w-1", "generation": 3}))

    assert meta == {"step": 7, "worker": "w-1", "generation": 3}
    assert_same(loaded, state)
    assert list(loaded["opt"]["state"]) == [0, 1, 2, 3, 4, 5]  # int keys stay ints
    assert loaded["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert loaded["model"]._metadata == model_state._metadata  # type: ignore[attr-defined]
    fresh_model, fresh_opt = trained_model_and_adam()
    fresh_model.load_state_dict(loaded["model"])
    fresh_opt.load_state_dict(loaded["opt"])


def test_plain_values_round_trip_with_their_types() -> None:
    state = {
        "floats": [1.5, -0.0, math.nan, math.inf, -math.inf, 1e-300],
        "ints": (0, -1, 2**70, True, False, None),
        "text": "naïve ✓ \ud800",
        "raw": b"\x00\xffbytes",
        "types": [torch.bfloat16, torch.Size([2, 0, 3])],
        "keys": {0: "int", 1.5: "float", None: "none", True: "bool", (1, ("a", b"b")): "tuple"},
        "nested": [[], (), {}, [({"deep": [1]},)]],
    }

    loaded, _ = decode(encode(state))

    assert_same(loaded, state)
    assert isinstance(loaded["nested"][3][0], tuple)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_supported_dtype_round_trips_bit_for_bit(name: str) -> None:
    dtype = DTYPES[name]
    raw = torch.randint(0, 256, (3, 5 * dtype.itemsize), dtype=torch.uint8)
    tensor = (raw % 2).bool() if dtype == torch.bool else raw.view(dtype)

    loaded, _ = decode(encode({"t": tensor}))

    assert_same(loaded["t"], tensor)


def test_non_contiguous_views_are_saved_as_their_values_only() -> None:
    base = torch.arange(1000, dtype=torch.float32).view(10, 100)
    z = torch.randn(4, 3, dtype=torch.complex64)
    views = {
        "transposed": base.t(),
        "strided": base[::3, 1::7],
        "narrowed": base.narrow(1, 50, 2),
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "conj": z.conj(),
        "neg": z.conj().imag,
    }

    data = encode(views)
    loaded, _ = decode(data)

    for name, view in views.items():
        assert_same(loaded[name], view.resolve_conj().resolve_neg(), name)
    assert decode_header(data).tensors[2].nbytes == 10 * 2 * 4  # the view, not its storage


def test_large_tensors_round_trip_whichever_way_they_are_copied() -> None:
    base = torch.randn(1 << 19)  # 2 MiB: copied by memmove when contiguous
    big = {
        "offset slice": base[1000:],
        "bfloat16": base.to(torch.bfloat16),
        "bool": base > 0,
        "strided": base[::2],
        "conj": torch.randn(1 << 17, dtype=torch.complex64).conj(),
        "parameter": torch.nn.Parameter(base.view(512, 1024)),
    }

    loaded, _ = decode(encode(big))

    for name, tensor in big.items():
        assert_same(loaded[name], tensor.detach().resolve_conj(), name)


def test_a_state_over_the_split_threshold_is_copied_by_two_threads_exactly() -> None:
    # 3 big tensors of 30 MiB (the two copying threads split one of them) and small ones
    big = {f"w{i}": torch.randn(30 << 18) for i in range(3)}
    state = {**big, "small": [torch.arange(10), torch.ones(3, 3)]}

    loaded, _ = decode(encode(state))

    for name, tensor in big.items():
        assert_same(loaded[name], tensor, name)
    assert_same(loaded["small"][0], state["small"][0], "small")


def test_moves_split_at_a_byte_cut_cover_every_byte_once() -> None:
    moves = [(1000, 0, 10), (2000, 100, 30), (3000, 500, 5)]
    first, second = snapshot_module._split_moves(moves, 25)
    assert first == [(1000, 0, 10), (2000, 100, 15)]
    assert second == [(2015, 115, 15), (3000, 500, 5)]
    assert snapshot_module._split_moves(moves, 10) == (moves[:1], moves[1:])


def test_zero_dim_and_empty_tensors_round_trip() -> None:
    state = {"scalar": torch.tensor(3.5), "empty": torch.empty(0, 4), "none": torch.zeros(0)}

    loaded, _ = decode(encode(state))

    assert_same(loaded, state)
    assert loaded["scalar"].shape == () and loaded["empty"].shape == (0, 4)


def test_a_tensor_reached_twice_is_stored_once_and_loads_shared() -> None:
    weight = torch.randn(64, 64)
    state = {"embed": weight, "head": weight.detach(), "other": weight.t()}

    data = encode(state)
    loaded, _ = decode(data)

    assert len(decode_header(data).tensors) == 2
    assert loaded["embed"] is loaded["head"]
    assert_same(loaded["other"], weight.t())


def test_writable_input_is_aliased_and_read_only_input_is_copied() -> None:
    data = encode({"t": torch.zeros(4)})

    aliased, _ = decode(data)
    copied, _ = decode(bytes(data))
    aliased["t"].fill_(1.0)
    copied["t"].fill_(2.0)

    assert_same(decode(data)[0]["t"], torch.ones(4))


def test_map_location_moves_every_tensor() -> None:
    loaded, _ = decode(encode({"a": torch.ones(2), "b": [torch.zeros(3)]}), map_location="meta")

    assert loaded["a"].is_meta and loaded["b"][0].is_meta


# --- what cannot be saved ----------------------------------------------------------------


class Custom:
    pass


class TensorSubclass(torch.Tensor):
    pass


UNSAVABLE: dict[str, tuple[Callable[[], object], str]] = {
    "a function": (lambda: print, "<class 'builtin_function_or_method'>"),
    "a lambda": (lambda: lambda: 1, "<class 'function'>"),
    "a module": (lambda: torch.nn.Linear(1, 1), "Linear"),
    "a numpy array": (lambda: np.zeros(3), "numpy.ndarray"),
    "a numpy scalar": (lambda: np.float64(1.0), "numpy.float64"),
    "a custom object": (Custom, "Custom"),
    "a set": (lambda: {1, 2}, "<class 'set'>"),
    "a bytearray": (lambda: bytearray(b"x"), "bytearray"),
    "a sparse tensor": (lambda: torch.zeros(2, 2).to_sparse(), "layout torch.sparse_coo"),
    "a quantized tensor": (
        lambda: torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8),
        "quantized",
    ),
    "a meta tensor": (lambda: torch.empty(2, device="meta"), "meta tensor"),
    "an unlisted dtype": (lambda: torch.empty(2, dtype=torch.bits8), "torch.bits8"),
    "a tensor subclass": (lambda: torch.ones(2).as_subclass(TensorSubclass), "TensorSubclass"),
}


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("name", sorted(UNSAVABLE))
def test_values_that_cannot_be_saved_are_refused_naming_their_path(name: str) -> None:
    make, message = UNSAVABLE[name]
    state = {"opt": {"param_groups": [{"lr": 0.1, "foo": make()}]}}

    with pytest.raises(
        InvalidArgument, match=r"state\['opt'\]\['param_groups'\]\[0\]\['foo'\]"
    ) as err:
        encode(state)

    assert message in str(err.value)


@pytest.mark.parametrize("key", [torch.zeros(1), (1, torch.float32), frozenset(), Custom()])
def test_dict_keys_other_than_plain_values_are_refused(key: object) -> None:
    with pytest.raises(InvalidArgument, match="dict key"):
        encode({"m": {key: 1}})


def test_meta_must_be_a_dict_of_plain_json_values() -> None:
    with pytest.raises(InvalidArgument, match=r"meta\['step'\]"):
        encode({}, {"step": torch.tensor(1)})
    with pytest.raises(InvalidArgument, match=r"meta\['loss'\]"):
        encode({}, {"loss": math.nan})


# --- corrupt and hostile parts -------------------------------------------------------------


def split(data: bytearray) -> tuple[dict[str, Any], bytes]:
    """A part's header object and its data section."""
    (length,) = struct.unpack_from("<Q", data, 8)
    start = -(-(16 + length) // ALIGNMENT) * ALIGNMENT
    return json.loads(data[16 : 16 + length]), bytes(data[start:])


def craft(header: object, payload: bytes, *, raw_header: bytes | None = None) -> bytearray:
    """A part with any header, laid out as the format says."""
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    prefix = MAGIC + struct.pack("<Q", len(body)) + body
    return bytearray(prefix + bytes(-len(prefix) % ALIGNMENT) + payload)


def valid_part() -> bytearray:
    return encode({"w": torch.arange(6.0).view(2, 3), "flag": torch.tensor([True, False])})


def with_header(edit: Callable[[dict[str, Any]], object]) -> bytearray:
    header, payload = split(valid_part())
    edit(header)
    return craft(header, payload)


CORRUPTIONS: dict[str, Callable[[], bytearray]] = {
    "flipped magic": lambda: bytearray(b"X") + valid_part()[1:],
    "empty": bytearray,
    "truncated data": lambda: valid_part()[:-1],
    "truncated header": lambda: valid_part()[:20],
    "trailing bytes": lambda: valid_part() + b"\0",
    "header length beyond the data": lambda: (
        (d := valid_part())[:8] + struct.pack("<Q", 1 << 40) + d[16:]
    ),
    "offset out of range": lambda: with_header(lambda h: h["tensors"][1].update(offset=1 << 20)),
    "misaligned offset": lambda: with_header(lambda h: h["tensors"][1].update(offset=65)),
    "overlapping tensors": lambda: with_header(lambda h: h["tensors"][1].update(offset=0)),
    "unknown dtype name": lambda: with_header(lambda h: h["tensors"][0].update(dtype="object")),
    "shape inconsistent with nbytes": lambda: with_header(
        lambda h: h["tensors"][0].update(shape=[7])
    ),
    "negative dimension": lambda: with_header(lambda h: h["tensors"][0].update(shape=[-2, -3])),
    "bool shape": lambda: with_header(lambda h: h["tensors"][1].update(shape=[True, 2])),
    "tensor index out of range": lambda: with_header(
        lambda h: h["tree"]["dict"][0].__setitem__(1, {"tensor": 9})
    ),
    "untagged list in the tree": lambda: with_header(lambda h: h.update(tree=[1, 2])),
    "two tags in one object": lambda: with_header(
        lambda h: h.update(tree={"list": [], "tuple": []})
    ),
    "list as a dict key": lambda: with_header(
        lambda h: h.update(tree={"dict": [[{"list": []}, 1]]})
    ),
    "duplicate dict keys": lambda: with_header(lambda h: h.update(tree={"dict": [[1, 1], [1, 2]]})),
    "bad float tag": lambda: with_header(lambda h: h.update(tree={"float": "1e3"})),
    "bad base64": lambda: with_header(lambda h: h.update(tree={"bytes": "!!"})),
    "missing meta": lambda: with_header(lambda h: h.pop("meta")),
    "header that is not an object": lambda: craft(None, b"", raw_header=b"[1, 2, 3]"),
    "header that is not JSON": lambda: craft(None, b"", raw_header=b"{not json"),
    "header that is not UTF-8": lambda: craft(None, b"", raw_header=b'{"\xff": 1}'),
    "NaN literal in the header": lambda: craft(None, b"", raw_header=b'{"tree": NaN}'),
    "duplicate header keys": lambda: craft(None, b"", raw_header=b'{"meta": {}, "meta": {}}'),
    "bool byte other than 0 or 1": lambda: valid_part()[:-1] + b"\x02",
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_parts_raise_checkpoint_error(name: str) -> None:
    with pytest.raises(CheckpointError, match=r"^(corrupt checkpoint|not a dtr checkpoint)"):
        decode(CORRUPTIONS[name]())


def test_an_unknown_format_version_is_refused_by_number() -> None:
    newer_magic = valid_part()
    newer_magic[7] = 2
    newer_header = with_header(lambda h: h.update(format_version=3))

    with pytest.raises(CheckpointError, match="format version 2 not supported"):
        decode(newer_magic)
    with pytest.raises(CheckpointError, match="format version 3 not supported"):
        decode(newer_header)


class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (PWNED.append, ("unpickled",))


def test_decoding_never_unpickles(tmp_path: Path) -> None:
    blob = base64.b64encode(pickle.dumps(Payload())).decode()
    hostile = [
        with_header(lambda h: h.update(tree={"pickle": blob})),
        with_header(lambda h: h.update(tree={"dict": [["x", {"__reduce__": blob}]]})),
        with_header(lambda h: h.update(tree={"dtype": "__class__"})),
        with_header(lambda h: h["tensors"][0].update(dtype="Tensor")),
        bytearray(pickle.dumps(Payload())),
    ]
    torch.save({"x": Payload()}, tmp_path / "torch.pt")
    hostile.append(bytearray((tmp_path / "torch.pt").read_bytes()))

    for data in hostile:
        with pytest.raises(CheckpointError):
            decode(data)
    assert PWNED == []


def test_random_damage_raises_checkpoint_error_or_decodes_never_anything_else() -> None:
    part = valid_part()
    rng = random.Random(1234)  # recorded seed: a failure reproduces
    for _ in range(400):
        damaged = bytearray(part)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        with contextlib.suppress(CheckpointError):
            decode(damaged[: rng.choice([len(damaged), rng.randrange(len(damaged) + 1)])])


# --- snapshots and staging ------------------------------------------------------------------


def staging_address(snap: Snapshot) -> int:
    """Where a snapshot's data section lies in memory."""
    return int(np.frombuffer(snap.views[0], dtype=np.uint8).ctypes.data)


def test_the_second_snapshot_of_the_same_shapes_reuses_the_staging_buffer() -> None:
    model, _ = trained_model_and_adam()
    pool = StagingPool(max_buffers=2)

    with snapshot({"model": model.state_dict()}, {"step": 1}, pool) as first:
        first_address = staging_address(first)
    with snapshot({"model": model.state_dict()}, {"step": 2}, pool) as second:
        second_address = staging_address(second)

    assert second_address == first_address
    assert pool.allocations == 1 and pool.in_use == 0


def test_a_snapshot_is_independent_of_later_in_place_changes() -> None:
    model, opt = trained_model_and_adam()
    big = torch.randn(1 << 19)  # 2 MiB: the memmove path
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "big": big}
    expected = {"model": {k: v.clone() for k, v in model.state_dict().items()}}

    with snapshot(state, {}, StagingPool(1)) as snap:
        before = b"".join(snap.buffers())
        big.add_(1.0)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(1.0)
        model(torch.randn(8, 6)).sum().backward()
        opt.step()
        after = b"".join(snap.buffers())

    assert before == after
    assert_same(decode(bytearray(after))[0]["model"], expected["model"])


def test_equal_states_give_equal_bytes_even_in_a_reused_buffer() -> None:
    pool = StagingPool(1)
    state = {"a": torch.ones(3), "b": torch.full((5,), 7, dtype=torch.int8)}
    with snapshot(state, {}, pool) as snap:
        first = b"".join(snap.buffers())
    snapshot({"noise": torch.full((100,), -1.0)}, {}, pool).release()  # dirties the padding

    with snapshot(state, {}, pool) as snap:
        assert b"".join(snap.buffers()) == first


def test_snapshot_views_are_bounded_chunks_that_writev_writes_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_module, "CHUNK_BYTES", 4096)
    state = {"big": torch.randn(10_000), "small": [torch.arange(3)]}
    path = tmp_path / "part"

    with snapshot(state, {"step": 3}, StagingPool(1)) as snap:
        assert all(len(view) <= 4096 for view in snap.views)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        try:
            assert os.writev(fd, snap.buffers()) == snap.nbytes
        finally:
            os.close(fd)

    assert_same(decode(bytearray(path.read_bytes())), (state, {"step": 3}))


def test_a_released_snapshot_hands_out_nothing_and_releasing_twice_is_harmless() -> None:
    snap = snapshot({"t": torch.ones(2)}, {}, StagingPool(1))
    snap.release()
    snap.release()

    with pytest.raises(CheckpointError, match="released"):
        snap.buffers()


def test_an_unsavable_state_fails_before_taking_a_staging_buffer() -> None:
    pool = StagingPool(1)

    with pytest.raises(InvalidArgument):
        snapshot({"t": torch.ones(2), "f": print}, {}, pool)

    assert pool.in_use == 0 and pool.allocations == 0


def test_acquire_times_out_when_all_buffers_are_held() -> None:
    pool = StagingPool(max_buffers=2)
    held = [pool.acquire(10), pool.acquire(10)]
    started = time.monotonic()

    with pytest.raises(StagingBusy, match="all 2 staging buffers"):
        pool.acquire(10, timeout_s=0.05)

    assert time.monotonic() - started >= 0.05 and len(held) == 2


def test_a_non_blocking_pool_refuses_at_once_when_full() -> None:
    pool = StagingPool(max_buffers=1, block=False)
    pool.acquire(10)

    with pytest.raises(StagingBusy):
        pool.acquire(10, timeout_s=60)


def test_a_release_wakes_a_waiting_acquire_with_the_same_buffer() -> None:
    pool = StagingPool(max_buffers=1)
    held = pool.acquire(100)
    got: list[torch.Tensor] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(100, timeout_s=10)))
    waiter.start()

    pool.release(held)
    waiter.join(timeout=10)

    assert got and got[0] is held and pool.allocations == 1


def test_concurrent_saves_never_hold_more_than_max_buffers() -> None:
    pool = StagingPool(max_buffers=2)
    peak: list[int] = []

    def save_repeatedly() -> None:
        for _ in range(50):
            buffer = pool.acquire(1000, timeout_s=10)
            peak.append(pool.in_use)
            pool.release(buffer)

    threads = [threading.Thread(target=save_repeatedly) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(peak) == 300 and max(peak) <= 2
    assert pool.allocations <= 2 and pool.in_use == 0


def test_a_larger_save_replaces_a_buffer_without_exceeding_the_pool() -> None:
    pool = StagingPool(max_buffers=1)
    small = pool.acquire(10)
    pool.release(small)

    big = pool.acquire(5 << 20)

    assert big.numel() >= 5 << 20 and pool.allocations == 2 and pool.in_use == 1
    with pytest.raises(StagingBusy):
        pool.acquire(1, timeout_s=0)


def test_reserve_prepares_a_buffer_the_first_save_reuses() -> None:
    pool = StagingPool(max_buffers=1)
    pool.reserve(1 << 20)

    snapshot({"t": torch.ones(1000)}, {}, pool).release()

    assert pool.allocations == 1


def test_releasing_a_foreign_buffer_is_refused() -> None:
    pool = StagingPool(1)
    with pytest.raises(InvalidArgument):
        pool.release(torch.empty(10, dtype=torch.uint8))
    with pytest.raises(InvalidArgument, match="max_buffers"):
        StagingPool(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; runs on GPU CI")
def test_cuda_tensors_are_copied_into_pinned_memory_and_load_on_cpu() -> None:
    model = torch.nn.Linear(256, 256).cuda()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 256, device="cuda")).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "opt": opt.state_dict()}
    expected = {"model": {k: v.cpu() for k, v in model.state_dict().items()}}

    pool = StagingPool(1)
    snap: Snapshot = snapshot(state, {}, pool)
    with torch.no_grad():
        model.weight.add_(1.0)  # after the snapshot: must not show in it
    data = bytearray(b"".join(snap.buffers()))
    assert pool.in_use == 1
    snap.release()

    loaded, _ = decode(data)
    assert_same(loaded["model"], expected["model"])
    assert decode(data, map_location="cuda")[0]["model"]["weight"].is_cuda
    buffer = pool.acquire(1, pinned=True)
    assert buffer.is_pinned() and pool.allocations == 1
