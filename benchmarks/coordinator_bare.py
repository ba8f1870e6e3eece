"""The floor for ``benchmarks/coordinator.py``: a ``dtr.v1.Coordinator`` with no logic.

Run as ``python benchmarks/coordinator_bare.py --listen 127.0.0.1:PORT``
(the benchmark starts and stops it). It answers Heartbeat, HeartbeatStream,
GetShards and Barrier with the same response messages the real coordinator
sends (a header, a status, ``shards_per_worker`` shard ids), built per call,
but reads no state and writes nothing: what is left is the cost of grpc.aio,
protobuf and the event loop, which the dtr figures are divided by.

Barrier holds every call of a name until ``--workers`` distinct workers have
called it, then answers them all (as a released barrier would).
ClusterStatus is the benchmark's probe, not part of the floor: it lists the
barriers still waiting and how many have arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc

from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc

_Response = TypeVar("_Response")


class _Pending:
    """One barrier name: who arrived and the future every caller waits on."""

    def __init__(self) -> None:
        self.arrived: set[str] = set()
        self.released: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class BareServicer(pb_grpc.CoordinatorServicer):
    """Answers without reading or writing any state (Barrier counts arrivals only)."""

    def __init__(self, address: str, workers: int, shards_per_worker: int) -> None:
        self.workers = workers
        self.header = pb.ResponseHeader(
            term=1, generation=1, replica_id="bare", is_leader=True, leader_address=address
        )
        self.shard_ids = list(range(shards_per_worker))
        self.barriers: dict[str, _Pending] = {}

    async def Heartbeat(  # noqa: N802 (the RPC's name)
        self, request: pb.HeartbeatRequest, context: Any
    ) -> pb.HeartbeatResponse:
        return pb.HeartbeatResponse(
            header=self.header,
            status=pb.WORKER_STATUS_OK,
            next_interval_s=1.0,
            acked_sequence=request.beat.sequence,
        )

    async def HeartbeatStream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.HeartbeatStreamRequest], context: Any
    ) -> AsyncIterator[pb.HeartbeatStreamResponse]:
        async for request in request_iterator:
            yield pb.HeartbeatStreamResponse(
                header=self.header,
                status=pb.WORKER_STATUS_OK,
                next_interval_s=1.0,
                acked_sequence=request.beat.sequence,
            )

    async def GetShards(  # noqa: N802
        self, request: pb.GetShardsRequest, context: Any
    ) -> pb.GetShardsResponse:
        return pb.GetShardsResponse(
            header=self.header,
            shard_ids=self.shard_ids,
            generation=1,
            num_shards=len(self.shard_ids) * self.workers,
            num_members=self.workers,
        )

    async def Barrier(  # noqa: N802
        self, request: pb.BarrierRequest, context: Any
    ) -> pb.BarrierResponse:
        pending = self.barriers.get(request.name)
        if pending is None:
            pending = self.barriers[request.name] = _Pending()
        pending.arrived.add(request.worker_id)
        if len(pending.arrived) >= self.workers and not pending.released.done():
            pending.released.set_result(None)
        await pending.released
        return pb.BarrierResponse(
            header=self.header,
            status=pb.BARRIER_STATUS_RELEASED,
            barrier_generation=1,
            arrived=len(pending.arrived),
            expected=self.workers,
        )

    async def ClusterStatus(  # noqa: N802
        self, request: pb.ClusterStatusRequest, context: Any
    ) -> pb.ClusterStatusResponse:
        response = pb.ClusterStatusResponse(header=self.header, job="bare", generation=1)
        for name, pending in self.barriers.items():
            if not pending.released.done():
                response.open_barriers.add(
                    name=name, generation=1, arrived=len(pending.arrived), expected=self.workers
                )
        return response

    # -- not part of the floor: answered UNIMPLEMENTED ----------------------------------
    async def RegisterWorker(  # noqa: N802
        self, request: pb.RegisterWorkerRequest, context: Any
    ) -> pb.RegisterWorkerResponse:
        return await _unimplemented(context, pb.RegisterWorkerResponse)

    async def Deregister(  # noqa: N802
        self, request: pb.DeregisterRequest, context: Any
    ) -> pb.DeregisterResponse:
        return await _unimplemented(context, pb.DeregisterResponse)

    async def RegisterDataset(  # noqa: N802
        self, request: pb.RegisterDatasetRequest, context: Any
    ) -> pb.RegisterDatasetResponse:
        return await _unimplemented(context, pb.RegisterDatasetResponse)

    async def CommitCheckpoint(  # noqa: N802
        self, request: pb.CommitCheckpointRequest, context: Any
    ) -> pb.CommitCheckpointResponse:
        return await _unimplemented(context, pb.CommitCheckpointResponse)

    async def GetLatestCheckpoint(  # noqa: N802
        self, request: pb.GetLatestCheckpointRequest, context: Any
    ) -> pb.GetLatestCheckpointResponse:
        return await _unimplemented(context, pb.GetLatestCheckpointResponse)


async def _unimplemented(context: Any, response: type[_Response]) -> _Response:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the bare server does not serve this")
    return response()  # never reached: abort() raises


async def serve(listen: str, workers: int, shards_per_worker: int) -> None:
    """Serve until SIGTERM or SIGINT (the same server options as ``dtr coordinator``)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_insecure_port(listen)
    servicer = BareServicer(listen, workers, shards_per_worker)
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    print(f"bare coordinator serving on {listen}", flush=True)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", required=True, help="HOST:PORT (use 127.0.0.1)")
    parser.add_argument("--workers", type=int, default=1_000, help="arrivals that release")
    parser.add_argument("--shards-per-worker", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.workers, args.shards_per_worker))


if __name__ == "__main__":
    main()
