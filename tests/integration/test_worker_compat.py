"""A worker against an older coordinator that does not offer ``HeartbeatStream``.

The server here is a real gRPC server on loopback serving a partial
``dtr.v1.Coordinator``: the generated base class answers UNIMPLEMENTED for
every method not overridden, exactly what a coordinator built before a call
existed answers. It stands in for an older release, which cannot be
installed next to this one; everything else about the worker is real.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.worker import Worker
from helpers import wait_until

pytestmark = pytest.mark.integration


class CoordinatorWithoutStreams(pb_grpc.CoordinatorServicer):
    """Registration, unary beats and deregistration only, as an older release had."""

    def __init__(self) -> None:
        self.beats: list[pb.WorkerBeat] = []
        self.deregistered: list[str] = []
        self._lock = threading.Lock()

    def _header(self) -> pb.ResponseHeader:
        return pb.ResponseHeader(term=1, generation=1, replica_id="old", is_leader=True)

    def RegisterWorker(self, request: pb.RegisterWorkerRequest, context: Any) -> Any:
        return pb.RegisterWorkerResponse(
            header=self._header(),
            worker_id=request.worker_id,
            incarnation=1,
            heartbeat_interval_s=0.1,
            heartbeat_timeout_s=5.0,
        )

    def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> Any:
        with self._lock:
            self.beats.append(request.beat)
        return pb.HeartbeatResponse(
            header=self._header(),
            status=pb.WORKER_STATUS_OK,
            next_interval_s=0.1,
            acked_sequence=request.beat.sequence,
        )

    def Deregister(self, request: pb.DeregisterRequest, context: Any) -> Any:
        self.deregistered.append(request.worker_id)
        return pb.DeregisterResponse(header=self._header(), removed=True)


@pytest.fixture
def old_coordinator() -> Iterator[tuple[str, CoordinatorWithoutStreams]]:
    servicer = CoordinatorWithoutStreams()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None).wait(5)


def test_heartbeats_fall_back_to_unary_calls_when_streams_are_not_offered(
    old_coordinator: tuple[str, CoordinatorWithoutStreams],
) -> None:
    address, servicer = old_coordinator
    with Worker(address, worker_id="w0", heartbeat_interval_s=0.1) as worker:
        worker.report_progress(7, samples_per_s=3.5)
        wait_until(lambda: len(servicer.beats) >= 3, 30, "three unary beats")
        assert not worker._heartbeats.use_stream
        assert servicer.beats[-1].worker_id == "w0"
        assert servicer.beats[-1].step == 7
        sequences = [b.sequence for b in servicer.beats]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert servicer.deregistered == ["w0"]
