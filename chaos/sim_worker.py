"""One simulated worker: ``dtr.chaos.workload``'s training loop without the training.

A ``SimWorker`` is a coroutine on its process's event loop that speaks the
real protocol to the real coordinators and records the same history as a
real chaos worker (the ``dtr.chaos.checkers`` schema), at a fraction of the
cost: a step is ``await asyncio.sleep(step_time_s)``, a checkpoint part is a
few hundred bytes (``sim_checkpoint.py``), commit records stay in memory
(``sim_commits.py``) and membership is ``sim_member.py``. Its life:

1. register, ``load`` the latest complete step that verifies (a restarted
   simulated process resumes like a real worker, invariant 6), register the
   dataset ``"chaos"`` (idempotent);
2. per block of ``save_every`` steps (an "epoch"): ``GetShards`` (recorded
   ``get_shards``; the cached assignment, marked stale, when no coordinator
   answers), then the steps (``train``);
3. after each block: ``save`` the part, queue its commit, and meet the others
   at barrier ``step-<n>``, arriving again under the new generation whenever
   membership moved, until the barrier timeout. A barrier released without
   this incarnation (MISSED) is final: the worker loads the latest complete
   step if it is ahead of its own and otherwise trains on, as the real chaos
   workload does (docs/concepts.md, Barrier); any other barrier failure is
   recorded and training goes on;
4. at the end: wait until every commit is answered, meet the others at
   barrier ``done`` (a member that left early would bump the generation and
   leave the last steps forever incomplete), and deregister.

An unexpected error deregisters the worker (reason ERROR) and propagates to
the process, which reports it; cancellation (SIGTERM) just stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from dtr.errors import (
    BarrierMissed,
    BarrierTimeout,
    CheckpointError,
    CoordinatorUnavailable,
    DtrError,
    MembershipChanged,
    UnknownWorker,
)
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.storage import Storage
from dtr.worker.arguments import BARRIER_POLL_S
from dtr.worker.checkpoint_rpc import latest_of

from .history import History
from .sim_checkpoint import commit_record, part_to_load, verify_part, write_part
from .sim_client import SimClient
from .sim_commits import CommitSender
from .sim_member import SimMember, steps_per_s
from .sim_recorder import Recorder

_log = logging.getLogger(__name__)
DATASET = "chaos"
#: How much longer than a barrier poll an answer may take (``dtr.worker.Worker``'s grace).
_BARRIER_GRACE_S = 2.0
#: With an assignment cached, a coordinator gets this long before it is served again.
_STALE_READ_DEADLINE_S = 2.0
#: How long the last commits may take to be answered before the worker gives up.
DRAIN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SimSettings:
    """What every simulated worker of a process is told (the ``sim_workload`` flags)."""

    job: str
    steps: int
    step_time_s: float
    save_every: int
    barrier_timeout_s: float
    heartbeat_interval_s: float
    shards: int


@dataclass(frozen=True)
class _Assignment:
    shard_ids: tuple[int, ...]
    generation: int
    num_shards: int


class SimWorker:
    """One simulated worker; ``run()`` is its whole life (see the module docstring)."""

    def __init__(
        self,
        worker_id: str,
        client: SimClient,
        storage: Storage,
        history: History,
        settings: SimSettings,
    ) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.storage = storage
        self.recorder = Recorder(history, worker_id)
        self.member = SimMember(
            worker_id, client, self.recorder, heartbeat_interval_s=settings.heartbeat_interval_s
        )
        self.commits = CommitSender(self.member)
        self.member.checkpoint_progress = self._progress
        self._assignment: _Assignment | None = None
        self._saves_in_flight = 0
        self._last_durable_step: int | None = None
        self._background: list[asyncio.Task[None]] = []
        #: The last step trained, and whether the worker finished everything.
        self.step = 0
        self.finished = False

    # -- life ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Register, train every step, leave; raises what stopped it early."""
        await self.member.register()
        self._background = [
            asyncio.create_task(self.member.beat_forever(), name=f"{self.worker_id}-beats"),
            asyncio.create_task(self.commits.deliver_forever(), name=f"{self.worker_id}-commits"),
        ]
        try:
            await self._work()
        except BaseException as err:
            await self._stop_background()
            if isinstance(err, Exception):  # not a cancellation: leave, so nobody waits for us
                await self.member.deregister(
                    pb.DEREGISTER_REASON_ERROR, f"{type(err).__name__}: {err}"
                )
            raise
        broken = await self._stop_background()
        if broken is not None:
            await self.member.deregister(pb.DEREGISTER_REASON_ERROR, repr(broken))
            raise broken
        await self.member.deregister(pb.DEREGISTER_REASON_FINISHED)
        self.finished = True

    async def _work(self) -> None:
        step = await self._load()
        await self.member.call(
            "RegisterDataset",
            lambda: pb.RegisterDatasetRequest(name=DATASET, num_shards=self.settings.shards),
            operation=f"register dataset {DATASET!r}",
            mutating=True,
        )
        await self._train(step)
        if not await self.commits.drain(DRAIN_TIMEOUT_S):
            raise CheckpointError(
                f"{self.commits.depth} commits still unanswered after {DRAIN_TIMEOUT_S:g} s"
            )
        await self._barrier("done")

    async def _stop_background(self) -> BaseException | None:
        """Cancel the beats and the commit delivery; the error that ended one early, if any."""
        for task in self._background:
            task.cancel()
        results = await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        errors = (r for r in results if isinstance(r, BaseException))
        return next((e for e in errors if not isinstance(e, asyncio.CancelledError)), None)

    def _progress(self) -> pb.CheckpointProgress:
        progress = pb.CheckpointProgress(
            saves_in_flight=self._saves_in_flight, commits_queued=self.commits.depth
        )
        if self._last_durable_step is not None:
            progress.last_durable_step = self._last_durable_step
        if self.commits.last_committed_step is not None:
            progress.last_committed_step = self.commits.last_committed_step
        return progress

    # -- loading ------------------------------------------------------------------------
    async def _load(self) -> int:
        """The step to resume from, recorded as ``load`` (0: start afresh)."""
        op_id = self.recorder.op_id()
        self.recorder.event("invoke", "load", {}, op_id)
        try:
            step = await self._latest_loadable_step()
        except DtrError as err:
            self.recorder.event("fail", "load", {"error": type(err).__name__}, op_id)
            raise
        self.recorder.event("ok", "load", {"step": step or None}, op_id)
        return step

    async def _latest_loadable_step(self) -> int:
        """The newest complete step whose part verifies, as ``CheckpointManager.load_latest``."""
        latest = latest_of(await self._get_latest(None))
        while latest is not None:
            try:
                part = part_to_load(latest, self.worker_id)
                await asyncio.to_thread(verify_part, self.storage, part)
                return int(latest.step)
            except CheckpointError as err:
                _log.warning("%s: step %d does not load: %s", self.worker_id, latest.step, err)
                latest = latest_of(await self._get_latest(latest.step))
        return 0

    async def _get_latest(self, before_step: int | None) -> Any:
        return await self.member.call(
            "GetLatestCheckpoint",
            lambda: pb.GetLatestCheckpointRequest(before_step=before_step),
            operation="get latest checkpoint",
            mutating=False,
        )

    # -- training -----------------------------------------------------------------------
    async def _train(self, step: int) -> None:
        settings = self.settings
        started, first = time.monotonic(), step
        while step < settings.steps:
            if step % settings.save_every == 0 or self._assignment is None:
                await self._fetch_shards(step // settings.save_every)
            await asyncio.sleep(settings.step_time_s)
            self.member.check_usable()
            step = self.step = self.member.step = step + 1
            self.member.samples_per_s = steps_per_s(step - first, started)
            self.recorder.event("ok", "train", {"step": step})
            if step % settings.save_every == 0:
                await self._save(step)
                if await self._barrier(f"step-{step}"):
                    step = self.step = await self._catch_up(step)

    async def _catch_up(self, step: int) -> int:
        """After a missed barrier: the latest loadable step if ahead of ``step``, else ``step``.

        Never going back ends the loop: the barriers a restarted worker
        replays were released without its new incarnation, and reloading the
        same older step at each of them would replay them forever.
        """
        latest = await self._load()
        return latest if latest > step else step

    async def _fetch_shards(self, epoch: int) -> None:
        """This epoch's shards, recorded as ``get_shards``; the cached ones when nobody answers."""
        cached = self._assignment
        policy = self.member.client.policy
        if cached is not None:
            policy = policy.with_deadline(_STALE_READ_DEADLINE_S)
        try:
            response = await self._get_shards(epoch, policy)
        except CoordinatorUnavailable as err:
            if cached is None:
                raise
            _log.warning("%s: training on cached shards (%s)", self.worker_id, err)
            self._record_shards(epoch, cached, stale=True)
            return
        fresh = _Assignment(tuple(response.shard_ids), response.generation, response.num_shards)
        self._assignment = fresh
        self._record_shards(epoch, fresh, stale=False)

    async def _get_shards(self, epoch: int, policy: RetryPolicy) -> Any:
        """GetShards, re-registering once if the leader does not know this worker."""

        def call() -> Any:
            return self.member.call(
                "GetShards",
                lambda: pb.GetShardsRequest(dataset=DATASET, epoch=epoch, worker_id=self.worker_id),
                operation=f"get shards of {DATASET!r}",
                mutating=False,
                policy=policy,
            )

        seen = self.member.incarnation
        try:
            return await call()
        except UnknownWorker:
            await self.member.rejoin(seen)
            return await call()

    def _record_shards(self, epoch: int, assignment: _Assignment, *, stale: bool) -> None:
        value = {
            "dataset": DATASET,
            "epoch": epoch,
            "shard_ids": list(assignment.shard_ids),
            "num_shards": assignment.num_shards,
            "stale": stale,
        }
        self.recorder.event("ok", "get_shards", value, generation=assignment.generation)

    # -- checkpoints --------------------------------------------------------------------
    async def _save(self, step: int) -> None:
        """Write this step's part, queue its commit; recorded as ``save`` (ok once queued)."""
        op_id = self.recorder.op_id()
        self.recorder.event("invoke", "save", {"step": step}, op_id)
        generation = self.member.generation
        self._saves_in_flight += 1
        try:
            stored = await asyncio.to_thread(
                write_part, self.storage, step, self.worker_id, generation
            )
        except DtrError as err:
            self.recorder.event("fail", "save", {"step": step, "error": type(err).__name__}, op_id)
            return
        finally:
            self._saves_in_flight -= 1
        record = commit_record(
            stored,
            self.storage,
            job=self.settings.job,
            step=step,
            worker_id=self.worker_id,
            generation=generation,
        )
        self.commits.append(record)
        self._last_durable_step = step
        self.recorder.event("ok", "save", {"step": step}, op_id)

    # -- barriers -----------------------------------------------------------------------
    async def _barrier(self, name: str) -> bool:
        """Arrive at ``name`` until released, arriving again while membership moves.

        True when the barrier was released without this incarnation (final).
        Gives up (recorded, training goes on) at the barrier timeout, on any
        other failure, or when membership changed without a newer generation
        to arrive under.
        """
        deadline = time.monotonic() + self.settings.barrier_timeout_s
        while True:
            believed = self.member.generation
            try:
                await self._arrive(name, believed, deadline)
            except MembershipChanged:
                if self.member.generation > believed and time.monotonic() < deadline:
                    continue
            except BarrierMissed:
                return True
            except DtrError:
                pass
            return False

    async def _arrive(self, name: str, believed: int, deadline: float) -> int:
        """One recorded arrival under generation ``believed``; the released generation."""
        op_id = self.recorder.op_id()
        self.recorder.event("invoke", "barrier", {"name": name, "generation": believed}, op_id)
        try:
            generation = await self._wait_release(name, believed, deadline)
        except DtrError as err:
            self.recorder.event(
                "fail", "barrier", {"name": name, "error": type(err).__name__}, op_id
            )
            raise
        except BaseException:
            self.recorder.event("info", "barrier", {"name": name}, op_id)
            raise
        self.recorder.event("ok", "barrier", {"name": name, "generation": generation}, op_id)
        return generation

    async def _wait_release(self, name: str, believed: int, deadline: float) -> int:
        """Long polls of at most ``BARRIER_POLL_S`` until a verdict, as ``Worker.barrier``."""
        last: pb.BarrierResponse | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            last = await self._poll(name, believed, min(remaining, BARRIER_POLL_S), remaining)
            if last.status == pb.BARRIER_STATUS_RELEASED:
                return int(last.barrier_generation)
            if last.status == pb.BARRIER_STATUS_MISSED:
                raise BarrierMissed(
                    f"barrier {name!r} was released without this worker (incarnation "
                    f"{self.member.incarnation})"
                )
            if last.status == pb.BARRIER_STATUS_MEMBERSHIP_CHANGED:
                raise MembershipChanged(
                    f"barrier {name!r}: membership changed before release (now generation "
                    f"{self.member.generation})"
                )
        arrived = f"{last.arrived}/{last.expected}" if last else "?"
        raise BarrierTimeout(
            f"barrier {name!r}: not released within {self.settings.barrier_timeout_s:g} s "
            f"({arrived} arrived)"
        )

    async def _poll(
        self, name: str, believed: int, poll_s: float, remaining_s: float
    ) -> pb.BarrierResponse:
        seen = self.member.incarnation
        self.member.check_usable()
        try:
            response: pb.BarrierResponse = await self.member.call(
                "Barrier",
                lambda: pb.BarrierRequest(
                    name=name,
                    worker_id=self.worker_id,
                    generation=believed,
                    timeout_s=poll_s,
                    incarnation=self.member.incarnation,
                ),
                operation=f"barrier {name!r}",
                mutating=True,
                policy=self.member.client.policy.with_deadline(remaining_s + _BARRIER_GRACE_S),
                attempt_timeout_s=poll_s + _BARRIER_GRACE_S,
            )
        except UnknownWorker as err:
            await self.member.rejoin(seen)
            raise MembershipChanged(
                f"barrier {name!r}: this worker had been removed from the job and rejoined"
            ) from err
        return response
