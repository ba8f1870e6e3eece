"""A simulated worker's checkpoint part: tiny, but real bytes in the real format and place.

A simulated worker has no model, so its part holds only ``{"step", "worker_id"}``
— yet it is a valid part of checkpoint format version 1
(``dtr.worker.checkpoint_format``: magic, header length, JSON header,
padding, no tensors), written under the name ``CheckpointManager`` uses, through
``dtr.storage`` with its checksum. So the harness verifies it like any part,
and a real worker that loads it (a mixed run) decodes it instead of failing.
The layout is restated here because the format module imports torch, which a
process of hundreds of simulated workers must not pay for; the integration
test decodes a simulated part with the real decoder and compares the names.

The commit record is the real ``CommitRecord`` built the way
``CheckpointManager._queue_commit`` builds it; ``worker/checkpoint_rpc.py``
turns it into the wire request for both kinds of worker.
"""

from __future__ import annotations

import json
import struct

from dtr.errors import CheckpointError, InvalidArgument, NotFound
from dtr.keys import validate_step
from dtr.storage import Checksum, Storage, StoredObject
from dtr.worker.checkpoint_rpc import LatestCheckpoint, StoredPart
from dtr.worker.commit_queue import CommitRecord

#: ``dtr.worker.checkpoint_format.FORMAT_VERSION`` (see the module docstring).
FORMAT_VERSION = 1
_MAGIC = b"DTRCKPT" + bytes([FORMAT_VERSION])
_FIXED = struct.Struct("<8sQ")
_ALIGNMENT = 64


def part_name(step: int, worker_id: str) -> str:
    """``dtr.worker.checkpoint.part_name``: where a worker's part of a step lives."""
    return f"step-{validate_step(step):020d}/{worker_id}.dtr"


def encode_part(step: int, worker_id: str, generation: int) -> bytes:
    """A format-1 part whose state is ``{"step": step, "worker_id": worker_id}``."""
    header = {
        "format_version": FORMAT_VERSION,
        "tree": {"dict": [["step", step], ["worker_id", worker_id]]},
        "tensors": [],
        "meta": {"step": step, "worker_id": worker_id, "generation": generation},
    }
    body = json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    prefix = _FIXED.pack(_MAGIC, len(body)) + body
    padded = -(-len(prefix) // _ALIGNMENT) * _ALIGNMENT
    return prefix + bytes(padded - len(prefix))


def write_part(storage: Storage, step: int, worker_id: str, generation: int) -> StoredObject:
    """Write one part durably (blocking: run it on a thread); ``CheckpointError`` on failure."""
    return storage.write(part_name(step, worker_id), [encode_part(step, worker_id, generation)])


def commit_record(
    stored: StoredObject, storage: Storage, *, job: str, step: int, worker_id: str, generation: int
) -> CommitRecord:
    """The record ``CheckpointManager`` would queue for this durable part."""
    return CommitRecord.for_part(
        stored,
        job=job,
        step=step,
        worker_id=worker_id,
        generation=generation,
        format_version=FORMAT_VERSION,
        replicated=storage.is_replicated,
    )


def part_to_load(latest: LatestCheckpoint, worker_id: str) -> StoredPart:
    """This worker's part of a complete step, else the first one (it joined later)."""
    own = latest.part_of(worker_id)
    if own is not None:
        return own
    if not latest.parts:
        raise CheckpointError(f"complete step {latest.step} lists no parts")
    return latest.parts[0]


def verify_part(storage: Storage, part: StoredPart) -> None:
    """Read and verify a part's bytes (blocking); ``CheckpointError`` when they do not verify."""
    try:
        expected = Checksum.of(part.algorithm, part.hex_digest)
        storage.read_verified(storage.name_of(part.uri), expected, part.size_bytes)
    except (NotFound, InvalidArgument) as err:
        raise CheckpointError(f"part {part.uri} cannot be read here: {err}") from err
