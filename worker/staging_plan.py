"""The layout of the last state saved, kept so that the next save of the same shapes skips it.

A save walks its state (``encode_tree``), which yields every tensor's dtype
and shape: all the layout depends on. When they equal the last save's, the
snapshot reuses that save's :class:`Plan` — offsets, the gaps to zero, the
header's ``"tensors"`` entry already encoded — instead of building a
``TensorSpec`` and a JSON object per tensor again: the per-tensor Python left
on the training thread is the walk and one tuple per contiguous tensor.

What must not live here: the byte format (``dtr.worker.checkpoint_format``),
copies and staging memory (``dtr.worker.snapshot``, ``dtr.worker.staging``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dtr.worker.checkpoint_format import (
    EncodedTree,
    JsonValue,
    TensorSpec,
    encode_header_with,
    encode_specs,
    plan_layout,
)

__all__ = ["NOT_RAW", "RAW_COMPLEX", "RAW_REAL", "LayoutCache", "Plan"]

Signature = tuple[tuple[torch.dtype, torch.Size], ...]
NOT_RAW, RAW_REAL, RAW_COMPLEX = 0, 1, 2  # Plan.raw


def _raw_kind(dtype: torch.dtype) -> int:
    if dtype is torch.bool:
        return NOT_RAW
    return RAW_COMPLEX if dtype.is_complex else RAW_REAL


@dataclass(frozen=True, eq=False)
class Plan:
    """Where each tensor of a state of one signature goes, and what lies between them.

    ``offsets``/``sizes`` are ``specs``' fields as plain tuples (the copy loop
    reads them per tensor); ``gaps`` are the ``(offset, nbytes)`` of the
    alignment padding, which must hold zeros. ``raw``: per tensor, whether its
    bytes may be copied as they are (``RAW_REAL``, ``RAW_COMPLEX``: only a
    complex tensor can be a conjugate view) or must go through ``copy_``
    (``NOT_RAW``: a bool's bytes may be other than 0 and 1,
    ``uint8.view(torch.bool)``, and the format stores 0 or 1).
    """

    signature: Signature
    specs: tuple[TensorSpec, ...]
    data_nbytes: int
    specs_json: str
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    gaps: tuple[tuple[int, int], ...]
    raw: tuple[int, ...]

    @classmethod
    def of(cls, encoded: EncodedTree) -> Plan:
        layout = plan_layout(encoded.tensors)
        gaps: list[tuple[int, int]] = []
        end = 0
        for spec in layout.specs:
            if spec.offset > end:
                gaps.append((end, spec.offset - end))
            end = spec.offset + spec.nbytes
        return cls(
            encoded.signature,
            layout.specs,
            layout.data_nbytes,
            encode_specs(layout.specs),
            tuple(spec.offset for spec in layout.specs),
            tuple(spec.nbytes for spec in layout.specs),
            tuple(gaps),
            tuple(_raw_kind(spec.dtype) for spec in layout.specs),
        )

    def prefix(self, tree: JsonValue, meta: Mapping[str, JsonValue]) -> bytes:
        """The part's bytes before the data section (``encode_header``'s, exactly)."""
        return encode_header_with(tree, self.specs_json, meta)


class LayoutCache:
    """The plan of the last signature seen; thread-safe (``prepare`` may fill it first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Plan | None = None
        self.plans_made = 0  # grows only when the tensors' dtypes or shapes change

    def plan(self, encoded: EncodedTree) -> Plan:
        with self._lock:
            last = self._last
        if last is not None and last.signature == encoded.signature:
            return last
        plan = Plan.of(encoded)
        with self._lock:
            self._last = plan
            self.plans_made += 1
        return plan
