"""Validation of every Coordinator request, before anything reads state or writes etcd.

DESIGN §8: every RPC validates its input and answers INVALID_ARGUMENT with a
message that names the field, and no malformed request can crash a replica or
write state. The servicer calls one function here per request type, first
thing; each returns a small frozen dataclass of cleaned, plain-Python values
(no protobuf types), so the leader's state machine never sees a raw message
and never re-checks a field. Messages start with the field path relative to
the request (``"beat.worker_id: ..."``, ``"part.checksum.hex_digest: ..."``)
and never echo more than a short prefix of a huge value.

What lives here: the limits, as named constants, and pure functions. What must
not: I/O, clocks, or decisions that depend on state (whether a worker exists,
whether a dataset's parameters conflict); those belong to the state machine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from google.protobuf.message import Message

from dtr.errors import InvalidArgument, WrongJob
from dtr.keys import validate_name, validate_step
from dtr.proto import coordinator_pb2 as pb
from dtr.ring import DEFAULT_VNODES

# --- limits ----------------------------------------------------------------------

#: Ring weight, in (0, MAX_CAPACITY]; the ring still bounds the sum (dtr.ring.MAX_RING_SIZE).
MAX_CAPACITY = 1_000_000.0
MIN_NUM_SHARDS = 1
#: Shard positions are held in memory on every replica: bounded so one call cannot exhaust it.
MAX_NUM_SHARDS = 10_000_000
MIN_VNODES = 1
MAX_VNODES = 10_000
MIN_LOAD_FACTOR = 1.0
MAX_LOAD_FACTOR = 100.0
#: Epochs are exclusive of this bound: they must fit a signed 64-bit integer everywhere.
EPOCH_LIMIT = 2**63
#: A barrier poll longer than an hour is a hung job, not a slow one.
MAX_BARRIER_TIMEOUT_S = 3600.0
MAX_URI_CHARS = 4096
_JOB_LIFE = re.compile(r"[0-9a-f]{16}/[0-9a-f]{32}")
MIN_FORMAT_VERSION = 1
#: Lowercase hex digits of a digest, per algorithm (the cleaned name is the key).
HEX_DIGEST_CHARS = {"sha256": 64, "crc32c": 8, "blake2b": 128}
# Debugging fields of RegisterWorker end up in the membership record in etcd:
# bounded so one worker cannot bloat every snapshot of the cluster.
MAX_HOST_CHARS = 255
MAX_CLIENT_VERSION_CHARS = 64
#: Ranks in one torchrun round (WORLD_SIZE): far above any job, small enough to hold.
MAX_ROUND_WORLD_SIZE = 1_000_000
MAX_LABELS = 32
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 256
#: Deregister's free-text detail is truncated to this, never refused: a goodbye must not fail.
MAX_DETAIL_CHARS = 4096

_SHOWN_CHARS = 60
_LOWER_HEX = re.compile(r"[0-9a-f]*")
ALGORITHMS = {
    pb.CHECKSUM_ALGORITHM_SHA256: "sha256",
    pb.CHECKSUM_ALGORITHM_CRC32C: "crc32c",
    pb.CHECKSUM_ALGORITHM_BLAKE2B: "blake2b",
}
_REASONS = {
    pb.DEREGISTER_REASON_FINISHED: "finished",
    pb.DEREGISTER_REASON_SHUTDOWN: "shutdown",
    pb.DEREGISTER_REASON_PREEMPTED: "preempted",
    pb.DEREGISTER_REASON_ERROR: "error",
}

# --- cleaned values --------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRegistration:
    """A RegisterWorker request; ``worker_id`` None asks the coordinator to assign one."""

    worker_id: str | None
    capacity: float
    host: str
    pid: int
    labels: tuple[tuple[str, str], ...]  # sorted by key, so equal requests compare equal
    client_version: str
    #: (rdzv_id, life, round, world_size, rank) of a torchrun rank (coordinator/rounds.py).
    rendezvous_round: tuple[str, int, int, int, int] | None = None


@dataclass(frozen=True)
class CheckpointProgressReport:
    """What a beat says about the worker's checkpoints (all zero/None when not sent)."""

    saves_in_flight: int
    commits_queued: int
    last_durable_step: int | None
    last_committed_step: int | None


@dataclass(frozen=True)
class Beat:
    """One WorkerBeat, from Heartbeat or HeartbeatStream."""

    worker_id: str
    incarnation: int
    sequence: int
    step: int
    samples_per_s: float
    checkpoint: CheckpointProgressReport


@dataclass(frozen=True)
class Deregistration:
    """A Deregister request; ``incarnation`` None removes whichever is current."""

    worker_id: str
    incarnation: int | None
    reason: str  # finished, shutdown, preempted, error or unspecified (also for unknown values)
    detail: str


@dataclass(frozen=True)
class DatasetSpec:
    """A RegisterDataset request with the coordinator's defaults filled in."""

    name: str
    num_shards: int
    vnodes: int
    load_factor: float | None


@dataclass(frozen=True)
class ShardsQuery:
    dataset: str
    epoch: int
    worker_id: str


@dataclass(frozen=True)
class BarrierArrival:
    """A Barrier request; ``timeout_s`` None means the server's default (wire value 0)."""

    name: str
    worker_id: str
    generation: int
    timeout_s: float | None
    incarnation: int = 0  # 0: not given (an older client)


@dataclass(frozen=True)
class CheckpointPartSpec:
    """A CheckpointPart; ``algorithm`` is a key of HEX_DIGEST_CHARS."""

    uri: str
    size_bytes: int
    algorithm: str
    hex_digest: str
    format_version: int
    manifest_uri: str | None
    replicated: bool


@dataclass(frozen=True)
class CheckpointCommit:
    step: int
    worker_id: str
    generation: int
    part: CheckpointPartSpec
    incarnation: int = 0  # 0: not given (an older client)
    job_life: str = ""  # "": not given (an older client)


@dataclass(frozen=True)
class LatestCheckpointQuery:
    """``before_step`` None asks for the latest complete step."""

    before_step: int | None


# --- request validators ----------------------------------------------------------


def job_of(header: pb.RequestHeader, served_job: str) -> None:
    """Refuse a request for another job, so a misdirected worker fails instead of joining."""
    if header.job and header.job != served_job:
        raise WrongJob(
            f"header.job: this replica serves job {served_job!r}; got {_shown(header.job)}"
            " (check the worker's job and coordinator addresses)"
        )


def register_worker(req: pb.RegisterWorkerRequest) -> WorkerRegistration:
    """Clean a RegisterWorker; an empty worker_id is allowed (the coordinator assigns one)."""
    worker_id = _name("worker_id", req.worker_id) if req.worker_id else None
    return WorkerRegistration(
        worker_id=worker_id,
        capacity=_finite("capacity", req.capacity, 0.0, MAX_CAPACITY, low_open=True),
        host=_bounded_text("host", req.host, MAX_HOST_CHARS),
        pid=req.pid,
        labels=_labels(req),
        client_version=_bounded_text(
            "client_version", req.client_version, MAX_CLIENT_VERSION_CHARS
        ),
        rendezvous_round=_rendezvous_round(req) if req.HasField("rendezvous_round") else None,
    )


def _rendezvous_round(req: pb.RegisterWorkerRequest) -> tuple[str, int, int, int, int]:
    if not req.worker_id:
        raise InvalidArgument("worker_id: a rank of a rendezvous round must name itself")
    msg = req.rendezvous_round
    rdzv_id = _name("rendezvous_round.rdzv_id", msg.rdzv_id)
    world = _int_in("rendezvous_round.world_size", msg.world_size, 1, MAX_ROUND_WORLD_SIZE)
    rank = _int_in("rendezvous_round.rank", msg.rank, 0, world - 1)
    return rdzv_id, msg.life, msg.round, world, rank


def heartbeat(
    msg: pb.HeartbeatRequest | pb.HeartbeatStreamRequest | pb.WorkerBeat,
) -> Beat:
    """Clean the beat of a Heartbeat or HeartbeatStream request (or a bare WorkerBeat)."""
    if isinstance(msg, pb.WorkerBeat):
        beat = msg
    else:
        _require(msg, "beat", "beat")
        beat = msg.beat
    return Beat(
        worker_id=_name("beat.worker_id", beat.worker_id),
        incarnation=beat.incarnation,
        sequence=beat.sequence,
        step=_step("beat.step", beat.step),
        samples_per_s=_finite("beat.samples_per_s", beat.samples_per_s, 0.0, math.inf),
        checkpoint=_progress(beat) if beat.HasField("checkpoint") else _NO_PROGRESS,
    )


# Most beats carry no checkpoint report; the hot path then builds nothing.
_NO_PROGRESS = CheckpointProgressReport(0, 0, None, None)


def _progress(beat: pb.WorkerBeat) -> CheckpointProgressReport:
    progress = beat.checkpoint
    return CheckpointProgressReport(
        saves_in_flight=progress.saves_in_flight,
        commits_queued=progress.commits_queued,
        last_durable_step=_optional_step(progress, "last_durable_step", "beat.checkpoint"),
        last_committed_step=_optional_step(progress, "last_committed_step", "beat.checkpoint"),
    )


def deregister(req: pb.DeregisterRequest) -> Deregistration:
    """Clean a Deregister; unknown reasons read as unspecified (they only reach logs)."""
    return Deregistration(
        worker_id=_name("worker_id", req.worker_id),
        incarnation=req.incarnation or None,
        reason=_REASONS.get(req.reason, "unspecified"),
        detail=req.detail[:MAX_DETAIL_CHARS],
    )


def register_dataset(req: pb.RegisterDatasetRequest) -> DatasetSpec:
    """Clean a RegisterDataset, filling in the defaults the dataset is stored with."""
    name = _name("name", req.name)
    num_shards = _int_in("num_shards", req.num_shards, MIN_NUM_SHARDS, MAX_NUM_SHARDS)
    vnodes = DEFAULT_VNODES
    if req.HasField("vnodes"):
        vnodes = _int_in("vnodes", req.vnodes, MIN_VNODES, MAX_VNODES)
    load_factor = None
    if req.HasField("load_factor"):
        load_factor = _finite("load_factor", req.load_factor, MIN_LOAD_FACTOR, MAX_LOAD_FACTOR)
    return DatasetSpec(name, num_shards, vnodes, load_factor)


def get_shards(req: pb.GetShardsRequest) -> ShardsQuery:
    """Clean a GetShards; epochs are bounded so they survive any int64 on the way."""
    return ShardsQuery(
        dataset=_name("dataset", req.dataset),
        epoch=_int_in("epoch", req.epoch, 0, EPOCH_LIMIT - 1),
        worker_id=_name("worker_id", req.worker_id),
    )


def barrier(req: pb.BarrierRequest) -> BarrierArrival:
    """Clean a Barrier; timeout_s 0 is the wire's "server default", any other must be sane."""
    name = _name("name", req.name)
    worker_id = _name("worker_id", req.worker_id)
    timeout_s = None
    if req.timeout_s != 0.0:
        timeout_s = _finite("timeout_s", req.timeout_s, 0.0, MAX_BARRIER_TIMEOUT_S, low_open=True)
    return BarrierArrival(name, worker_id, req.generation, timeout_s, req.incarnation)


def commit_checkpoint(req: pb.CommitCheckpointRequest) -> CheckpointCommit:
    """Clean a CommitCheckpoint: a recorded part must be one a loader can find and verify."""
    return CheckpointCommit(
        step=_step("step", req.step),
        worker_id=_name("worker_id", req.worker_id),
        generation=req.generation,
        part=_part(req),
        incarnation=req.incarnation,
        job_life=_job_life(req.job_life),
    )


def get_latest_checkpoint(req: pb.GetLatestCheckpointRequest) -> LatestCheckpointQuery:
    """Clean a GetLatestCheckpoint, keeping "absent" apart from step 0."""
    return LatestCheckpointQuery(before_step=_optional_step(req, "before_step", ""))


# --- field checks ----------------------------------------------------------------


def _part(req: pb.CommitCheckpointRequest) -> CheckpointPartSpec:
    """A part must be loadable and verifiable later: where, how big, and which digest."""
    _require(req, "part", "part")
    part = req.part
    uri = _uri("part.uri", part.uri)
    if part.size_bytes == 0:
        raise _invalid("part.size_bytes", "must be > 0", part.size_bytes)
    algorithm, hex_digest = _checksum(part)
    if part.format_version < MIN_FORMAT_VERSION:
        rule = f"must be >= {MIN_FORMAT_VERSION}"
        raise _invalid("part.format_version", rule, part.format_version)
    manifest_uri = _uri("part.manifest_uri", part.manifest_uri) if part.manifest_uri else None
    return CheckpointPartSpec(
        uri=uri,
        size_bytes=part.size_bytes,
        algorithm=algorithm,
        hex_digest=hex_digest,
        format_version=part.format_version,
        manifest_uri=manifest_uri,
        replicated=part.replicated,
    )


def _checksum(part: pb.CheckpointPart) -> tuple[str, str]:
    """(algorithm name, digest): a loader can only verify a digest whose algorithm it knows."""
    _require(part, "checksum", "part.checksum")
    checksum = part.checksum
    algorithm = ALGORITHMS.get(checksum.algorithm)
    if algorithm is None:
        rule = f"must be one of {', '.join(sorted(HEX_DIGEST_CHARS))}"
        raise _invalid("part.checksum.algorithm", rule, checksum.algorithm)
    digits = HEX_DIGEST_CHARS[algorithm]
    hex_digest = checksum.hex_digest
    if len(hex_digest) != digits or not _LOWER_HEX.fullmatch(hex_digest):
        rule = f"must be {digits} lowercase hex digits for {algorithm}"
        raise _invalid("part.checksum.hex_digest", rule, hex_digest)
    return algorithm, hex_digest


def _labels(req: pb.RegisterWorkerRequest) -> tuple[tuple[str, str], ...]:
    if len(req.labels) > MAX_LABELS:
        raise _invalid("labels", f"must have at most {MAX_LABELS} entries", len(req.labels))
    for key, value in req.labels.items():
        if not key or len(key) > MAX_LABEL_KEY_CHARS:
            raise _invalid("labels", f"keys must be 1-{MAX_LABEL_KEY_CHARS} characters", key)
        _bounded_text(f"labels[{key!r}]", value, MAX_LABEL_VALUE_CHARS)
    return tuple(sorted(req.labels.items()))


def _require(msg: Message, field: str, path: str) -> None:
    """Proto3 reads an unset sub-message as all defaults; refuse it rather than guess."""
    if not msg.HasField(field):
        raise InvalidArgument(f"{path}: is required")


def _name(path: str, value: str) -> str:
    """An id or name that becomes an etcd key segment (dtr.keys decides the rule)."""
    try:
        return validate_name(path, value)
    except InvalidArgument as err:
        raise _invalid(path, _rule_of(err, path), value) from None


def _step(path: str, value: int) -> int:
    try:
        return validate_step(value)
    except InvalidArgument as err:
        raise _invalid(path, _rule_of(err, "step"), value) from None


def _optional_step(msg: Message, field: str, parent: str) -> int | None:
    if not msg.HasField(field):
        return None
    path = f"{parent}.{field}" if parent else field
    value: int = getattr(msg, field)
    return _step(path, value)


def _int_in(path: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise _invalid(path, f"must be an integer in [{low}, {high}]", value)
    return value


def _finite(path: str, value: float, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite float in the range; NaN fails every comparison, so test it first."""
    above_low = value > low if low_open else value >= low
    if not math.isfinite(value) or not above_low or value > high:
        opening = "(" if low_open else "["
        upper = f"{_num(high)}]" if math.isfinite(high) else "inf)"
        raise _invalid(path, f"must be a finite number in {opening}{_num(low)}, {upper}", value)
    return value


def _job_life(value: str) -> str:
    """A job life as RegisterWorker hands it out (``<16 hex>/<32 hex>``), or empty."""
    if value and not _JOB_LIFE.fullmatch(value):
        raise _invalid(
            "job_life", "must be '<etcd cluster id>/<job uid>' as RegisterWorker gave", value
        )
    return value


def _uri(path: str, value: str) -> str:
    if not value or len(value) > MAX_URI_CHARS:
        raise _invalid(path, f"must be 1-{MAX_URI_CHARS} characters", value)
    return value


def _bounded_text(path: str, value: str, max_chars: int) -> str:
    if len(value) > max_chars:
        raise _invalid(path, f"must be at most {max_chars} characters", value)
    return value


def _invalid(path: str, rule: str, value: object) -> InvalidArgument:
    return InvalidArgument(f"{path}: {rule}; got {_shown(value)}")


def _rule_of(err: InvalidArgument, field: str) -> str:
    """The rule of a dtr.keys message, without its field name and echoed value."""
    return str(err).removeprefix(f"{field} ").partition("; got ")[0]


def _shown(value: object) -> str:
    """repr() of a value, cut short: a 10 kB id must not become a 10 kB log line."""
    text = repr(value)
    if len(text) <= _SHOWN_CHARS:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:_SHOWN_CHARS]}...{size}"


def _num(value: float) -> str:
    """1000000 rather than 1e+06, 0.5 as 0.5: the bounds read like the constants."""
    return str(int(value)) if value.is_integer() else repr(value)
