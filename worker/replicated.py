"""Replicated checkpoints: one member writes a step's bytes, every member commits them.

Data-parallel replicas hold identical state, so writing it N times wastes N-1
writes. With ``CheckpointManager(..., replicated=True, writer=rank == 0)`` the
writer stores the step once under ``step-<S>/replicated.dtr`` and then a small
manifest next to it (size and checksum, written atomically after the bytes,
so a manifest always describes a complete object). The other members do not
snapshot at all: they wait for the manifest and commit the same part, so the
step completes exactly as a sharded one does (every member committed) and any
member can load it. Exactly one member per job must be the writer.
"""

from __future__ import annotations

import json
import threading
import time

from dtr.errors import CheckpointError, NotFound
from dtr.keys import validate_step
from dtr.storage import Checksum, Storage, StoredObject

#: How often a non-writer looks for the writer's manifest.
POLL_S = 0.2


def replicated_name(step: int) -> str:
    return f"step-{validate_step(step):020d}/replicated.dtr"


def manifest_name(step: int) -> str:
    return f"step-{validate_step(step):020d}/replicated.json"


def write_manifest(storage: Storage, step: int, stored: StoredObject) -> None:
    """Describe the step's object, after it is durable (the writer's last act for a step)."""
    manifest = {
        "uri": stored.uri,
        "size_bytes": stored.size_bytes,
        "algorithm": stored.checksum.algorithm,
        "hex_digest": stored.checksum.hex_digest,
    }
    storage.write(manifest_name(step), [json.dumps(manifest).encode()])


def await_manifest(
    storage: Storage, step: int, timeout_s: float, stop: threading.Event
) -> StoredObject:
    """The object the writer stored for ``step``, once its manifest appears."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            raw = json.loads(bytes(storage.read(manifest_name(step))))
            checksum = Checksum.of(str(raw["algorithm"]), str(raw["hex_digest"]))
            return StoredObject(str(raw["uri"]), int(raw["size_bytes"]), checksum)
        except NotFound:
            pass
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"the manifest of step {step} is unreadable: {err}") from err
        if time.monotonic() >= deadline or stop.wait(POLL_S):
            raise CheckpointError(
                f"step {step}: the writer's part did not appear within {timeout_s:g} s "
                f"({storage.uri_of(manifest_name(step))}); is exactly one member the writer?"
            )
