"""dtr.worker — the library a training script imports (installed as ``dtr.worker``).

The gRPC client with its retry policy, the shard sampler, the checkpoint
manager and its on-disk commit queue live here. It reaches cluster state
through the coordinators' gRPC API only: never ``dtr.coordinator``,
``dtr.chaos`` or an etcd client (tests/unit/test_import_boundaries.py).

``Worker`` needs no torch; the sampler and checkpoint classes import torch
when first used, so ``from dtr.worker import Worker`` works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .assignment import ShardAssignment
from .worker import Worker

if TYPE_CHECKING:
    from .checkpoint import CheckpointManager, SaveResult
    from .sampler import ShardIterableDataset, ShardSampler

__all__ = [
    "CheckpointManager",
    "SaveResult",
    "ShardAssignment",
    "ShardIterableDataset",
    "ShardSampler",
    "Worker",
]
_NEED_TORCH = {
    "ShardSampler": "sampler",
    "ShardIterableDataset": "sampler",
    "CheckpointManager": "checkpoint",
    "SaveResult": "checkpoint",
}


def __getattr__(name: str) -> Any:
    """Import the torch-using parts on first use."""
    module = _NEED_TORCH.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
