"""Replicated checkpoints: one member writes a step's bytes, every member commits them.

Data-parallel replicas hold identical state, so writing it N times wastes N-1
writes. With ``CheckpointManager(..., replicated=True, writer=rank == 0)`` the
writer stores the step once under a name unique to that save,
``step-<S>/replicated.<incarnation>-<random>.dtr``, and then a small manifest
next to it, ``…/replicated.<incarnation>-<random>.json`` (uri, size,
checksum, the job life; written atomically after the bytes, so a manifest
always describes a complete object). The other members do not snapshot at
all: they wait for a manifest and commit the same part, so the step
completes exactly as a sharded one does (every member committed) and any
member can load it. Exactly one member per job must be the writer.

Objects are immutable (DESIGN §5 invariant 4): no name is written twice, so
a restarted writer saving the same step again writes a *second* object and
manifest beside the first and never changes what a member already
committed. Members adopt the first manifest by name of their own job life;
names sort by the writer's incarnation (zero-padded), so every member of a
step picks the same one, the earliest incarnation's, however late it looks.
"""

from __future__ import annotations

import json
import re
import threading
import time

from dtr.errors import CheckpointError, NotFound
from dtr.keys import validate_step
from dtr.storage import Checksum, Storage, StoredObject

#: How often a non-writer looks for the writer's manifest.
POLL_S = 0.2
#: ``replicated.<incarnation>-<random>.(dtr|json)``, and the fixed names earlier versions used.
_OWN = re.compile(r"replicated(?:\.\d{10}-[0-9a-f]{16})?\.(?:dtr|json)")


def step_prefix(step: int) -> str:
    """The directory-like prefix of every object of ``step`` (steps sort by name)."""
    return f"step-{validate_step(step):020d}/"


def save_token(incarnation: int, nonce: str) -> str:
    """What makes one save's names unique: the writer's incarnation and a random nonce."""
    return f"{incarnation:010d}-{nonce}"


def replicated_name(step: int, token: str) -> str:
    return f"{step_prefix(step)}replicated.{token}.dtr"


def manifest_name(step: int, token: str) -> str:
    return f"{step_prefix(step)}replicated.{token}.json"


def is_replicated_object(name: str) -> bool:
    """Whether ``name`` is a replicated part or manifest (of any writer incarnation)."""
    step_dir, _, base = name.rpartition("/")
    return step_dir.startswith("step-") and _OWN.fullmatch(base) is not None


def write_manifest(
    storage: Storage, step: int, token: str, stored: StoredObject, job_life: str
) -> None:
    """Describe the step's object, after it is durable (the writer's last act for a step)."""
    manifest = {
        "uri": stored.uri,
        "size_bytes": stored.size_bytes,
        "algorithm": stored.checksum.algorithm,
        "hex_digest": stored.checksum.hex_digest,
        "job_life": job_life,
    }
    storage.write(manifest_name(step, token), [json.dumps(manifest).encode()])


def find_manifest(storage: Storage, step: int, job_life: str) -> StoredObject | None:
    """The object of the first manifest of ``step`` made in ``job_life``, if any yet.

    A manifest of another job life (the same checkpoint URI reused by a new
    life of the job) is skipped: its bytes were never this life's.
    """
    for name in storage.list(step_prefix(step) + "replicated."):
        if not name.endswith(".json") or not is_replicated_object(name):
            continue
        try:
            data = storage.read(name)
        except NotFound:
            continue  # deleted since the listing (retention of an old step)
        try:
            raw = json.loads(bytes(data))
            if str(raw.get("job_life", "")) != job_life:
                continue
            checksum = Checksum.of(str(raw["algorithm"]), str(raw["hex_digest"]))
            return StoredObject(str(raw["uri"]), int(raw["size_bytes"]), checksum)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"the manifest {name} of step {step} is unreadable: {err}"
            ) from err
    return None


def await_manifest(
    storage: Storage, step: int, job_life: str, timeout_s: float, stop: threading.Event
) -> StoredObject:
    """The object the writer stored for ``step``, once its manifest appears."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = find_manifest(storage, step, job_life)
        if found is not None:
            return found
        if time.monotonic() >= deadline or stop.wait(POLL_S):
            raise CheckpointError(
                f"step {step}: the writer's part did not appear within {timeout_s:g} s "
                f"({storage.root_uri}/{step_prefix(step)}replicated.*.json); is exactly one "
                "member the writer?"
            )
