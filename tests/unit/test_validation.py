"""Request validation and the error-to-status table: pure functions, no processes.

Every bad field must raise InvalidArgument whose message starts with the
field's path (DESIGN §8), and no message may echo a huge value in full.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from dtr.coordinator import validation as v
from dtr.coordinator.status_codes import status_for
from dtr.errors import (
    AlreadyExists,
    BarrierTimeout,
    CheckpointError,
    CoordinatorUnavailable,
    DtrError,
    InvalidArgument,
    LeaseExpired,
    MembershipChanged,
    NoCheckpoint,
    NotFound,
    NotLeader,
    StoreError,
    StoreUnavailable,
    WrongJob,
)
from dtr.proto import coordinator_pb2 as pb
from dtr.ring import DEFAULT_VNODES

HUGE = "w" * 10_000
SHA256 = "ab" * 32
# Bad ids/names for every field that becomes an etcd key segment.
BAD_NAMES = [
    pytest.param("", id="empty"),
    pytest.param(HUGE, id="10kB"),
    pytest.param("a/b", id="slash"),
    pytest.param("../x", id="dotdot"),
    pytest.param("a b", id="space"),
]
NAN, INF = math.nan, math.inf


def _raises_at(path: str, call: Callable[[], object]) -> str:
    """Run ``call``, check it raises InvalidArgument naming ``path``, return the message."""
    with pytest.raises(InvalidArgument) as caught:
        call()
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert len(message) < 400, "a huge value must not be echoed in full"
    return message


def _with(msg: Any, path: str, value: object) -> Any:
    """A copy of ``msg`` with the dotted field ``path`` set to ``value``."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    *parents, leaf = path.split(".")
    target = copy
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, leaf, value)
    return copy


def _without(msg: Any, field: str) -> Any:
    copy = type(msg)()
    copy.CopyFrom(msg)
    *parents, leaf = field.split(".")
    target = copy
    for parent in parents:
        target = getattr(target, parent)
    target.ClearField(leaf)
    return copy


# --- job_of ---------------------------------------------------------------------


@pytest.mark.parametrize("job", ["", "run-7"])
def test_a_request_for_this_job_or_no_job_is_accepted(job: str) -> None:
    v.job_of(pb.RequestHeader(job=job), "run-7")


def test_a_request_for_another_job_is_refused_as_wrong_job() -> None:
    with pytest.raises(WrongJob, match=r"^header\.job: .*'run-7'.*'run-8'"):
        v.job_of(pb.RequestHeader(job="run-8"), "run-7")


def test_wrong_job_message_does_not_echo_a_huge_job_name() -> None:
    with pytest.raises(WrongJob) as caught:
        v.job_of(pb.RequestHeader(job=HUGE), "run-7")
    assert len(str(caught.value)) < 400


# --- RegisterWorker ---------------------------------------------------------------

REGISTER = pb.RegisterWorkerRequest(
    header=pb.RequestHeader(job="run-7"),
    worker_id="host-1:0",
    capacity=2.5,
    host="host-1",
    pid=4242,
    labels={"zone": "a", "gpu": "h100"},
    client_version="0.1.0",
)


def test_a_valid_registration_yields_cleaned_values() -> None:
    assert v.register_worker(REGISTER) == v.WorkerRegistration(
        worker_id="host-1:0",
        capacity=2.5,
        host="host-1",
        pid=4242,
        labels=(("gpu", "h100"), ("zone", "a")),
        client_version="0.1.0",
    )


def test_an_empty_worker_id_asks_the_coordinator_to_assign_one() -> None:
    assert v.register_worker(_with(REGISTER, "worker_id", "")).worker_id is None


def test_registration_accepts_the_largest_capacity() -> None:
    assert v.register_worker(_with(REGISTER, "capacity", v.MAX_CAPACITY)).capacity == 1e6


@pytest.mark.parametrize("worker_id", [p for p in BAD_NAMES if p.id != "empty"])
def test_registration_refuses_a_bad_worker_id(worker_id: str) -> None:
    _raises_at("worker_id", lambda: v.register_worker(_with(REGISTER, "worker_id", worker_id)))


@pytest.mark.parametrize("capacity", [0.0, -1.0, NAN, INF, -INF, 1e6 + 1, 1e300])
def test_registration_refuses_a_bad_capacity(capacity: float) -> None:
    message = _raises_at(
        "capacity", lambda: v.register_worker(_with(REGISTER, "capacity", capacity))
    )
    assert "(0, 1000000]" in message


def test_registration_refuses_a_missing_capacity() -> None:
    _raises_at("capacity", lambda: v.register_worker(_without(REGISTER, "capacity")))


@pytest.mark.parametrize(
    ("path", "value"),
    [("host", "h" * (v.MAX_HOST_CHARS + 1)), ("client_version", HUGE)],
)
def test_registration_refuses_oversized_debug_text(path: str, value: str) -> None:
    _raises_at(path, lambda: v.register_worker(_with(REGISTER, path, value)))


@pytest.mark.parametrize(
    ("labels", "path"),
    [
        pytest.param({f"k{i}": "v" for i in range(v.MAX_LABELS + 1)}, "labels", id="too-many"),
        pytest.param({"": "v"}, "labels", id="empty-key"),
        pytest.param({"k" * 64: "v"}, "labels", id="long-key"),
        pytest.param({"k": HUGE}, "labels['k']", id="huge-value"),
    ],
)
def test_registration_refuses_bad_labels(labels: dict[str, str], path: str) -> None:
    request = _without(REGISTER, "labels")
    request.labels.update(labels)
    _raises_at(path, lambda: v.register_worker(request))


# --- Heartbeat / HeartbeatStream -------------------------------------------------

BEAT = pb.WorkerBeat(
    worker_id="w0",
    incarnation=3,
    sequence=17,
    step=1200,
    samples_per_s=512.5,
    checkpoint=pb.CheckpointProgress(saves_in_flight=1, commits_queued=2, last_durable_step=1100),
)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(pb.HeartbeatRequest(beat=BEAT), id="unary"),
        pytest.param(pb.HeartbeatStreamRequest(beat=BEAT), id="stream"),
        pytest.param(BEAT, id="bare-beat"),
    ],
)
def test_a_valid_beat_yields_cleaned_values(message: Any) -> None:
    assert v.heartbeat(message) == v.Beat(
        worker_id="w0",
        incarnation=3,
        sequence=17,
        step=1200,
        samples_per_s=512.5,
        checkpoint=v.CheckpointProgressReport(
            saves_in_flight=1, commits_queued=2, last_durable_step=1100, last_committed_step=None
        ),
    )


def test_a_beat_without_checkpoint_progress_reports_none() -> None:
    beat = v.heartbeat(pb.HeartbeatRequest(beat=_without(BEAT, "checkpoint")))
    assert beat.checkpoint == v.CheckpointProgressReport(0, 0, None, None)


def test_a_step_zero_checkpoint_is_told_apart_from_none() -> None:
    beat = v.heartbeat(_with(BEAT, "checkpoint.last_committed_step", 0))
    assert beat.checkpoint.last_committed_step == 0


@pytest.mark.parametrize("request_type", [pb.HeartbeatRequest, pb.HeartbeatStreamRequest])
def test_a_heartbeat_without_a_beat_is_refused(request_type: Any) -> None:
    _raises_at("beat", lambda: v.heartbeat(request_type(header=pb.RequestHeader(job="j"))))


@pytest.mark.parametrize("worker_id", BAD_NAMES)
def test_a_beat_with_a_bad_worker_id_is_refused(worker_id: str) -> None:
    request = pb.HeartbeatRequest(beat=_with(BEAT, "worker_id", worker_id))
    _raises_at("beat.worker_id", lambda: v.heartbeat(request))


@pytest.mark.parametrize("rate", [-1.0, -1e-9, NAN, INF, -INF])
def test_a_beat_with_a_bad_throughput_is_refused(rate: float) -> None:
    request = pb.HeartbeatStreamRequest(beat=_with(BEAT, "samples_per_s", rate))
    _raises_at("beat.samples_per_s", lambda: v.heartbeat(request))


def test_a_beat_with_zero_throughput_is_accepted() -> None:
    assert v.heartbeat(_with(BEAT, "samples_per_s", 0.0)).samples_per_s == 0.0


# --- Deregister -------------------------------------------------------------------

DEREGISTER = pb.DeregisterRequest(
    worker_id="w0", incarnation=3, reason=pb.DEREGISTER_REASON_PREEMPTED, detail="spot reclaim"
)


def test_a_valid_deregister_yields_cleaned_values() -> None:
    assert v.deregister(DEREGISTER) == v.Deregistration(
        worker_id="w0", incarnation=3, reason="preempted", detail="spot reclaim"
    )


def test_deregister_incarnation_zero_means_whichever_is_current() -> None:
    assert v.deregister(_with(DEREGISTER, "incarnation", 0)).incarnation is None


@pytest.mark.parametrize("reason", [pb.DEREGISTER_REASON_UNSPECIFIED, 99])
def test_deregister_reads_an_unknown_reason_as_unspecified(reason: int) -> None:
    assert v.deregister(_with(DEREGISTER, "reason", reason)).reason == "unspecified"


def test_deregister_truncates_a_huge_detail_instead_of_refusing_the_goodbye() -> None:
    detail = v.deregister(_with(DEREGISTER, "detail", "x" * 100_000)).detail
    assert len(detail) == v.MAX_DETAIL_CHARS


@pytest.mark.parametrize("worker_id", BAD_NAMES)
def test_deregister_refuses_a_bad_worker_id(worker_id: str) -> None:
    _raises_at("worker_id", lambda: v.deregister(_with(DEREGISTER, "worker_id", worker_id)))


# --- RegisterDataset --------------------------------------------------------------

DATASET = pb.RegisterDatasetRequest(name="tokens", num_shards=4096, vnodes=64, load_factor=1.25)


def test_a_valid_dataset_yields_cleaned_values() -> None:
    assert v.register_dataset(DATASET) == v.DatasetSpec(
        name="tokens", num_shards=4096, vnodes=64, load_factor=1.25
    )


def test_a_dataset_without_parameters_gets_the_defaults() -> None:
    request = pb.RegisterDatasetRequest(name="tokens", num_shards=1)
    assert v.register_dataset(request) == v.DatasetSpec("tokens", 1, DEFAULT_VNODES, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_shards", v.MAX_NUM_SHARDS),
        ("vnodes", v.MIN_VNODES),
        ("vnodes", v.MAX_VNODES),
        ("load_factor", 1.0),
        ("load_factor", 100.0),
    ],
)
def test_a_dataset_accepts_values_on_the_limits(field: str, value: float) -> None:
    v.register_dataset(_with(DATASET, field, value))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_dataset_with_a_bad_name_is_refused(name: str) -> None:
    _raises_at("name", lambda: v.register_dataset(_with(DATASET, "name", name)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_shards", 0),
        ("num_shards", v.MAX_NUM_SHARDS + 1),
        ("num_shards", 2**32 - 1),
        ("vnodes", 0),
        ("vnodes", v.MAX_VNODES + 1),
        ("load_factor", 0.0),
        ("load_factor", 0.99),
        ("load_factor", -1.0),
        ("load_factor", 100.5),
        ("load_factor", NAN),
        ("load_factor", INF),
    ],
)
def test_a_dataset_with_a_bad_parameter_is_refused(field: str, value: float) -> None:
    _raises_at(field, lambda: v.register_dataset(_with(DATASET, field, value)))


def test_a_dataset_without_num_shards_is_refused() -> None:
    _raises_at("num_shards", lambda: v.register_dataset(_without(DATASET, "num_shards")))


# --- GetShards --------------------------------------------------------------------

SHARDS = pb.GetShardsRequest(dataset="tokens", epoch=3, worker_id="w0")


def test_a_valid_shards_query_yields_cleaned_values() -> None:
    assert v.get_shards(SHARDS) == v.ShardsQuery(dataset="tokens", epoch=3, worker_id="w0")


@pytest.mark.parametrize("epoch", [0, 2**63 - 1])
def test_a_shards_query_accepts_epochs_on_the_limits(epoch: int) -> None:
    assert v.get_shards(_with(SHARDS, "epoch", epoch)).epoch == epoch


@pytest.mark.parametrize("epoch", [2**63, 2**64 - 1])
def test_a_shards_query_refuses_an_epoch_beyond_int64(epoch: int) -> None:
    _raises_at("epoch", lambda: v.get_shards(_with(SHARDS, "epoch", epoch)))


@pytest.mark.parametrize("field", ["dataset", "worker_id"])
@pytest.mark.parametrize("value", BAD_NAMES)
def test_a_shards_query_refuses_a_bad_name(field: str, value: str) -> None:
    _raises_at(field, lambda: v.get_shards(_with(SHARDS, field, value)))


# --- Barrier ----------------------------------------------------------------------

BARRIER = pb.BarrierRequest(name="step-100", worker_id="w0", generation=2**64 - 1, timeout_s=30.0)


def test_a_valid_barrier_yields_cleaned_values() -> None:
    assert v.barrier(BARRIER) == v.BarrierArrival(
        name="step-100", worker_id="w0", generation=2**64 - 1, timeout_s=30.0
    )


def test_a_barrier_timeout_of_zero_means_the_server_default() -> None:
    assert v.barrier(_with(BARRIER, "timeout_s", 0.0)).timeout_s is None


def test_a_barrier_accepts_the_longest_timeout() -> None:
    assert v.barrier(_with(BARRIER, "timeout_s", 3600.0)).timeout_s == 3600.0


@pytest.mark.parametrize("timeout_s", [-1.0, -0.001, NAN, INF, -INF, 3600.5, 1e12])
def test_a_barrier_with_a_bad_timeout_is_refused(timeout_s: float) -> None:
    _raises_at("timeout_s", lambda: v.barrier(_with(BARRIER, "timeout_s", timeout_s)))


@pytest.mark.parametrize("field", ["name", "worker_id"])
@pytest.mark.parametrize("value", BAD_NAMES)
def test_a_barrier_with_a_bad_name_is_refused(field: str, value: str) -> None:
    _raises_at(field, lambda: v.barrier(_with(BARRIER, field, value)))


# --- CommitCheckpoint -------------------------------------------------------------

COMMIT = pb.CommitCheckpointRequest(
    step=100,
    worker_id="w0",
    generation=4,
    part=pb.CheckpointPart(
        uri="s3://bucket/run-7/step-100/w0.pt",
        size_bytes=1 << 30,
        checksum=pb.Checksum(algorithm=pb.CHECKSUM_ALGORITHM_SHA256, hex_digest=SHA256),
        format_version=1,
        replicated=True,
    ),
)


def test_a_valid_commit_yields_cleaned_values() -> None:
    assert v.commit_checkpoint(COMMIT) == v.CheckpointCommit(
        step=100,
        worker_id="w0",
        generation=4,
        part=v.CheckpointPartSpec(
            uri="s3://bucket/run-7/step-100/w0.pt",
            size_bytes=1 << 30,
            algorithm="sha256",
            hex_digest=SHA256,
            format_version=1,
            manifest_uri=None,
            replicated=True,
        ),
    )


@pytest.mark.parametrize(
    ("algorithm", "name", "digest"),
    [
        (pb.CHECKSUM_ALGORITHM_SHA256, "sha256", "0" * 64),
        (pb.CHECKSUM_ALGORITHM_CRC32C, "crc32c", "deadbeef"),
        (pb.CHECKSUM_ALGORITHM_BLAKE2B, "blake2b", "f" * 128),
    ],
)
def test_a_commit_accepts_every_algorithm_with_its_digest_length(
    algorithm: int, name: str, digest: str
) -> None:
    request = _with(
        _with(COMMIT, "part.checksum.algorithm", algorithm), "part.checksum.hex_digest", digest
    )
    part = v.commit_checkpoint(request).part
    assert (part.algorithm, part.hex_digest) == (name, digest)


def test_a_commit_keeps_a_manifest_uri() -> None:
    request = _with(COMMIT, "part.manifest_uri", "file:///ckpt/m.json")
    assert v.commit_checkpoint(request).part.manifest_uri == "file:///ckpt/m.json"


@pytest.mark.parametrize("worker_id", BAD_NAMES)
def test_a_commit_with_a_bad_worker_id_is_refused(worker_id: str) -> None:
    _raises_at("worker_id", lambda: v.commit_checkpoint(_with(COMMIT, "worker_id", worker_id)))


@pytest.mark.parametrize("field", ["part", "part.checksum"])
def test_a_commit_without_a_sub_message_is_refused(field: str) -> None:
    _raises_at(field, lambda: v.commit_checkpoint(_without(COMMIT, field)))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("part.uri", ""),
        ("part.uri", "s3://b/" + "k" * v.MAX_URI_CHARS),
        ("part.manifest_uri", "s3://b/" + "k" * v.MAX_URI_CHARS),
        ("part.size_bytes", 0),
        ("part.format_version", 0),
        ("part.checksum.algorithm", pb.CHECKSUM_ALGORITHM_UNSPECIFIED),
        ("part.checksum.algorithm", 42),
        ("part.checksum.hex_digest", ""),
        ("part.checksum.hex_digest", SHA256[:-1]),
        ("part.checksum.hex_digest", SHA256 + "0"),
        ("part.checksum.hex_digest", SHA256.upper()),
        ("part.checksum.hex_digest", "g" * 64),
        ("part.checksum.hex_digest", "deadbeef"),
        ("part.checksum.hex_digest", HUGE),
    ],
)
def test_a_commit_with_a_bad_part_field_is_refused(path: str, value: object) -> None:
    _raises_at(path, lambda: v.commit_checkpoint(_with(COMMIT, path, value)))


def test_a_crc32c_digest_must_have_eight_digits() -> None:
    request = _with(COMMIT, "part.checksum.algorithm", pb.CHECKSUM_ALGORITHM_CRC32C)
    message = _raises_at("part.checksum.hex_digest", lambda: v.commit_checkpoint(request))
    assert "8 lowercase hex digits for crc32c" in message


# --- GetLatestCheckpoint ---------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "before_step"),
    [
        (pb.GetLatestCheckpointRequest(), None),
        (pb.GetLatestCheckpointRequest(before_step=0), 0),
        (pb.GetLatestCheckpointRequest(before_step=2**64 - 1), 2**64 - 1),
    ],
)
def test_a_latest_checkpoint_query_tells_absent_from_zero(
    request_: pb.GetLatestCheckpointRequest, before_step: int | None
) -> None:
    assert v.get_latest_checkpoint(request_) == v.LatestCheckpointQuery(before_step)


# --- status_for -----------------------------------------------------------------


class _SubclassOfNotFound(NotFound):
    pass


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (NotLeader("x", "10.0.0.1:50051"), grpc.StatusCode.FAILED_PRECONDITION),
        (WrongJob("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (MembershipChanged("x"), grpc.StatusCode.ABORTED),
        (BarrierTimeout("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (StoreUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (CoordinatorUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (_SubclassOfNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (StoreError("x"), grpc.StatusCode.INTERNAL),
        (LeaseExpired("x"), grpc.StatusCode.INTERNAL),
        (CheckpointError("x"), grpc.StatusCode.INTERNAL),
        (NoCheckpoint("x"), grpc.StatusCode.INTERNAL),
        (DtrError("x"), grpc.StatusCode.INTERNAL),
    ],
    ids=lambda p: type(p).__name__ if isinstance(p, Exception) else p.name,
)
def test_every_domain_error_maps_to_its_status_code(error: DtrError, code: grpc.StatusCode) -> None:
    assert status_for(error) is code


def test_validation_errors_answer_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as caught:
        v.get_shards(pb.GetShardsRequest())
    assert status_for(caught.value) is grpc.StatusCode.INVALID_ARGUMENT
