"""The gRPC face of a replica: validate, delegate to ``Coordinator``, translate errors.

Thin on purpose (the gRPC examples' habit): every handler validates its
request with ``validation`` (INVALID_ARGUMENT naming the field), calls the
coordinator, and builds the response. Domain errors become status codes
through the one table in ``status_codes``; a NOT_LEADER answer carries the
leader's address in the ``dtr-leader`` trailing metadata.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from dtr import tracing
from dtr.errors import DtrError, MembershipChanged, NotFound, NotLeader, UnknownWorker
from dtr.proto import ERROR_KIND_METADATA_KEY, LEADER_METADATA_KEY
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc

from . import rendezvous_requests, validation
from .checkpoints import PartRecord
from .leader import Coordinator
from .leader_news import LeaderNews, watch_answer, watch_leader_request
from .rendezvous import Rendezvous, StateRead
from .rounds import RoundJoin
from .state import ClusterView, DatasetRecord, MemberRecord
from .status_codes import status_for
from .validation import CheckpointProgressReport
from .wire import refuse_malformed

_log = logging.getLogger(__name__)
_Response = TypeVar("_Response")

# A barrier long poll ends after this long; the worker then calls again (WAITING).
MAX_LONG_POLL_S = 10.0
_BARRIER_STATUS = {
    "released": pb.BARRIER_STATUS_RELEASED,
    "membership_changed": pb.BARRIER_STATUS_MEMBERSHIP_CHANGED,
    "waiting": pb.BARRIER_STATUS_WAITING,
    "missed": pb.BARRIER_STATUS_MISSED,
}
_BEAT_STATUS = {
    "ok": pb.WORKER_STATUS_OK,
    "unknown": pb.WORKER_STATUS_UNKNOWN_WORKER,
    "dead": pb.WORKER_STATUS_DEAD,
    "stale_incarnation": pb.WORKER_STATUS_STALE_INCARNATION,
}
_COMMIT_STATUS = {
    "accepted": pb.COMMIT_STATUS_ACCEPTED,
    "duplicate": pb.COMMIT_STATUS_DUPLICATE,
    "superseded": pb.COMMIT_STATUS_SUPERSEDED,
}
_CHECKSUM_ALGORITHM = {name: value for value, name in validation.ALGORITHMS.items()}


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], err: DtrError) -> None:
    """Answer ``err`` with its status code (and the leader hint for NOT_LEADER)."""
    metadata = [(ERROR_KIND_METADATA_KEY, err.kind)] if err.kind else []
    if isinstance(err, NotLeader) and err.leader_address:
        metadata.append((LEADER_METADATA_KEY, err.leader_address))
    if metadata:
        context.set_trailing_metadata(tuple(metadata))
    await context.abort(status_for(err), str(err))


def _handler(
    method: Callable[[CoordinatorServicer, Any, Any], Awaitable[_Response]],
) -> Callable[[CoordinatorServicer, Any, Any], Awaitable[_Response]]:
    """Check the job, map DtrError to a status, log anything else (the replica keeps serving)."""

    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: CoordinatorServicer, request: Any, context: Any) -> _Response:
        started, code = time.perf_counter(), "OK"
        try:
            with tracing.server_span(name, context.invocation_metadata()):
                validation.job_of(request.header, self.job)  # every request has a header
                return await method(self, request, context)
        except DtrError as err:
            code = status_for(err).name
            await abort_with(context, err)
            raise  # abort() raises; this line is never reached
        except grpc.aio.AbortError:
            code = "ABORTED_BY_HANDLER"
            raise
        except Exception:
            code = "INTERNAL"
            _log.exception("%s failed", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error")
            raise
        finally:
            self.core.metrics.rpc(name, code).observe(time.perf_counter() - started)

    return wrapper


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """``dtr.v1.Coordinator`` on one replica."""

    def __init__(self, coordinator: Coordinator, replica_id: str) -> None:
        self.core = coordinator
        self.replica_id = replica_id
        self.job = coordinator.keys.job
        self.rendezvous = Rendezvous(coordinator)
        self._leader_news: LeaderNews | None = None  # subscribed on the first WatchLeader

    def header(self, view: ClusterView | None = None) -> pb.ResponseHeader:
        leader = self.core.elector.leader()
        return pb.ResponseHeader(
            term=leader.create_revision if leader else 0,
            generation=view.generation if view else 0,
            replica_id=self.replica_id,
            is_leader=self.core.is_leader,
            leader_address=leader.address if leader else "",
        )

    # -- membership --------------------------------------------------------------
    @_handler
    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: Any
    ) -> pb.RegisterWorkerResponse:
        wanted = validation.register_worker(request)
        worker_id = wanted.worker_id or f"w-{uuid.uuid4().hex[:12]}"
        record: MemberRecord | None
        if wanted.rendezvous_round is None:
            record, view = await self.core.register_worker(
                worker_id, wanted.capacity, host=wanted.host, pid=wanted.pid
            )
        else:
            join = RoundJoin(
                *wanted.rendezvous_round, worker_id, wanted.capacity, wanted.host, wanted.pid
            )
            record, view = await self.core.register_round_member(join)
        return pb.RegisterWorkerResponse(
            header=self.header(view),
            worker_id=worker_id,
            incarnation=record.incarnation if record is not None else 0,
            round_pending=record is None,
            heartbeat_interval_s=self.core.config.heartbeat_interval_s,
            heartbeat_timeout_s=self.core.config.heartbeat_timeout_s,
            job_life=view.job_life,
        )

    async def _beat(
        self, request: pb.HeartbeatRequest | pb.HeartbeatStreamRequest
    ) -> tuple[pb.ResponseHeader, int, int]:
        beat = validation.heartbeat(request)
        status, view = await self.core.heartbeat(
            beat.worker_id, beat.incarnation, beat.step, beat.samples_per_s, beat.checkpoint
        )
        return self.header(view), _BEAT_STATUS[status], beat.sequence

    @_handler
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        header, status, sequence = await self._beat(request)
        return pb.HeartbeatResponse(
            header=header,
            status=status,  # type: ignore[arg-type]
            next_interval_s=self.core.config.heartbeat_interval_s,
            acked_sequence=sequence,
        )

    async def HeartbeatStream(
        self, request_iterator: AsyncIterator[pb.HeartbeatStreamRequest], context: Any
    ) -> AsyncIterator[pb.HeartbeatStreamResponse]:
        try:
            async for request in request_iterator:
                await refuse_malformed("HeartbeatStream", request, context)
                validation.job_of(request.header, self.job)  # not wrapped by _handler
                header, status, sequence = await self._beat(request)
                yield pb.HeartbeatStreamResponse(
                    header=header,
                    status=status,  # type: ignore[arg-type]
                    next_interval_s=self.core.config.heartbeat_interval_s,
                    acked_sequence=sequence,
                )
        except DtrError as err:
            await abort_with(context, err)

    @_handler
    async def Deregister(
        self, request: pb.DeregisterRequest, context: Any
    ) -> pb.DeregisterResponse:
        leaving = validation.deregister(request)
        removed = await self.core.deregister(leaving.worker_id, leaving.incarnation or 0)
        _log.info("worker %s deregistered (%s)", leaving.worker_id, leaving.reason)
        return pb.DeregisterResponse(
            header=self.header(await self.core.read_view()), removed=removed
        )

    # -- datasets and shards -----------------------------------------------------
    @_handler
    async def RegisterDataset(
        self, request: pb.RegisterDatasetRequest, context: Any
    ) -> pb.RegisterDatasetResponse:
        spec = validation.register_dataset(request)
        wanted = DatasetRecord(spec.name, spec.num_shards, spec.vnodes, spec.load_factor)
        stored, created = await self.core.register_dataset(wanted)
        return pb.RegisterDatasetResponse(
            header=self.header(await self.core.read_view()),
            dataset=_dataset_pb(stored),
            created=created,
        )

    @_handler
    async def GetShards(self, request: pb.GetShardsRequest, context: Any) -> pb.GetShardsResponse:
        query = validation.get_shards(request)
        view = await self.core.read_view()
        dataset = view.datasets.get(query.dataset)
        if dataset is None:
            raise NotFound(f"dataset: no dataset named {query.dataset!r}; register it first")
        members = view.live_members()
        if query.worker_id not in members:
            raise UnknownWorker(
                f"worker_id: {query.worker_id!r} is not a live member of generation "
                f"{view.generation}; register it first"
            )
        assignment = await self.core.assignment(view, dataset)
        most, fewest = await self.core.shard_bounds(view, dataset)
        return pb.GetShardsResponse(
            header=self.header(view),
            shard_ids=assignment.get(query.worker_id, []),
            generation=view.generation,
            num_shards=dataset.num_shards,
            num_members=len(members),
            max_member_shards=most,
            min_member_shards=fewest,
        )

    # -- barriers ----------------------------------------------------------------
    @_handler
    async def Barrier(self, request: pb.BarrierRequest, context: Any) -> pb.BarrierResponse:
        arrival = validation.barrier(request)
        wait_s = min(arrival.timeout_s or MAX_LONG_POLL_S, MAX_LONG_POLL_S)
        started = time.perf_counter()
        try:
            outcome = await self.core.barrier_arrive(
                arrival.name, arrival.worker_id, arrival.generation, wait_s, arrival.incarnation
            )
        except MembershipChanged:
            self.core.metrics.barrier_wait_seconds.labels("membership_changed").observe(
                time.perf_counter() - started
            )
            view = await self.core.read_view()
            return pb.BarrierResponse(
                header=self.header(view),
                status=pb.BARRIER_STATUS_MEMBERSHIP_CHANGED,
                barrier_generation=view.generation,
            )
        self.core.metrics.barrier_wait_seconds.labels(outcome.status).observe(
            time.perf_counter() - started
        )
        return pb.BarrierResponse(
            header=self.header(await self.core.read_view()),
            status=_BARRIER_STATUS[outcome.status],
            barrier_generation=outcome.generation,
            arrived=outcome.arrived,
            expected=outcome.expected,
            missing_worker_ids=outcome.missing,
        )

    # -- checkpoints ---------------------------------------------------------------
    @_handler
    async def CommitCheckpoint(
        self, request: pb.CommitCheckpointRequest, context: Any
    ) -> pb.CommitCheckpointResponse:
        commit = validation.commit_checkpoint(request)
        decision = await self.core.commit_checkpoint(commit)
        if decision.status == "accepted":
            _log.info(
                "checkpoint step %d: part of %s recorded%s",
                commit.step,
                commit.worker_id,
                "; step complete" if decision.step_complete else "",
            )
        response = pb.CommitCheckpointResponse(
            header=self.header(await self.core.read_view()),
            status=_COMMIT_STATUS[decision.status],
            step_complete=decision.step_complete,
        )
        if decision.latest is not None:
            response.latest_complete_step = decision.latest.step
        return response

    @_handler
    async def GetLatestCheckpoint(
        self, request: pb.GetLatestCheckpointRequest, context: Any
    ) -> pb.GetLatestCheckpointResponse:
        query = validation.get_latest_checkpoint(request)
        found = await self.core.latest_checkpoint(query.before_step)
        header = self.header(await self.core.read_view())
        if found is None:
            return pb.GetLatestCheckpointResponse(header=header, has_checkpoint=False)
        complete, parts = found
        return pb.GetLatestCheckpointResponse(
            header=header,
            has_checkpoint=True,
            step=complete.step,
            generation=complete.generation,
            parts=[_part_pb(p) for p in parts],
        )

    # -- status ------------------------------------------------------------------
    @_handler
    async def ClusterStatus(
        self, request: pb.ClusterStatusRequest, context: Any
    ) -> pb.ClusterStatusResponse:
        view = await self.core.read_view()
        candidates = self.core.elector.candidates()
        response = pb.ClusterStatusResponse(
            header=self.header(view), job=self.job, generation=view.generation
        )
        if candidates:
            head = candidates[0]
            response.leader.CopyFrom(
                pb.LeaderInfo(id=head.replica_id, address=head.address, term=head.create_revision)
            )
        for c in candidates:
            response.replicas.add(id=c.replica_id, address=c.address, is_leader=c is candidates[0])
        for dataset in sorted(view.datasets.values(), key=lambda d: d.name):
            response.datasets.append(_dataset_pb(dataset))
        for state in self.core.open_barriers(view):
            response.open_barriers.add(
                name=state.name,
                generation=state.generation,
                arrived=len(state.arrived),
                expected=len(view.live_members()),
            )
        for worker_id, record in sorted(view.members.items()):
            info = response.workers.add(
                id=worker_id,
                alive=record.alive,
                capacity=record.capacity,
                incarnation=record.incarnation,
                host=record.host,
                pid=record.pid,
            )
            seen = self.core.liveness(worker_id)
            if seen is not None:
                info.last_heartbeat_age_s = max(0.0, self.core.age_s(seen))
                info.step, info.samples_per_s = seen.step, seen.samples_per_s
                if seen.checkpoint is not None:
                    info.checkpoint.CopyFrom(_progress_pb(seen.checkpoint))
            if record.alive:
                for dataset in view.datasets.values():
                    shards = (await self.core.assignment(view, dataset)).get(worker_id, [])
                    info.shard_counts[dataset.name] = len(shards)
        latest = await self.core.latest_checkpoint(None)
        if latest is not None:
            complete, parts = latest
            response.latest_checkpoint.CopyFrom(
                pb.CheckpointSummary(
                    step=complete.step,
                    generation=complete.generation,
                    worker_ids=[p.worker_id for p in parts],
                )
            )
        return response

    # -- leader news -----------------------------------------------------------------
    async def WatchLeader(
        self, request: pb.WatchLeaderRequest, context: Any
    ) -> pb.WatchLeaderResponse:
        """Hold the call until this replica knows a leader newer than the caller's (leader_news).

        Not wrapped by ``_handler``: a hanging get that every client keeps
        open would swamp the RPC latency histogram and the traces with its
        waits. It validates and answers errors the same way.
        """
        try:
            validation.job_of(request.header, self.job)
            watch = watch_leader_request(request)
            news = self._news()
            leader, changed = await news.wait_newer(watch.known_term, watch.wait_s)
        except DtrError as err:
            await abort_with(context, err)
            raise  # abort() raises; this line is never reached
        except Exception:
            _log.exception("WatchLeader failed")
            await context.abort(grpc.StatusCode.INTERNAL, "WatchLeader: internal error")
            raise
        return watch_answer(leader, changed, self.header())

    def _news(self) -> LeaderNews:
        """The replica's leader news, fed by its elector from the first watch on."""
        if self._leader_news is None:
            self._leader_news = LeaderNews()
            self.core.elector.add_leader_listener(self._leader_news.publish)
        return self._leader_news

    # -- torchrun rendezvous -------------------------------------------------------
    @_handler
    async def GetRendezvousState(
        self, request: pb.GetRendezvousStateRequest, context: Any
    ) -> pb.GetRendezvousStateResponse:
        read = await self.rendezvous.get_state(rendezvous_requests.get_state(request))
        return pb.GetRendezvousStateResponse(
            header=self.header(),
            present=read.present,
            state=read.state,
            token=read.token,
            created=read.created,
        )

    @_handler
    async def SetRendezvousState(
        self, request: pb.SetRendezvousStateRequest, context: Any
    ) -> pb.SetRendezvousStateResponse:
        write = rendezvous_requests.set_state(request)
        has_set, now = await self.rendezvous.set_state(
            write.rendezvous_id, write.state, write.token
        )
        return _state_pb(self.header(), has_set, now)

    @_handler
    async def RendezvousStoreSet(
        self, request: pb.RendezvousStoreSetRequest, context: Any
    ) -> pb.RendezvousStoreSetResponse:
        write = rendezvous_requests.store_set(request)
        await self.rendezvous.store_set(write.rendezvous_id, write.entries)
        return pb.RendezvousStoreSetResponse(header=self.header())

    @_handler
    async def RendezvousStoreGet(
        self, request: pb.RendezvousStoreGetRequest, context: Any
    ) -> pb.RendezvousStoreGetResponse:
        query = rendezvous_requests.store_get(request)
        read = await self.rendezvous.store_get(query.rendezvous_id, query.keys, query.wait_s)
        return pb.RendezvousStoreGetResponse(
            header=self.header(),
            found=not read.missing,
            values=read.values,
            missing_keys=read.missing,
        )

    @_handler
    async def RendezvousStoreAdd(
        self, request: pb.RendezvousStoreAddRequest, context: Any
    ) -> pb.RendezvousStoreAddResponse:
        add = rendezvous_requests.store_add(request)
        value = await self.rendezvous.store_add(
            add.rendezvous_id, add.key, add.delta, add.request_id
        )
        return pb.RendezvousStoreAddResponse(header=self.header(), value=value)


def _state_pb(
    header: pb.ResponseHeader, has_set: bool, now: StateRead
) -> pb.SetRendezvousStateResponse:
    return pb.SetRendezvousStateResponse(
        header=header, has_set=has_set, present=now.present, state=now.state, token=now.token
    )


def _dataset_pb(record: DatasetRecord) -> pb.Dataset:
    message = pb.Dataset(name=record.name, num_shards=record.num_shards, vnodes=record.vnodes)
    if record.load_factor is not None:
        message.load_factor = record.load_factor
    return message


def _part_pb(record: PartRecord) -> pb.WorkerCheckpointPart:
    return pb.WorkerCheckpointPart(
        worker_id=record.worker_id,
        part=pb.CheckpointPart(
            uri=record.uri,
            size_bytes=record.size_bytes,
            checksum=pb.Checksum(
                algorithm=_CHECKSUM_ALGORITHM[record.algorithm], hex_digest=record.hex_digest
            ),
            format_version=record.format_version,
            manifest_uri=record.manifest_uri or "",
            replicated=record.replicated,
        ),
    )


def _progress_pb(report: CheckpointProgressReport) -> pb.CheckpointProgress:
    progress = pb.CheckpointProgress(
        saves_in_flight=report.saves_in_flight, commits_queued=report.commits_queued
    )
    if report.last_durable_step is not None:
        progress.last_durable_step = report.last_durable_step
    if report.last_committed_step is not None:
        progress.last_committed_step = report.last_committed_step
    return progress
