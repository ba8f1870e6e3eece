"""The checkpoint byte format, version 1: a small JSON header, then raw tensor bytes.

Layout of a part: ``b"DTRCKPT\\x01"`` (magic; the last byte is the version), the
header's length (u64, little-endian), the header (JSON, ASCII), zeros up to a
multiple of 64, then each tensor's bytes (C-contiguous, little-endian, each
64-byte aligned, nothing after the last). The header is ``{"format_version": 1,
"tree", "tensors": [{"dtype", "shape", "offset", "nbytes"}], "meta"}``; offsets
count from the data section, so the header never depends on its own length.
``tree`` keeps JSON primitives raw and tags every container (``{"list": []}``,
``{"tuple": []}``, ``{"dict": [[key, value]]}``, ``{"tensor": i}``,
``{"float": "nan"}``, ``{"bytes": b64}``, ``{"dtype": name}``, ``{"size": []}``),
so int keys stay ints and tuples stay tuples; a module ``state_dict()`` keeps
its ``_metadata`` (BatchNorm reads its version there) as ``"metadata"``.

Why not ``torch.save``: header plus raw bytes lets the writer hand memoryviews
over staging memory to ``os.writev`` (no big Python ``bytes``; the GIL is free
during I/O), and loading is safe by construction: JSON plus
``torch.frombuffer``, nothing unpickled or imported, every field checked before
use, so a corrupt or hostile part raises ``CheckpointError``, never returns
garbage. The integrity of tensor *contents* is the part checksum's job (DESIGN
§5.4). Not here: staging and copies (``dtr.worker.snapshot``), I/O (``dtr.storage``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch

from dtr.errors import CheckpointError, InvalidArgument

__all__ = [
    "ALIGNMENT",
    "DTYPES",
    "FORMAT_VERSION",
    "MAGIC",
    "EncodedTree",
    "Header",
    "JsonValue",
    "Layout",
    "TensorSpec",
    "decode",
    "decode_header",
    "encode_header",
    "encode_header_with",
    "encode_specs",
    "encode_tree",
    "plan_layout",
]

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None

FORMAT_VERSION = 1
_MAGIC_PREFIX = b"DTRCKPT"
MAGIC = _MAGIC_PREFIX + bytes([FORMAT_VERSION])
ALIGNMENT = 64
_FIXED = struct.Struct("<8sQ")  # magic, header length
MAX_DEPTH = 100  # nesting of the state; keeps encode and decode far from the recursion limit
MAX_INLINE_BYTES = 1 << 20  # a ``bytes`` value rides base64 in the header; bigger → a tensor

# Every dtype torch.frombuffer and copy_ handle on CPU (tests cover each one).
_DTYPE_NAMES = (
    "float64", "float32", "float16", "bfloat16", "complex128", "complex64", "complex32",
    "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
)  # fmt: skip
DTYPES: Mapping[str, torch.dtype] = {
    name: dtype
    for name in _DTYPE_NAMES
    if isinstance(dtype := getattr(torch, name, None), torch.dtype)
}
_NAME_OF: Mapping[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
_KEY_TYPES = (type(None), bool, int, float, str, bytes)
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _corrupt(where: str, problem: str) -> CheckpointError:
    return CheckpointError(f"corrupt checkpoint: {where}: {problem}")


# --- layout -------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor's bytes lie; ``offset`` counts from the start of the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    def to_json(self) -> dict[str, JsonValue]:
        shape: list[JsonValue] = list(self.shape)
        return {"dtype": _NAME_OF[self.dtype], "shape": shape, "offset": self.offset,
                "nbytes": self.nbytes}  # fmt: skip

    @classmethod
    def from_json(cls, node: object, where: str) -> TensorSpec:
        """A spec read from a header, refused unless every field is well-formed."""
        if not isinstance(node, dict) or set(node) != {"dtype", "shape", "offset", "nbytes"}:
            raise _corrupt(where, "expected an object with dtype, shape, offset and nbytes")
        dtype = DTYPES.get(node["dtype"]) if isinstance(node["dtype"], str) else None
        if dtype is None:
            raise _corrupt(where, f"unknown dtype {node['dtype']!r}")
        shape, offset, nbytes = node["shape"], node["offset"], node["nbytes"]
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _corrupt(where, f"shape {shape!r} is not a list of non-negative ints")
        if not _is_count(offset) or offset % ALIGNMENT or not _is_count(nbytes):
            raise _corrupt(where, f"offset {offset!r} / nbytes {nbytes!r} are not valid")
        if math.prod(shape) * dtype.itemsize != nbytes:
            raise _corrupt(where, f"{nbytes} bytes do not hold a {dtype} tensor of shape {shape}")
        return cls(dtype, tuple(shape), offset, nbytes)


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


@dataclass(frozen=True)
class Layout:
    """The data section: each tensor's place, and its length (the end of the last tensor)."""

    specs: tuple[TensorSpec, ...]
    data_nbytes: int


def plan_layout(tensors: Sequence[torch.Tensor]) -> Layout:
    """Places ``tensors`` one after another in the data section, each 64-byte aligned."""
    specs: list[TensorSpec] = []
    end = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        specs.append(TensorSpec(tensor.dtype, tuple(tensor.shape), _align(end), nbytes))
        end = specs[-1].offset + nbytes
    return Layout(tuple(specs), end)


# --- encoding the state tree ----------------------------------------------------------


@dataclass(frozen=True)
class EncodedTree:
    """A state as header JSON, and the tensors its ``{"tensor": i}`` nodes point at.

    ``signature`` is each tensor's ``(dtype, shape)``: all ``plan_layout``
    depends on, so a save whose signature equals the last one's reuses its
    layout and header entries (``dtr.worker.staging_plan``).
    """

    tree: JsonValue
    tensors: tuple[torch.Tensor, ...]
    signature: tuple[tuple[torch.dtype, torch.Size], ...] = ()


def encode_tree(state: object, *, root: str = "state") -> EncodedTree:
    """Walks ``state`` once: its JSON encoding and the tensors to copy, in layout order.

    Raises ``InvalidArgument`` naming the path (``state['opt'][0]``) of the first
    value that cannot be checkpointed. The same tensor view reached twice (tied
    weights) is stored once and decoded as one shared tensor, as ``torch.load``
    does. Subclasses of dict/list/tuple (``OrderedDict``, named tuples) are
    saved as the base type; a ``Parameter`` as a plain tensor.

    The walk runs on the training thread at every save, so it does as little
    per value as it can: a path is only spelt out for an error message, and
    tied tensors are found by address first.
    """
    encoder = _TreeEncoder()
    tree = encoder.encode(state, root, 0)
    return EncodedTree(tree, tuple(encoder.tensors), tuple(encoder.signature))


# Where a value lies: the root's name, or (the parent's path, the key or index), or
# (the parent's path, _METADATA). Spelt out (``_path_text``) only for an error message.
_Path: TypeAlias = "str | tuple[_Path, object]"
_METADATA = object()
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_PRIMITIVES = (bool, int, str)


def _path_text(path: _Path) -> str:
    parts: list[str] = []
    while not isinstance(path, str):
        path, key = path
        parts.append("._metadata" if key is _METADATA else f"[{key!r}]")
    return path + "".join(reversed(parts))


class _TreeEncoder:
    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self.signature: list[tuple[torch.dtype, torch.Size]] = []
        self._by_address: dict[int, list[int]] = {}  # data_ptr -> indices into tensors

    def encode(self, obj: object, path: _Path, depth: int) -> JsonValue:
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"{_path_text(path)}: nested deeper than {MAX_DEPTH} levels")
        kind = type(obj)
        if obj is None or kind in _PRIMITIVES:
            return obj  # type: ignore[return-value]  # exactly one of JsonValue's primitives
        if kind in _TENSOR_TYPES:
            return {"tensor": self._add_tensor(obj, path)}  # type: ignore[arg-type]
        if kind is float:
            return obj if math.isfinite(obj) else {"float": repr(obj)}  # type: ignore[arg-type,return-value]
        if isinstance(obj, dict):
            return self._encode_dict(obj, path, depth)
        if isinstance(obj, torch.Size):
            return {"size": list(obj)}
        if isinstance(obj, list | tuple):
            items = [self.encode(v, (path, i), depth + 1) for i, v in enumerate(obj)]
            return {"tuple" if isinstance(obj, tuple) else "list": items}
        if isinstance(obj, torch.Tensor):
            return {"tensor": self._add_tensor(obj, path)}  # refused: a subclass
        if kind is bytes and len(obj) <= MAX_INLINE_BYTES:  # type: ignore[arg-type]
            return {"bytes": base64.b64encode(obj).decode("ascii")}  # type: ignore[arg-type]
        if isinstance(obj, torch.dtype) and obj in _NAME_OF:
            return {"dtype": _NAME_OF[obj]}
        raise InvalidArgument(
            f"{_path_text(path)}: cannot checkpoint a {type(obj)!r}: only tensors, "
            f"dict/list/tuple, None, bool, int, float, str, bytes (up to {MAX_INLINE_BYTES} "
            "bytes), torch.dtype and torch.Size can be saved (convert numpy arrays with "
            "torch.from_numpy)"
        )

    def _encode_dict(self, obj: dict[Any, Any], path: _Path, depth: int) -> JsonValue:
        pairs: list[JsonValue] = []
        for key, value in obj.items():
            item_path = (path, key)
            if type(key) is str:  # the common case, and always a valid key
                encoded_key: JsonValue = key
            elif _is_key(key):
                encoded_key = self.encode(key, item_path, depth + 1)
            else:
                raise InvalidArgument(
                    f"{_path_text(item_path)}: cannot checkpoint a dict key of {type(key)!r}: "
                    "keys may be None, bool, int, float, str, bytes or tuples of those"
                )
            if type(value) in _TENSOR_TYPES and depth < MAX_DEPTH:  # skip a call per tensor
                pairs.append([encoded_key, {"tensor": self._add_tensor(value, item_path)}])
            else:
                pairs.append([encoded_key, self.encode(value, item_path, depth + 1)])
        encoded: dict[str, JsonValue] = {"dict": pairs}
        metadata = getattr(obj, "_metadata", None)
        if isinstance(metadata, dict):
            encoded["metadata"] = self.encode(metadata, (path, _METADATA), depth + 1)
        return encoded

    def _add_tensor(self, tensor: torch.Tensor, path: _Path) -> int:
        dtype = tensor.dtype
        if (
            type(tensor) not in _TENSOR_TYPES
            or tensor.layout is not torch.strided
            or dtype not in _NAME_OF
            or tensor.is_meta
        ):
            problem = _unsupported_tensor(tensor) or f"a tensor of dtype {dtype}"
            raise InvalidArgument(f"{_path_text(path)}: cannot checkpoint {problem}")
        try:
            shape = tensor.shape  # raises for a nested tensor (no sizes): free when it does not
        except RuntimeError:
            problem = _unsupported_tensor(tensor) or "a tensor without a shape"
            raise InvalidArgument(f"{_path_text(path)}: cannot checkpoint {problem}") from None
        address = tensor.data_ptr()
        same_address = self._by_address.get(address)
        if same_address is None:
            self._by_address[address] = [len(self.tensors)]
        else:  # tied, or another view of the same memory: the same only if every fact is
            key = _view_key(tensor)
            for index in same_address:
                if _view_key(self.tensors[index]) == key:
                    return index
            same_address.append(len(self.tensors))
        self.tensors.append(tensor)
        self.signature.append((dtype, shape))
        return len(self.tensors) - 1


def _view_key(tensor: torch.Tensor) -> tuple[object, ...]:
    """What makes two tensors at the same address the same value."""
    return (tensor.device, tensor.dtype, tuple(tensor.shape), tensor.stride(),
            tensor.is_conj(), tensor.is_neg())  # fmt: skip


def _is_key(key: object) -> bool:
    if type(key) is tuple:
        return all(_is_key(k) for k in key)
    if isinstance(key, bytes):
        return type(key) is bytes and len(key) <= MAX_INLINE_BYTES
    return type(key) in _KEY_TYPES


def _unsupported_tensor(tensor: torch.Tensor) -> str | None:
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        return f"a tensor subclass {type(tensor)!r}"
    if tensor.layout != torch.strided:
        return f"a tensor with layout {tensor.layout} (only dense tensors)"
    if tensor.is_nested:
        return "a nested tensor (save its components, torch.Tensor.unbind(), instead)"
    if tensor.is_quantized:
        return "a quantized tensor (dequantize it first)"
    if tensor.is_meta:
        return "a meta tensor (it has no data)"
    if tensor.dtype not in _NAME_OF:
        return f"a tensor of dtype {tensor.dtype}"
    return None


# --- the header -------------------------------------------------------------------------


def encode_header(
    tree: JsonValue, specs: Sequence[TensorSpec], meta: Mapping[str, JsonValue]
) -> bytes:
    """Everything before the data section: magic, header length, JSON header, padding.

    ``meta`` (step, worker, generation, …) must be a dict of str → JSON values.
    """
    return encode_header_with(tree, encode_specs(specs), meta)


def encode_specs(specs: Sequence[TensorSpec]) -> str:
    """The header's ``"tensors"`` entry as JSON text: worth keeping while the layout holds."""
    return _dumps([spec.to_json() for spec in specs])


def encode_header_with(tree: JsonValue, specs_json: str, meta: Mapping[str, JsonValue]) -> bytes:
    """``encode_header`` with the tensors' entry already encoded (``encode_specs``).

    The same bytes as encoding the whole header at once: JSON text composes,
    and the keys go in the order ``encode_header`` always wrote them.
    """
    meta_json = _dumps(_checked_meta(meta))
    body = (
        f'{{"format_version":{FORMAT_VERSION},"tree":{_dumps(tree)},'
        f'"tensors":{specs_json},"meta":{meta_json}}}'
    )
    prefix = _FIXED.pack(MAGIC, len(body)) + body.encode("ascii")
    return prefix + bytes(_align(len(prefix)) - len(prefix))


def _dumps(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except ValueError as err:  # e.g. an int past Python's int→str digit limit
        raise InvalidArgument(f"state cannot be encoded: {err}") from err


def _checked_meta(meta: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    if not isinstance(meta, Mapping):
        raise InvalidArgument(f"meta must be a dict of str to JSON values, not {type(meta)!r}")
    for key, value in meta.items():
        if type(key) is not str:
            raise InvalidArgument(f"meta[{key!r}]: keys must be str")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise InvalidArgument(f"meta[{key!r}]: not a plain JSON value: {err}") from err
    return dict(meta)


@dataclass(frozen=True)
class Header:
    """A validated header; ``data_offset`` is where the data section starts in the part."""

    tree: JsonValue
    tensors: tuple[TensorSpec, ...]
    meta: dict[str, JsonValue]
    data_offset: int


def decode_header(data: bytes | bytearray | memoryview) -> Header:
    """Reads and validates the header; every tensor must lie inside ``data``, in order.

    Cheap (no tensor is built): a reader can inspect ``meta`` before loading.
    """
    view = _byte_view(data)
    if len(view) < _FIXED.size:
        raise _corrupt("file", f"{len(view)} bytes is too short for a checkpoint")
    magic, header_nbytes = _FIXED.unpack_from(view)
    if magic[: len(_MAGIC_PREFIX)] != _MAGIC_PREFIX:
        raise CheckpointError(f"not a dtr checkpoint: magic is {magic!r}, expected {MAGIC!r}")
    if magic[-1] != FORMAT_VERSION:
        raise CheckpointError(f"format version {magic[-1]} not supported (reads {FORMAT_VERSION})")
    if _FIXED.size + header_nbytes > len(view):
        raise _corrupt("header", f"{header_nbytes} bytes run past the end of the data")
    raw = _parse_json(view[_FIXED.size : _FIXED.size + header_nbytes])
    if not isinstance(raw, dict) or set(raw) != {"format_version", "tree", "tensors", "meta"}:
        raise _corrupt("header", "expected an object with format_version, tree, tensors, meta")
    if raw["format_version"] != FORMAT_VERSION or type(raw["format_version"]) is not int:
        raise CheckpointError(f"format version {raw['format_version']!r} not supported")
    if not isinstance(raw["tensors"], list) or not isinstance(raw["meta"], dict):
        raise _corrupt("header", "tensors must be a list and meta an object")
    data_offset = _align(_FIXED.size + header_nbytes)
    specs = tuple(TensorSpec.from_json(n, f"tensors[{i}]") for i, n in enumerate(raw["tensors"]))
    _check_placement(specs, len(view) - data_offset)
    return Header(raw["tree"], specs, raw["meta"], data_offset)


def _check_placement(specs: Sequence[TensorSpec], data_nbytes: int) -> None:
    if data_nbytes < 0:
        raise _corrupt("file", "truncated inside the header padding")
    end = 0
    for i, spec in enumerate(specs):
        if spec.offset < end:
            raise _corrupt(f"tensors[{i}]", f"offset {spec.offset} overlaps the tensor before it")
        end = spec.offset + spec.nbytes
        if end > data_nbytes:
            raise _corrupt(f"tensors[{i}]", f"ends at {end}, past the data ({data_nbytes} bytes)")
    if end != data_nbytes:
        raise _corrupt("file", f"{data_nbytes - end} unexpected bytes after the last tensor")


def _parse_json(raw: memoryview) -> object:
    def refuse_constant(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ValueError("duplicate key in a JSON object")
        return obj

    try:
        text = bytes(raw).decode("utf-8")
        return json.loads(text, parse_constant=refuse_constant, object_pairs_hook=unique_object)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError too
        raise _corrupt("header", f"not valid JSON: {err}") from err


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    try:
        view = memoryview(data)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except TypeError as err:
        raise InvalidArgument(f"cannot decode from a {type(data)!r}: {err}") from err


# --- decoding ----------------------------------------------------------------------------


def decode(
    data: bytes | bytearray | memoryview, *, map_location: str | torch.device | None = None
) -> tuple[Any, dict[str, JsonValue]]:
    """The state and meta stored in one part; ``CheckpointError`` if anything is off.

    Tensors alias ``data`` (``torch.frombuffer``, zero-copy) when it is writable
    (a ``bytearray``, a writable ``memoryview``, an ``mmap`` opened with
    ``ACCESS_COPY``): writing to them writes to ``data``, and ``data`` stays
    alive while they do. Read-only input (``bytes``) is copied once first, so
    no tensor is ever backed by memory it must not write. Tensors are on CPU,
    or moved to ``map_location``.
    """
    if sys.byteorder != "little":
        raise CheckpointError("dtr checkpoints hold little-endian bytes; this host is big-endian")
    header = decode_header(data)
    view = _byte_view(data)
    if view.readonly:
        view = memoryview(bytearray(view))
    tensors = [
        _tensor_at(view, header.data_offset, spec, i) for i, spec in enumerate(header.tensors)
    ]
    if map_location is not None:
        tensors = [t.to(map_location) for t in tensors]
    return _TreeDecoder(tensors).decode(header.tree, "tree", 0), header.meta


def _tensor_at(view: memoryview, base: int, spec: TensorSpec, index: int) -> torch.Tensor:
    if spec.nbytes == 0:
        return torch.empty(spec.shape, dtype=spec.dtype)
    count = spec.nbytes // spec.dtype.itemsize
    flat = torch.frombuffer(view, dtype=spec.dtype, count=count, offset=base + spec.offset)
    if spec.dtype == torch.bool and bool(flat.view(torch.uint8).gt(1).any()):
        raise _corrupt(f"tensors[{index}]", "a bool tensor holds bytes other than 0 and 1")
    return flat.view(spec.shape)


class _TreeDecoder:
    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self._tensors = tensors

    def decode(self, node: object, path: str, depth: int, *, is_key: bool = False) -> Any:
        if depth > MAX_DEPTH:
            raise _corrupt(path, f"nested deeper than {MAX_DEPTH} levels")
        if node is None or type(node) in (bool, int, float, str):
            return node
        if not isinstance(node, dict) or not (len(node) == 1 or set(node) == {"dict", "metadata"}):
            raise _corrupt(path, f"expected a primitive or a tagged object, got {node!r:.80}")
        tag = "dict" if "dict" in node else next(iter(node))
        value = node[tag]
        if is_key and tag not in ("float", "tuple", "bytes"):
            raise _corrupt(path, f"a {tag!r} cannot be a dict key")
        if tag in ("list", "tuple") and isinstance(value, list):
            items = [
                self.decode(v, f"{path}[{i}]", depth + 1, is_key=is_key)
                for i, v in enumerate(value)
            ]
            return tuple(items) if tag == "tuple" else items
        if tag == "dict" and isinstance(value, list):
            return self._decode_dict(node, path, depth)
        return self._decode_leaf(tag, value, path)

    def _decode_dict(self, node: dict[str, Any], path: str, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for i, pair in enumerate(node["dict"]):
            if not isinstance(pair, list) or len(pair) != 2:
                raise _corrupt(f"{path}.dict[{i}]", "expected a [key, value] pair")
            key = self.decode(pair[0], f"{path}.dict[{i}]", depth + 1, is_key=True)
            result[key] = self.decode(pair[1], f"{path}[{key!r}]", depth + 1)
        if len(result) != len(node["dict"]):
            raise _corrupt(path, "duplicate dict keys")
        if "metadata" not in node:
            return result
        ordered: OrderedDict[Any, Any] = OrderedDict(result)
        ordered._metadata = self.decode(node["metadata"], f"{path}._metadata", depth + 1)  # type: ignore[attr-defined]
        return ordered

    def _decode_leaf(self, tag: str, value: object, path: str) -> object:
        if tag == "tensor" and type(value) is int and 0 <= value < len(self._tensors):
            return self._tensors[value]
        if tag == "float" and isinstance(value, str) and value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        if tag == "dtype" and isinstance(value, str) and value in DTYPES:
            return DTYPES[value]
        if tag == "size" and isinstance(value, list) and all(_is_count(d) for d in value):
            return torch.Size(value)
        if tag == "bytes" and isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error as err:
                raise _corrupt(path, f"bad base64: {err}") from err
        raise _corrupt(path, f"unknown or malformed tagged value {tag!r}: {value!r:.80}")
