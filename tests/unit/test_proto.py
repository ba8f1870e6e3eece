"""The wire protocol's contract (DESIGN §3): the committed generated modules
match ``coordinator.proto``, the service offers every call with its streaming
kind, messages follow the "room to grow" conventions, and messages survive a
round trip through bytes."""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import descriptor

import dtr.proto
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.proto import generate

PROTO_DIR = Path(dtr.proto.__file__).resolve().parent
SERVICE = pb.DESCRIPTOR.services_by_name["Coordinator"]

#: DESIGN §3's calls -> (client streams, server streams).
DESIGN_CALLS: Mapping[str, tuple[bool, bool]] = {
    "RegisterWorker": (False, False),
    "Heartbeat": (False, False),
    "HeartbeatStream": (True, True),
    "Deregister": (False, False),
    "RegisterDataset": (False, False),
    "GetShards": (False, False),
    "Barrier": (False, False),
    "CommitCheckpoint": (False, False),
    "GetLatestCheckpoint": (False, False),
    "ClusterStatus": (False, False),
}

MULTICALLABLE_BY_KIND: Mapping[tuple[bool, bool], type] = {
    (False, False): grpc.UnaryUnaryMultiCallable,
    (False, True): grpc.UnaryStreamMultiCallable,
    (True, False): grpc.StreamUnaryMultiCallable,
    (True, True): grpc.StreamStreamMultiCallable,
}


def _first_lines_of_diff(name: str, committed: bytes, fresh: bytes, limit: int = 40) -> str:
    diff = difflib.unified_diff(
        committed.decode(errors="replace").splitlines(),
        fresh.decode(errors="replace").splitlines(),
        f"committed/{name}",
        f"generated/{name}",
        lineterm="",
    )
    return "\n".join(list(diff)[:limit])


# --- (a) the committed modules are what the proto produces ------------------


def test_committed_generated_modules_match_the_proto() -> None:
    fresh = generate.generate_bytes()
    assert sorted(fresh) == sorted(generate.GENERATED_FILES)
    problems = []
    for name, data in sorted(fresh.items()):
        path = PROTO_DIR / name
        if not path.is_file():
            problems.append(f"dtr/proto/{name} is missing")
        elif path.read_bytes() != data:
            diff = _first_lines_of_diff(name, path.read_bytes(), data)
            problems.append(f"dtr/proto/{name} differs from coordinator.proto's output:\n{diff}")
    assert not problems, (
        "the generated protocol modules are stale; run `make proto` and commit the result\n"
        + "\n".join(problems)
    )


def test_generation_is_deterministic() -> None:
    assert generate.generate_bytes() == generate.generate_bytes()


def test_generated_grpc_module_imports_messages_by_package_path() -> None:
    source = (PROTO_DIR / "coordinator_pb2_grpc.py").read_text()
    assert "from dtr.proto import coordinator_pb2 as" in source


# --- (b) every call of DESIGN §3, with its streaming kind -------------------


def test_service_offers_every_design_call() -> None:
    missing = set(DESIGN_CALLS) - set(SERVICE.methods_by_name)
    assert not missing, f"Coordinator lacks DESIGN §3 calls: {sorted(missing)}"


@pytest.mark.parametrize("call", sorted(DESIGN_CALLS))
def test_call_has_its_design_streaming_kind(call: str) -> None:
    method = SERVICE.methods_by_name[call]
    assert (method.client_streaming, method.server_streaming) == DESIGN_CALLS[call]


@pytest.mark.parametrize("call", sorted(DESIGN_CALLS))
def test_client_stub_exposes_call_with_matching_multicallable(call: str) -> None:
    channel = grpc.insecure_channel("localhost:1")  # never connects: nothing is called
    try:
        stub = pb_grpc.CoordinatorStub(channel)
        assert isinstance(getattr(stub, call), MULTICALLABLE_BY_KIND[DESIGN_CALLS[call]])
    finally:
        channel.close()


class _RecordingServer:
    """Just enough of grpc.Server to capture what a servicer registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        assert service == dtr.proto.SERVICE_NAME
        self.handlers.update(handlers)


def test_servicer_registers_every_call_with_its_streaming_kind() -> None:
    server = _RecordingServer()
    # The typed stubs mark every servicer method abstract; the generated base
    # class itself answers UNIMPLEMENTED, which is all registration needs.
    servicer_type: Any = pb_grpc.CoordinatorServicer
    pb_grpc.add_CoordinatorServicer_to_server(servicer_type(), cast(grpc.Server, server))
    kinds = {
        name: (handler.request_streaming, handler.response_streaming)
        for name, handler in server.handlers.items()
    }
    assert {name: kinds.get(name) for name in DESIGN_CALLS} == dict(DESIGN_CALLS)


# --- the "room to grow" conventions -----------------------------------------


def test_each_call_has_its_own_request_and_response_messages() -> None:
    seen: dict[str, str] = {}
    for method in SERVICE.methods:
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"
        for message in (method.input_type, method.output_type):
            assert message.file is pb.DESCRIPTOR, f"{method.name} uses {message.full_name}"
            assert message.full_name not in seen, (
                f"{message.full_name} is used by both {seen.get(message.full_name)} "
                f"and {method.name}"
            )
            seen[message.full_name] = method.name


def _header_field(message: descriptor.Descriptor) -> descriptor.FieldDescriptor:
    field = message.fields_by_number.get(1)
    assert field is not None, f"{message.full_name} has no field 1"
    return field


@pytest.mark.parametrize("call", [method.name for method in SERVICE.methods])
def test_every_request_and_response_carries_its_header_as_field_1(call: str) -> None:
    method = SERVICE.methods_by_name[call]
    request_header = _header_field(method.input_type)
    response_header = _header_field(method.output_type)
    assert request_header.name == "header"
    assert request_header.message_type is pb.RequestHeader.DESCRIPTOR
    assert response_header.name == "header"
    assert response_header.message_type is pb.ResponseHeader.DESCRIPTOR


def test_response_header_carries_fencing_token_and_membership_generation() -> None:
    fields = pb.ResponseHeader.DESCRIPTOR.fields_by_name
    for name in ("term", "generation"):
        assert fields[name].type == descriptor.FieldDescriptor.TYPE_UINT64, name
    assert {"replica_id", "is_leader"} <= set(fields)


@pytest.mark.parametrize("enum_name", sorted(pb.DESCRIPTOR.enum_types_by_name))
def test_every_enum_starts_with_an_unspecified_zero(enum_name: str) -> None:
    enum = pb.DESCRIPTOR.enum_types_by_name[enum_name]
    zero = enum.values_by_number[0]
    assert zero.name.endswith("_UNSPECIFIED")
    prefix = zero.name.removesuffix("UNSPECIFIED")
    assert all(value.name.startswith(prefix) for value in enum.values), enum_name


# --- (c) round trips ---------------------------------------------------------


def _round_trip(message: Any) -> Any:
    copy = type(message).FromString(message.SerializeToString())
    assert copy == message
    return copy


def test_commit_checkpoint_request_round_trips_with_its_part() -> None:
    request = pb.CommitCheckpointRequest(
        header=pb.RequestHeader(job="run-7", caller_id="w-3", client_request_id="c0ffee"),
        step=1200,
        worker_id="w-3",
        generation=9,
        part=pb.CheckpointPart(
            uri="s3://bucket/run-7/step-1200/w-3.pt",
            size_bytes=5 * 2**30,
            checksum=pb.Checksum(algorithm=pb.CHECKSUM_ALGORITHM_SHA256, hex_digest="ab" * 32),
            format_version=1,
            replicated=True,
        ),
    )
    copy = _round_trip(request)
    assert copy.part.size_bytes == 5 * 2**30
    assert copy.part.checksum.algorithm == pb.CHECKSUM_ALGORITHM_SHA256


def test_optional_fields_keep_zero_apart_from_absent() -> None:
    none_yet = _round_trip(pb.CommitCheckpointResponse(status=pb.COMMIT_STATUS_ACCEPTED))
    step_zero = _round_trip(
        pb.CommitCheckpointResponse(status=pb.COMMIT_STATUS_DUPLICATE, latest_complete_step=0)
    )
    assert not none_yet.HasField("latest_complete_step")
    assert step_zero.HasField("latest_complete_step")
    assert step_zero.latest_complete_step == 0


def test_get_shards_response_round_trips_with_packed_shard_ids() -> None:
    shard_ids = list(range(0, 4096, 7))
    response = pb.GetShardsResponse(
        header=pb.ResponseHeader(term=41, generation=9, replica_id="c-1", is_leader=True),
        shard_ids=shard_ids,
        generation=9,
        num_shards=4096,
        num_members=7,
    )
    copy = _round_trip(response)
    assert list(copy.shard_ids) == shard_ids
    only_ids = pb.GetShardsResponse(shard_ids=shard_ids).SerializeToString()
    # Packed: one tag for the whole list (field 2, length-delimited), not one per id.
    assert only_ids[0] == (2 << 3) | 2
    assert len(only_ids) < 2 * len(shard_ids) + 4


def test_cluster_status_response_round_trips_everything_status_shows() -> None:
    response = pb.ClusterStatusResponse(
        header=pb.ResponseHeader(term=41, generation=9, replica_id="c-2"),
        job="run-7",
        leader=pb.LeaderInfo(id="c-1", address="10.0.0.1:50051", term=41),
        replicas=[
            pb.ReplicaInfo(id="c-1", address="10.0.0.1:50051", is_leader=True),
            pb.ReplicaInfo(id="c-2", address="10.0.0.2:50051"),
        ],
        workers=[
            pb.WorkerInfo(
                id="w-0",
                alive=True,
                capacity=8.0,
                last_heartbeat_age_s=0.4,
                step=1200,
                shard_counts={"tokens": 512},
            ),
            pb.WorkerInfo(id="w-1", alive=False, capacity=8.0),
        ],
        generation=9,
        datasets=[pb.Dataset(name="tokens", num_shards=4096, vnodes=150)],
        open_barriers=[pb.BarrierInfo(name="step-1200", generation=9, arrived=1, expected=2)],
        latest_checkpoint=pb.CheckpointSummary(step=1100, generation=9, worker_ids=["w-0"]),
    )
    copy = _round_trip(response)
    assert copy.leader.term == 41
    assert dict(copy.workers[0].shard_counts) == {"tokens": 512}
    assert copy.workers[0].HasField("last_heartbeat_age_s")
    assert not copy.workers[1].HasField("last_heartbeat_age_s")
    assert not pb.ClusterStatusResponse().HasField("leader")


def test_heartbeat_stream_messages_round_trip() -> None:
    beat = pb.WorkerBeat(
        worker_id="w-0",
        incarnation=3,
        sequence=17,
        step=1200,
        samples_per_s=5120.5,
        checkpoint=pb.CheckpointProgress(saves_in_flight=1, commits_queued=2),
    )
    _round_trip(pb.HeartbeatStreamRequest(header=pb.RequestHeader(job="run-7"), beat=beat))
    reply = _round_trip(
        pb.HeartbeatStreamResponse(
            status=pb.WORKER_STATUS_UNKNOWN_WORKER, next_interval_s=1.0, acked_sequence=17
        )
    )
    assert reply.status == pb.WORKER_STATUS_UNKNOWN_WORKER


def test_unknown_fields_from_a_newer_peer_survive_a_round_trip() -> None:
    # A newer peer's field 99 = 5: tag (99 << 3 | wire type 0) as a two-byte varint, then 5.
    tag = 99 << 3
    newer = pb.BarrierRequest(name="step-1").SerializeToString() + bytes(
        [(tag & 0x7F) | 0x80, tag >> 7, 5]
    )
    parsed = pb.BarrierRequest.FromString(newer)
    assert parsed.name == "step-1"
    assert parsed.SerializeToString() == newer


# --- (d) names both sides must spell the same way ----------------------------


def test_service_full_name_is_dtr_v1_coordinator() -> None:
    assert SERVICE.full_name == "dtr.v1.Coordinator"
    assert SERVICE.full_name == dtr.proto.SERVICE_NAME
    assert pb.DESCRIPTOR.package == dtr.proto.PROTO_PACKAGE


def test_protocol_constants() -> None:
    key = dtr.proto.LEADER_METADATA_KEY
    assert key == "dtr-leader"
    # gRPC refuses uppercase metadata keys, and "-bin" would make the value bytes.
    assert key == key.lower()
    assert not key.endswith("-bin")
    assert dtr.proto.LEADER_HEALTH_SERVICE == "dtr.v1.Leader"
    proto_text = (PROTO_DIR / "coordinator.proto").read_text()
    assert f"{dtr.proto.LEADER_METADATA_KEY}: HOST:PORT" in proto_text
    assert f'"{dtr.proto.LEADER_HEALTH_SERVICE}"' in proto_text


def test_importing_dtr_proto_stays_light() -> None:
    tree = ast.parse((PROTO_DIR / "__init__.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert imported <= {"__future__", "typing"}, imported
