"""``AsyncWorker``: the ``Worker`` API in ``async def`` form, for many workers in one process.

A threaded ``dtr.worker.Worker`` holds a heartbeat thread and its own
channels; a process that simulates or drives hundreds of workers (a load
generator, a data-loading service speaking for its readers, the chaos
harness) would hold hundreds of threads. ``AsyncWorker`` is the same
membership as coroutines on one event loop. Every worker of the process
shares one ``AsyncCoordinatorClient`` (``aio_client.py``: three connections
for the whole process, leader following and the retry policy of
``dtr/retry.py``), and beats in a task of its own::

    client = AsyncCoordinatorClient("10.0.0.1:50051,10.0.0.2:50051", job="llm")
    async with AsyncWorker(client, worker_id="reader-7") as worker:
        await worker.register_dataset("tokens", num_shards=4096)
        shards = await worker.get_shards("tokens", epoch=0)
        ...
        generation = await worker.barrier("epoch-0")
    await client.close()

The semantics are the threaded worker's (DESIGN §3): a worker unknown to the
leader or declared dead registers again as a new incarnation, from its
heartbeat task or from a call; ``shard_assignment`` serves the last
assignment of a dataset (``stale=True``) when no coordinator answers within
``stale_read_deadline_s``; ``barrier`` arrives again under the new generation
after a membership change, raises ``BarrierMissed`` when it was released
without this incarnation, ``BarrierTimeout`` at its timeout; a newer process
of the same id makes every call raise ``WorkerSuperseded``.

Beats are unary ``Heartbeat`` calls, one per interval: hundreds of streams
would cost the leader about what the same number of unary beats do, and a
beat that fails is simply followed by the next.

Not yet here (the threaded worker has them): joining a torchrun round as a
rank (``DTR_RDZV_ROUND``), TLS and tokens, the pushed leader news, the
Prometheus metrics endpoint, and ``CheckpointManager`` (commits go through
``commit_checkpoint`` directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from dtr.errors import (
    CheckpointError,
    CoordinatorUnavailable,
    DtrError,
    InvalidArgument,
    MembershipChanged,
    StaleIncarnation,
    UnknownWorker,
    WorkerSuperseded,
)
from dtr.keys import validate_name
from dtr.proto import coordinator_pb2 as pb

from .aio_client import AsyncCoordinatorClient
from .arguments import (
    BARRIER_GRACE_S,
    BARRIER_POLL_S,
    DEREGISTER_REASON,
    MAX_CAPACITY,
    REARRIVE_PAUSE_S,
    BarrierOnChange,
    dataset_request,
    default_worker_id,
    epoch_arg,
    positive,
    progress_args,
    whole,
)
from .assignment import ShardAssignment
from .barrier_rules import (
    barrier_arguments,
    membership_changed,
    registered_again,
    rejoined,
    released_generation,
    superseded,
    timed_out,
    unavailable,
)
from .checkpoint_rpc import LatestCheckpoint, commit_ack, commit_request, latest_of
from .commit_flusher import CommitAck
from .commit_queue import CommitRecord

__all__ = ["AsyncCoordinatorClient", "AsyncWorker"]

_log = logging.getLogger(__name__)
_CLIENT_VERSION = "dtr-worker-aio/0.1"
_CLOSE_DEADLINE_S = 5.0


class AsyncWorker:
    """Membership of one worker on asyncio; see the module docstring."""

    def __init__(
        self,
        client: AsyncCoordinatorClient,
        *,
        worker_id: str | None = None,
        capacity: float = 1.0,
        heartbeat_interval_s: float = 1.0,
        stale_read_deadline_s: float = 2.0,
    ) -> None:
        """Validate everything; nothing is sent until ``start`` (or ``async with``).

        ``client`` is shared by every worker of the process and closed by its
        owner, not by the workers. ``worker_id`` defaults as the threaded
        worker's (``$DTR_WORKER_ID``, else ``<host>-rank<RANK>``, else
        ``<host>-<pid>``): give one per worker when a process runs many.
        """
        if not isinstance(client, AsyncCoordinatorClient):
            raise InvalidArgument(f"client must be an AsyncCoordinatorClient; got {client!r}")
        self.client = client
        self.job = client.job
        self.worker_id = validate_name("worker_id", worker_id or default_worker_id())
        self.capacity = positive("capacity", capacity, MAX_CAPACITY)
        self.heartbeat_interval_s = positive("heartbeat_interval_s", heartbeat_interval_s)
        self.stale_read_deadline_s = positive("stale_read_deadline_s", stale_read_deadline_s)
        self.heartbeat_timeout_s = 0.0
        self.job_life = ""
        self._incarnation = 0
        self._generation = 0  # the newest generation any answer about this worker carried
        self._superseded = False
        self._closed = False
        self._started = False
        self._rejoining: asyncio.Lock | None = None  # created on the worker's loop
        #: Registrations of this object so far: a call remembers the count it began
        #: under, so it can tell "this worker registered again meanwhile" from "another
        #: process took the id" even when the coordinator numbers incarnations afresh
        #: (after the record was removed, the next registration is incarnation 1 again).
        self._registrations = 0
        self._stop: asyncio.Event | None = None
        self._beats: asyncio.Task[None] | None = None
        self._latest: dict[str, ShardAssignment] = {}
        self._step, self._samples_per_s = 0, 0.0
        #: Beats answered; for tests and dashboards.
        self.acks = 0
        self.last_ack_at = 0.0

    # -- membership ---------------------------------------------------------------
    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def generation(self) -> int:
        """The newest membership generation this worker has heard of."""
        return max(self._generation, self.client.routing.generation)

    @property
    def superseded(self) -> bool:
        return self._superseded

    async def start(self) -> AsyncWorker:
        """Register with the leader and start beating; ``CoordinatorUnavailable`` if no
        leader accepted the registration within the client's retry deadline."""
        if self._started:
            raise InvalidArgument(f"worker {self.worker_id} was started already")
        if self._closed:
            raise InvalidArgument(f"worker {self.worker_id} is closed")
        self._rejoining = self._rejoining or asyncio.Lock()
        self._stop = self._stop or asyncio.Event()
        # Started only once registered: a start() that failed or was cancelled leaves a
        # worker that refuses every call (it has no incarnation to send) and may start again.
        await self._register()
        self._started = True
        self._beats = asyncio.create_task(
            self._beat_forever(), name=f"dtr-beats-{self.worker_id}"[:60]
        )
        return self

    async def __aenter__(self) -> AsyncWorker:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            await self.close()
        else:
            await self.close("error", f"{type(exc).__name__}: {exc}")

    def _note(self, method: str, started: float, header: pb.ResponseHeader, _: bool) -> None:
        del method, started
        self._generation = max(self._generation, header.generation)

    async def _call(self, method: str, build: Callable[[], Any], **kwargs: Any) -> Any:
        return await self.client.call(
            method, build, caller=self.worker_id, on_answer=self._note, **kwargs
        )

    async def _register(self) -> None:
        response = await self._call(
            "RegisterWorker",
            lambda: pb.RegisterWorkerRequest(
                worker_id=self.worker_id,
                capacity=self.capacity,
                host=socket.gethostname(),
                pid=os.getpid(),
                client_version=_CLIENT_VERSION,
            ),
            operation="register worker",
            mutating=True,
        )
        self._incarnation = response.incarnation
        self._registrations += 1
        self.job_life = response.job_life
        self.heartbeat_timeout_s = response.heartbeat_timeout_s
        _log.info(
            "worker %s registered as incarnation %d (generation %d)",
            self.worker_id,
            response.incarnation,
            response.header.generation,
        )

    async def rejoin(self, seen: int) -> None:
        """Register again as a new incarnation, unless this worker did since ``seen``
        (its registration count when the caller's call began)."""
        assert self._rejoining is not None, "start() first"
        async with self._rejoining:
            if seen != self._registrations:
                return  # another task of this worker rejoined already
            self._check_usable()
            _log.warning(
                "worker %s (incarnation %d) is unknown to the leader; registering again",
                self.worker_id,
                self._incarnation,
            )
            await self._register()

    async def _registered_since(self, seen: int) -> bool:
        """Whether this worker registered again since ``seen``, once any rejoin in flight
        is done: a STALE_INCARNATION answer racing our own rejoin is not a twin."""
        assert self._rejoining is not None, "start() first"
        async with self._rejoining:
            return seen != self._registrations

    def report_progress(self, step: int, samples_per_s: float | None = None) -> None:
        """Tell the coordinator (on the next beat) the step and throughput; never blocks."""
        progress_args(step, samples_per_s)
        if samples_per_s is not None:
            self._samples_per_s = float(samples_per_s)
        self._step = step

    def _check_usable(self) -> None:
        if self._superseded:
            raise WorkerSuperseded(
                f"worker {self.worker_id}: a newer incarnation registered; stop this process"
            )
        if self._closed:
            raise InvalidArgument(f"worker {self.worker_id} is closed")
        if not self._started:
            raise InvalidArgument(f"worker {self.worker_id}: call start() (or async with) first")
        if self.client.closed:
            raise InvalidArgument(f"worker {self.worker_id}: its coordinator client is closed")

    async def _member_call(self, method: str, build: Callable[[], Any], **kwargs: Any) -> Any:
        """A call about this worker; re-registers once if the leader does not know it."""
        self._check_usable()
        seen = self._registrations
        try:
            return await self._call(method, build, **kwargs)
        except UnknownWorker:
            await self.rejoin(seen)
            return await self._call(method, build, **kwargs)

    # -- heartbeats -----------------------------------------------------------------
    async def _beat_forever(self) -> None:
        """One unary beat per interval until closed or superseded; failures are logged once.

        Stopping is by ``_stop`` (``close``), never by cancelling: a rejoin in
        flight must finish, so that ``close`` deregisters the incarnation the
        leader wrote, not the one before it.
        """
        assert self._stop is not None
        sequence, outage_logged = 0, False
        policy = self.client.policy.with_deadline(max(3 * self.heartbeat_interval_s, 2.0))
        while not self._stop.is_set() and not self._superseded and not self.client.closed:
            sequence += 1
            seen = self._registrations
            pause_s = self.heartbeat_interval_s
            try:
                beat = pb.WorkerBeat(
                    worker_id=self.worker_id,
                    incarnation=self._incarnation,
                    sequence=sequence,
                    step=self._step,
                    samples_per_s=self._samples_per_s,
                )
                response = await self._call(
                    "Heartbeat",
                    functools.partial(pb.HeartbeatRequest, beat=beat),
                    operation="heartbeat",
                    mutating=True,
                    policy=policy,
                )
                outage_logged = False
                self.acks += 1
                self.last_ack_at = time.monotonic()
                await self._on_status(response.status, seen)
                pause_s = response.next_interval_s or pause_s
            except DtrError as err:
                if not outage_logged:
                    _log.warning("worker %s: heartbeats failing: %s", self.worker_id, err)
                    outage_logged = True
            except Exception:  # a bug must not silently end the beats (the leader would
                _log.exception("worker %s: heartbeat failed", self.worker_id)  # declare it dead)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause_s)

    async def _on_status(self, status: pb.WorkerStatus, seen: int) -> None:
        """A beat's verdict: rejoin when unknown or dead; stop when another process took the id."""
        if status == pb.WORKER_STATUS_OK:
            return
        if status == pb.WORKER_STATUS_STALE_INCARNATION:
            if not await self._registered_since(seen):  # not a beat from before our rejoin
                _log.error(
                    "worker %s: a newer incarnation of this id registered; this worker stops",
                    self.worker_id,
                )
                self._superseded = True
            return
        try:
            await self.rejoin(seen)
        except DtrError as err:
            _log.warning("worker %s: rejoining failed, will retry: %s", self.worker_id, err)

    # -- datasets and shards ------------------------------------------------------------
    async def register_dataset(
        self,
        name: str,
        num_shards: int,
        *,
        vnodes: int | None = None,
        load_factor: float | None = None,
    ) -> bool:
        """Declare a dataset (idempotent); True if this call created it (``Worker``'s rules)."""
        build = dataset_request(name, num_shards, vnodes=vnodes, load_factor=load_factor)
        self._check_usable()
        response = await self._call(
            "RegisterDataset", build, operation=f"register dataset {name!r}", mutating=True
        )
        return bool(response.created)

    async def get_shards(self, dataset: str, epoch: int = 0) -> list[int]:
        """This worker's shard ids of ``dataset`` for ``epoch``, ascending."""
        return list((await self.shard_assignment(dataset, epoch)).shard_ids)

    async def shard_assignment(self, dataset: str, epoch: int = 0) -> ShardAssignment:
        """This worker's shards with their generation; ``stale`` while partitioned."""
        validate_name("dataset", dataset)
        epoch_arg(epoch)
        cached = self._latest.get(dataset)
        policy = self.client.policy
        if cached is not None:
            policy = policy.with_deadline(self.stale_read_deadline_s)
        try:
            response = await self._member_call(
                "GetShards",
                lambda: pb.GetShardsRequest(dataset=dataset, epoch=epoch, worker_id=self.worker_id),
                operation=f"get shards of {dataset!r}",
                mutating=False,
                policy=policy,
            )
        except CoordinatorUnavailable as err:
            if cached is None:
                raise
            _log.warning(
                "no coordinator answered (%s); worker %s trains on the cached shards of %r "
                "from generation %d",
                err,
                self.worker_id,
                dataset,
                cached.generation,
            )
            return cached.as_stale(epoch)
        fresh = ShardAssignment.of_response(dataset, epoch, response)
        self._latest[dataset] = fresh
        return fresh

    # -- barriers -------------------------------------------------------------------
    async def barrier(
        self,
        name: str,
        timeout_s: float = 300.0,
        *,
        generation: int | None = None,
        on_change: BarrierOnChange = "rearrive",
    ) -> int:
        """Wait until every live member arrived at ``name``; the barrier's generation.

        ``Worker.barrier``'s contract, word for word: arrive again under the
        new generation after a membership change (``on_change="raise"``, or a
        pinned ``generation``, raise ``MembershipChanged`` instead);
        ``BarrierMissed`` when released without this incarnation;
        ``BarrierTimeout`` at ``timeout_s``; ``CoordinatorUnavailable`` when
        no coordinator answered before it.
        """
        generation, timeout_s, rearrive = barrier_arguments(name, timeout_s, generation, on_change)
        deadline = time.monotonic() + timeout_s
        last: pb.BarrierResponse | None = None
        pause_s = REARRIVE_PAUSE_S[0]
        while (remaining := deadline - time.monotonic()) > 0:
            believed = self.generation if generation is None else generation
            try:
                last = await self._barrier_poll(name, generation, remaining, timeout_s)
            except MembershipChanged:
                if not rearrive:
                    raise
                continue
            released = released_generation(last, name, self.worker_id, self._incarnation)
            if released is not None:
                return released
            if last.status == pb.BARRIER_STATUS_MEMBERSHIP_CHANGED:
                if not rearrive:
                    raise membership_changed(name, self.generation)
                if self.generation > believed:
                    pause_s = REARRIVE_PAUSE_S[0]
                else:  # no newer generation learned yet: do not spin on the coordinator
                    await asyncio.sleep(min(pause_s, max(0.0, deadline - time.monotonic())))
                    pause_s = min(2 * pause_s, REARRIVE_PAUSE_S[1])
        raise timed_out(name, timeout_s, last)

    async def _barrier_poll(
        self, name: str, generation: int | None, remaining_s: float, timeout_s: float
    ) -> pb.BarrierResponse:
        """One arrival (a long poll), bound to this incarnation; rejoins if the leader forgot us."""
        seen = self._registrations
        self._check_usable()
        poll_s = min(remaining_s, BARRIER_POLL_S)
        try:
            response: pb.BarrierResponse = await self._call(
                "Barrier",
                lambda: pb.BarrierRequest(
                    name=name,
                    worker_id=self.worker_id,
                    generation=self.generation if generation is None else generation,
                    timeout_s=poll_s,
                    incarnation=self._incarnation,
                ),
                operation=f"barrier {name!r}",
                mutating=True,
                policy=self.client.policy.with_deadline(remaining_s + BARRIER_GRACE_S),
                attempt_timeout_s=poll_s + BARRIER_GRACE_S,
            )
        except CoordinatorUnavailable as err:
            raise unavailable(name, timeout_s, err) from err
        except UnknownWorker as err:
            await self.rejoin(seen)
            raise rejoined(name, self.worker_id, self.generation) from err
        except StaleIncarnation as err:
            if await self._registered_since(seen):  # this worker registered again meanwhile
                raise registered_again(name, self.worker_id, self._incarnation) from err
            self._superseded = True  # another process took the id: a twin
            raise superseded(name, self.worker_id) from err
        return response

    # -- checkpoints --------------------------------------------------------------------
    async def commit_checkpoint(
        self, record: CommitRecord, deadline_s: float | None = None
    ) -> CommitAck:
        """Record a durable part with the leader; ``deadline_s`` shortens the retry budget."""
        if not isinstance(record, CommitRecord):
            raise InvalidArgument(f"record must be a CommitRecord; got {type(record).__name__}")
        if deadline_s is not None:
            positive("deadline_s", deadline_s)
        if self._closed:
            raise CheckpointError(
                f"worker {self.worker_id} is closed; the commit of step {record.step} was not sent"
            )
        self._check_usable()
        policy = self.client.policy.with_deadline(deadline_s) if deadline_s else None
        response = await self._call(
            "CommitCheckpoint",
            lambda: commit_request(record),
            operation=f"commit checkpoint step {record.step}",
            mutating=True,
            policy=policy,
        )
        return commit_ack(response)

    async def latest_checkpoint(self, before_step: int | None = None) -> LatestCheckpoint | None:
        """The job's latest complete step (strictly below ``before_step``), or None."""
        if before_step is not None:
            whole("before_step", before_step, 0, 2**64 - 1)
        self._check_usable()
        response = await self._call(
            "GetLatestCheckpoint",
            lambda: pb.GetLatestCheckpointRequest(before_step=before_step),
            operation="get latest checkpoint",
            mutating=False,
        )
        return latest_of(response)

    # -- leaving ------------------------------------------------------------------------
    async def close(
        self, reason: str | None = None, detail: str = "", *, deregister: bool = True
    ) -> None:
        """Stop beating and deregister (idempotent); errors are logged, not raised.

        ``reason``: None (shutdown), ``"preempted"`` or ``"error"``. The shared
        client stays open: its owner closes it.
        """
        if self._closed:
            return
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        beats, self._beats = self._beats, None
        if beats is not None:  # a beat or rejoin in flight finishes first (bounded)
            try:
                await asyncio.wait_for(asyncio.shield(beats), _CLOSE_DEADLINE_S)
            except TimeoutError:
                beats.cancel()
            except Exception:
                pass
        if self._rejoining is not None:
            async with self._rejoining:  # a rejoin of a call in flight: its incarnation
                pass
        if not (deregister and self._started and not self._superseded) or self.client.closed:
            return
        try:
            await self._call(
                "Deregister",
                lambda: pb.DeregisterRequest(
                    worker_id=self.worker_id,
                    incarnation=self._incarnation,
                    reason=DEREGISTER_REASON.get(reason, pb.DEREGISTER_REASON_SHUTDOWN),
                    detail=detail[:500],
                ),
                operation="deregister",
                mutating=True,
                policy=self.client.policy.with_deadline(_CLOSE_DEADLINE_S),
            )
        except DtrError as err:
            _log.warning("worker %s: deregistering failed: %s", self.worker_id, err)

    def __repr__(self) -> str:
        return (
            f"AsyncWorker({self.worker_id!r}, job={self.job!r}, "
            f"incarnation={self._incarnation}, generation={self.generation})"
        )


async def gather_workers(workers: list[AsyncWorker]) -> list[AsyncWorker]:
    """Start many workers at once (their registrations share transactions on the leader)."""
    started: list[Awaitable[AsyncWorker]] = [w.start() for w in workers]
    return list(await asyncio.gather(*started))
