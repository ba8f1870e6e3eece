"""The two checkpoint calls of the worker side: ``CommitCheckpoint`` and ``GetLatestCheckpoint``.

They translate between the wire messages and plain values (``CommitRecord``,
``CommitAck``, ``LatestCheckpoint``) so the checkpoint manager, the commit
flusher and the loader never see protobuf. Both go through the worker's
``CoordinatorClient``: leader following, the one retry policy, typed errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy

from .client import CoordinatorClient
from .commit_flusher import CommitAck
from .commit_queue import CommitOutcome, CommitRecord

_ALGORITHM = {
    "sha256": pb.CHECKSUM_ALGORITHM_SHA256,
    "crc32c": pb.CHECKSUM_ALGORITHM_CRC32C,
    "blake2b": pb.CHECKSUM_ALGORITHM_BLAKE2B,
}
_ALGORITHM_NAME = {value: name for name, value in _ALGORITHM.items()}
_OUTCOME = {
    pb.COMMIT_STATUS_ACCEPTED: CommitOutcome.ACCEPTED,
    pb.COMMIT_STATUS_DUPLICATE: CommitOutcome.DUPLICATE,
    pb.COMMIT_STATUS_SUPERSEDED: CommitOutcome.SUPERSEDED,
}


@dataclass(frozen=True)
class StoredPart:
    """Where one worker's part of a complete step is, and how to verify it."""

    worker_id: str
    uri: str
    size_bytes: int
    algorithm: str
    hex_digest: str
    format_version: int
    replicated: bool


@dataclass(frozen=True)
class LatestCheckpoint:
    """A complete step: every member of ``generation`` committed its part."""

    step: int
    generation: int
    parts: tuple[StoredPart, ...]

    def part_of(self, worker_id: str) -> StoredPart | None:
        return next((p for p in self.parts if p.worker_id == worker_id), None)


def commit_request(record: CommitRecord) -> pb.CommitCheckpointRequest:
    """The ``CommitCheckpoint`` request (without header) for one commit record.

    Public so every sender (this module, the chaos harness's simulated
    workers on ``grpc.aio``) puts the same fields on the wire.
    """
    part = pb.CheckpointPart(
        uri=record.uri,
        size_bytes=record.size_bytes,
        checksum=pb.Checksum(
            algorithm=_ALGORITHM.get(record.checksum_algorithm, pb.CHECKSUM_ALGORITHM_UNSPECIFIED),
            hex_digest=record.checksum_hex,
        ),
        format_version=record.format_version,
        manifest_uri=record.manifest_uri,
        replicated=record.replicated,
    )
    return pb.CommitCheckpointRequest(
        step=record.step,
        worker_id=record.worker_id,
        generation=record.generation,
        part=part,
        incarnation=record.incarnation,  # the incarnation that wrote the part
        job_life=record.job_life,  # the coordinator refuses another life's record
    )


def commit_ack(response: pb.CommitCheckpointResponse) -> CommitAck:
    """The plain value of a ``CommitCheckpoint`` answer."""
    latest = response.latest_complete_step if response.HasField("latest_complete_step") else None
    return CommitAck(_OUTCOME[response.status], response.step_complete, latest)


def send_commit(
    client: CoordinatorClient, record: CommitRecord, policy: RetryPolicy | None = None
) -> CommitAck:
    """Send one commit; raises ``CoordinatorUnavailable`` when no leader answered in time."""
    response = client.call(
        "CommitCheckpoint",
        lambda: commit_request(record),
        operation=f"commit checkpoint step {record.step}",
        mutating=True,
        policy=policy,
    )
    return commit_ack(response)


def fetch_latest(
    client: CoordinatorClient, before_step: int | None = None, policy: RetryPolicy | None = None
) -> LatestCheckpoint | None:
    """The latest complete step (strictly below ``before_step``), or None when there is none."""
    response = client.call(
        "GetLatestCheckpoint",
        lambda: pb.GetLatestCheckpointRequest(before_step=before_step),
        operation="get latest checkpoint",
        mutating=False,
        policy=policy,
    )
    return latest_of(response)


def latest_of(response: pb.GetLatestCheckpointResponse) -> LatestCheckpoint | None:
    """The plain value of a ``GetLatestCheckpoint`` answer (None: no complete step)."""
    if not response.has_checkpoint:
        return None
    parts = tuple(
        StoredPart(
            worker_id=p.worker_id,
            uri=p.part.uri,
            size_bytes=p.part.size_bytes,
            algorithm=_ALGORITHM_NAME.get(p.part.checksum.algorithm, "unknown"),
            hex_digest=p.part.checksum.hex_digest,
            format_version=p.part.format_version,
            replicated=p.part.replicated,
        )
        for p in response.parts
    )
    return LatestCheckpoint(response.step, response.generation, parts)
