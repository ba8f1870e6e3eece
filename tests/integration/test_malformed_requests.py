"""Bad input at the edges: undecodable request bytes, and integers protobuf cannot hold.

- Raw bytes that are not a valid message, sent to a real replica on every
  method of ``dtr.v1.Coordinator`` (the stream included), are answered
  ``INVALID_ARGUMENT`` naming the method, never ``UNKNOWN`` (which clients
  take for a server fault): ``coordinator/wire.py``.
- ``Worker`` refuses integers out of the fields' (and the coordinator's)
  ranges with ``InvalidArgument`` naming the field, before protobuf raises a
  bare ``ValueError``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.errors import InvalidArgument
from dtr.etcd import RunningEtcd
from dtr.proto import coordinator_pb2 as pb
from dtr.worker import Worker

pytestmark = pytest.mark.integration

SERVICE = pb.DESCRIPTOR.services_by_name["Coordinator"]
#: Field 1, length-delimited, announcing 255 bytes and giving none: "truncated".
UNDECODABLE = b"\x0a\xff\x01"


def _identity(data: bytes) -> bytes:
    return data


@pytest.fixture(scope="module")
def single(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    """One replica of a fresh job; the tests only send it bad input."""
    with LocalCluster.start(replicas=1, etcd=etcd, job=f"m-{uuid.uuid4().hex[:10]}") as started:
        started.wait_ready()
        yield started


@pytest.fixture
def channel(single: LocalCluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(single.endpoints[0]) as opened:
        yield opened


@pytest.mark.parametrize(
    "method", [m.name for m in SERVICE.methods if not m.client_streaming], ids=str
)
def test_undecodable_unary_request_is_invalid_argument(channel: grpc.Channel, method: str) -> None:
    call = channel.unary_unary(
        f"/{SERVICE.full_name}/{method}",
        request_serializer=_identity,
        response_deserializer=_identity,
    )
    with pytest.raises(grpc.RpcError) as raised:
        call(UNDECODABLE, timeout=10.0)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert method in raised.value.details()


def test_undecodable_stream_message_is_invalid_argument(channel: grpc.Channel) -> None:
    streaming = [m.name for m in SERVICE.methods if m.client_streaming]
    assert streaming == ["HeartbeatStream"]
    call = channel.stream_stream(
        f"/{SERVICE.full_name}/HeartbeatStream",
        request_serializer=_identity,
        response_deserializer=_identity,
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(call(iter([UNDECODABLE]), timeout=10.0))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "HeartbeatStream" in raised.value.details()


def test_valid_bytes_still_reach_the_servicer(channel: grpc.Channel, single: LocalCluster) -> None:
    """The guard changes nothing for a message that decodes: the handler answers it."""
    call = channel.unary_unary(
        f"/{SERVICE.full_name}/ClusterStatus",
        request_serializer=_identity,
        response_deserializer=pb.ClusterStatusResponse.FromString,
    )
    request = pb.ClusterStatusRequest(header=pb.RequestHeader(job=single.job, caller_id="t"))
    response = call(request.SerializeToString(), timeout=10.0)
    assert len(response.replicas) == 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"num_shards": 10**12}, "num_shards"),
        ({"num_shards": 2**32}, "num_shards"),
        ({"num_shards": 10_000_001}, "num_shards"),
        ({"num_shards": 8, "vnodes": 2**40}, "vnodes"),
        ({"num_shards": 8, "vnodes": True}, "vnodes"),
        ({"num_shards": 8, "load_factor": 1e6}, "load_factor"),
    ],
)
def test_register_dataset_out_of_range_is_invalid_argument(
    single: LocalCluster, options: dict[str, int | float], field: str
) -> None:
    with Worker(single.coordinators, worker_id="w-range", job=single.job) as worker:
        with pytest.raises(InvalidArgument, match=field):
            worker.register_dataset("ds", **options)  # type: ignore[arg-type]
        worker.register_dataset("ds", num_shards=8)  # the worker is still usable
        assert sorted(worker.get_shards("ds")) == list(range(8))


def test_get_shards_epoch_out_of_range_is_invalid_argument(single: LocalCluster) -> None:
    with Worker(single.coordinators, worker_id="w-epoch", job=single.job) as worker:
        worker.register_dataset("epochs", num_shards=4)
        with pytest.raises(InvalidArgument, match="epoch"):
            worker.get_shards("epochs", epoch=2**64)
        with pytest.raises(InvalidArgument, match="epoch"):
            worker.get_shards("epochs", epoch=2**63)
        assert sorted(worker.get_shards("epochs", epoch=2**63 - 1)) == [0, 1, 2, 3]
