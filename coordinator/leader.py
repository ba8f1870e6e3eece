"""The coordinator's state machine: fenced writes, heartbeats, failure detection.

``Coordinator`` is the one place that turns requests into etcd writes. Every
write is ``[term.fence(), *plan.compares] → plan.ops`` in one transaction:
if the fence fails the replica steps down and answers NOT_LEADER; if only
the plan's own compares fail, the cached view was stale, so it is re-read and
the request re-planned. The leader's in-memory state is a cache of etcd plus
heartbeat times; a new term rebuilds it from etcd and gives every known
worker a full heartbeat timeout of grace (DESIGN §1, §4).

``run_cycle()`` is the leader loop of STYLE rule 1: it returns a status line
that the server logs (and tests can assert).

A write runs to its end even when the call that asked for it is cancelled
(a client deadline, a disconnect): etcd may apply the transaction anyway, so
abandoning it half-way would leave this cache behind etcd without knowing
it (``_to_the_end``). Every transaction is checked against etcd's limits
before it is sent (``dtr.store_types.check_txn_limits``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from dtr import mutants
from dtr.errors import CoordinatorUnavailable, DtrError, NotLeader, StoreUnavailable
from dtr.keys import JobKeys
from dtr.store import Compare, EtcdStore, Get, Op, Put, TxnResult
from dtr.store_types import check_txn_limits

from .barrier_retention import forget_barriers
from .barriers import (
    MAX_ARRIVALS_PER_TXN,
    Barriers,
    BarrierState,
    Outcome,
    check_arrival,
    check_incarnation,
    plan_arrivals,
    reopened,
    retention_period,
    still_valid,
)
from .checkpoints import (
    CheckpointBook,
    CommitDecision,
    CompleteRecord,
    PartRecord,
    decode_step,
    read_latest,
    retention_ops,
    step_reads,
)
from .commit_batches import (
    MAX_STEPS_PER_READ,
    BatchPlan,
    CommitAnswer,
    PendingCommit,
    plan_commit_batch,
    steps_to_load,
)
from .config import CoordinatorConfig
from .election import Elector, Term
from .membership import (
    WritePlan,
    batches,
    expired_workers,
    plan_deregister,
    plan_mark_dead,
    plan_register,
    plan_register_dataset,
)
from .metrics import CoordinatorMetrics
from .registrations import Registration, RegistrationBatcher
from .rounds import (
    ROUND_HOLD_S,
    RoundGate,
    RoundJoin,
    Verdict,
    judge,
    newest_round,
    plan_round,
    stale_round,
)
from .shard_cache import ShardCache
from .state import ClusterView, DatasetRecord, MemberRecord, load_view
from .validation import CheckpointCommit, CheckpointProgressReport

_log = logging.getLogger(__name__)
_STALE_RETRIES = 3
_T = TypeVar("_T")
#: Workers named in one "declared dead" log line; the rest are counted.
_DEAD_LISTED = 10


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Consume a finished task's outcome (its caller may have gone)."""
    if not task.cancelled():
        task.exception()


async def _to_the_end(operation: Coroutine[Any, Any, _T]) -> _T:
    """Await ``operation`` but let it finish even if this await is cancelled.

    The caller sees the cancellation at once; the write and the cache update
    that follows it complete on their own task.
    """
    task = asyncio.ensure_future(operation)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)


@dataclass
class Liveness:
    """What the leader remembers of a worker between beats (never written to etcd)."""

    last_seen: float
    step: int = 0
    samples_per_s: float = 0.0
    checkpoint: CheckpointProgressReport | None = None


class _StalePlan(Exception):
    """The plan's compares failed: the cached view is behind etcd."""


class Coordinator:
    """Leader-side logic of one replica; followers use its read path only."""

    def __init__(
        self,
        store: EtcdStore,
        keys: JobKeys,
        config: CoordinatorConfig,
        elector: Elector,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self.metrics = metrics or CoordinatorMetrics()
        self.store = store
        self.keys = keys
        self.config = config
        self.elector = elector
        self._clock = clock
        self._term: Term | None = None
        self._view = ClusterView()
        self._liveness: dict[str, Liveness] = {}
        self._write_lock = asyncio.Lock()
        self._takeover_lock = asyncio.Lock()
        self.shards = ShardCache()
        self._stale = False
        self.barriers = Barriers(keys)
        self.rounds = RoundGate()
        self.registrations = RegistrationBatcher(
            keys, self._write, self._seen_now, config.register_batch_max
        )
        self._flusher: asyncio.Task[None] | None = None
        self.checkpoints = CheckpointBook()
        self._commits: collections.deque[PendingCommit] = collections.deque()
        self._commit_flusher: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._retention_due = False
        self._releases_unretained = 0
        self._barrier_retention: asyncio.Task[None] | None = None
        #: Called when this replica stops leading (rendezvous store waits end).
        self.term_lost_listeners: list[Callable[[], None]] = []

    # -- leadership --------------------------------------------------------------
    def not_leader(self) -> NotLeader:
        address = self.elector.leader_hint()
        return NotLeader(f"this replica is not the leader; leader: {address or 'unknown'}", address)

    def _lose_term(self) -> None:
        """No longer the leader: barrier waiters learn it now, not at their poll's end.

        Without this, a worker long-polling a barrier on a deposed leader (one
        cut off from etcd still answers its workers) waited out its whole poll
        before asking the new leader: the chaos harness measured 10 s stalls.
        """
        if self._term is not None:
            self._term = None
            self.barriers.reset(self.not_leader())
            self.rounds.reset()
            for listener in self.term_lost_listeners:
                listener()

    async def leading_term(self) -> Term:
        """My term (NOT_LEADER if I have none): for calls only the leader answers."""
        return await self._leading_term()

    async def _leading_term(self) -> Term:
        """My term, with the view rebuilt from etcd if the term is new to me."""
        term = self.elector.current_term()
        if term is None:
            self._lose_term()
            raise self.not_leader()
        if term != self._term or self._stale:
            async with self._takeover_lock:  # one re-read at a time, newest wins
                if term != self._term or self._stale:
                    await self._rebuild(term)
        return term

    async def _rebuild(self, term: Term) -> None:
        """Re-read the view from etcd (a new term, or a stale view within this term)."""
        with self.metrics.etcd("read_view"):
            view = await asyncio.to_thread(load_view, self.store, self.keys)
        if term != self._term:
            if not view.job_life:
                view = await self._create_job_life(term, view)
            now = self._clock()
            self._liveness = {w: Liveness(now) for w, m in view.members.items() if m.alive}
            self.barriers.reset(CoordinatorUnavailable("leadership changed; retry"))
            self.rounds.reset()
            _log.info(
                "term %d: took over; generation %d, %d live workers, job life %s",
                term.revision,
                view.generation,
                len(view.live_members()),
                view.job_life,
            )
        else:
            # The cache went stale (a write's outcome is unknown). Its barrier
            # states may be wrong, so they are dropped; their waiters are told
            # at once (UNAVAILABLE: retry), and their retries re-read etcd,
            # instead of each sitting out its whole long poll.
            self.barriers.reset(CoordinatorUnavailable("leader cache refreshed; retry"))
        self.checkpoints.reset()
        self._view, self._term, self._stale = view, term, False

    async def _create_job_life(self, term: Term, view: ClusterView) -> ClusterView:
        """Write the job's uid (fenced, only if absent) and re-read the view.

        A job life begins with its first leader: a job name whose prefix was
        wiped, or reused on another etcd cluster, gets a new uid, and workers
        tag their local state with it (DESIGN §5 invariant 5).
        """
        created = Put(self.keys.job_life, uuid.uuid4().hex.encode())
        await self._leader_txn(term, [Compare.absent(self.keys.job_life)], [created])
        view = await asyncio.to_thread(load_view, self.store, self.keys)
        if not view.job_life:  # the fence failed: this term is over
            raise CoordinatorUnavailable(
                "the job life could not be created (leadership moved); retry"
            )
        return view

    @property
    def is_leader(self) -> bool:
        return self.elector.current_term() is not None

    # -- writing -----------------------------------------------------------------
    async def _write(
        self,
        planner: Callable[[ClusterView], WritePlan | None],
        prepare: Callable[[], Awaitable[None]] | None = None,
        on_applied: Callable[[ClusterView], None] | None = None,
    ) -> ClusterView:
        """Plan against the cached view and apply it fenced; re-plan on a stale view.

        ``prepare`` runs under the write lock before each planning, to load
        (after a stale view: reload) state the planner needs besides the view.
        ``on_applied`` runs under the write lock right after the plan applied:
        caches that the next plan reads (barrier states, the checkpoint book)
        must be updated before the next writer plans, or it plans on a cache
        that misses this write. The write finishes even if the caller is
        cancelled (``_to_the_end``).
        """
        if mutants.active(mutants.CANCELLED_WRITE):  # MUTANT cancelled-write: no shield
            return await self._write_locked(planner, prepare, on_applied)
        return await _to_the_end(self._write_locked(planner, prepare, on_applied))

    async def _write_locked(
        self,
        planner: Callable[[ClusterView], WritePlan | None],
        prepare: Callable[[], Awaitable[None]] | None,
        on_applied: Callable[[ClusterView], None] | None,
    ) -> ClusterView:
        failure: StoreUnavailable | None = None
        async with self._write_lock:
            for _ in range(_STALE_RETRIES):
                term = await self._leading_term()
                if prepare is not None:
                    await prepare()
                plan = planner(self._view)
                if plan is None:
                    return self._view
                try:
                    view = await self._apply(term, plan)
                except _StalePlan:
                    self._stale = True  # re-read the view, then re-plan
                except StoreUnavailable as err:
                    # Outcome unknown (short per-request timeout): re-read and
                    # re-plan at once; the plan's compares make a retry of a
                    # write that did apply a no-op or a fresh, correct write.
                    failure, self._stale = err, True
                else:
                    if on_applied is not None:
                        on_applied(view)
                    return view
            raise failure or StoreUnavailable("etcd state kept changing under this write; retry")

    async def _apply(self, term: Term, plan: WritePlan) -> ClusterView:
        try:
            result = await self._leader_txn(term, plan.compares, plan.ops)
        except StoreUnavailable:
            self._stale = True  # the outcome is unknown: re-read before the next write
            raise
        if result.succeeded:
            moved = plan.view.generation != self._view.generation
            self._view = plan.view.replace(revision=result.revision)
            if moved:
                self.barriers.on_generation(self._view)
            return self._view
        self._check_fence(term, result)
        raise _StalePlan()

    async def _leader_txn(
        self,
        term: Term,
        compares: Sequence[Compare],
        ops: Sequence[Op],
        reads: Sequence[Get] = (),
    ) -> TxnResult:
        """The one way a leader writes: ``[fence, *compares] → [*ops, stamp]``, else reads.

        The fence is the leader key's create revision (DESIGN §4); the stamp
        (``<J>/writer``: replica and term) makes etcd's own history name the
        writer of every leader transaction (DESIGN §5.1). The leader key is
        the first read on failure, for ``_check_fence``. Checked against
        etcd's limits before it is sent.
        """
        fence = [term.fence()] if self.elector.self_fencing else []
        stamp = {"replica": self.elector.replica_id, "term": term.revision}
        stamped = [*ops, Put(self.keys.writer, json.dumps(stamp, sort_keys=True).encode())]
        failure = [Get(term.key), *reads]
        if not mutants.active(mutants.UNBOUNDED_MARK_DEAD):  # MUTANT unbounded-mark-dead
            check_txn_limits([*fence, *compares], stamped, failure)
        with self.metrics.etcd("write"):
            return await asyncio.to_thread(self.store.txn, [*fence, *compares], stamped, failure)

    def _check_fence(self, term: Term, refused: TxnResult) -> None:
        """After a refused transaction whose first failure read is the leader key:
        step down (and raise NOT_LEADER) if the fence is what failed."""
        leader_kvs = refused.results[0]
        if (
            not isinstance(leader_kvs, tuple)
            or not leader_kvs
            or (leader_kvs[0].create_revision != term.revision)
        ):
            self.elector.step_down(f"fenced write refused: term {term.revision} is over")
            self._lose_term()
            raise self.not_leader()

    async def fenced_txn(
        self, compares: Sequence[Compare], ops: Sequence[Op], reads: Sequence[Get] = ()
    ) -> TxnResult:
        """``[fence, *compares] → ops``, else ``reads``, for state outside the cluster view.

        The torchrun rendezvous keeps its own keys (coordinator/rendezvous.py):
        they need the fence and the step-down of every leader write, not the
        view's plan-and-retry. A refused fence raises NOT_LEADER; a refusal
        of ``compares`` returns the result with only ``reads``' results.
        """
        term = await self._leading_term()
        result = await self._leader_txn(term, compares, ops, reads)
        if result.succeeded:
            return result
        self._check_fence(term, result)
        return replace(result, results=result.results[1:])

    # -- requests ----------------------------------------------------------------
    async def register_worker(
        self, worker_id: str, capacity: float, *, host: str, pid: int
    ) -> tuple[MemberRecord, ClusterView]:
        """A new live incarnation, group-committed with its neighbours (``registrations.py``)."""
        return await self.registrations.register(Registration(worker_id, capacity, host, pid))

    def _seen_now(self, worker_id: str) -> None:
        self._liveness[worker_id] = Liveness(self._clock())

    async def register_round_member(
        self, join: RoundJoin
    ) -> tuple[MemberRecord | None, ClusterView]:
        """A torchrun rank's registration (``rounds.py``): its record once the whole round
        is written, None while the round still forms (the rank asks again)."""
        await self._leading_term()
        forming = self.rounds.newest(join.rdzv_id)
        if forming is not None and forming > join.order:
            raise stale_round(join, forming)  # a newer round forms: this process is a leftover
        verdict = judge(self._view, join)
        if verdict is Verdict.REJOIN and not self.rounds.writing(join):
            await self._rejoin_round(join)
        elif verdict is not Verdict.MEMBER:  # JOIN, or REJOIN of a round being written
            whole = self.rounds.add(join)
            if whole is None:
                await self.rounds.wait(join, ROUND_HOLD_S)
            else:
                await _to_the_end(self._write_round(whole))
            await self._leading_term()  # a term lost meanwhile answers NOT_LEADER
        view = self._view
        verdict = judge(view, join)
        if verdict is Verdict.STALE:
            raise stale_round(join, newest_round(view, join.rdzv_id))
        return (view.members[join.worker_id] if verdict is Verdict.MEMBER else None), view

    async def _write_round(self, joins: list[RoundJoin]) -> None:
        """Write a whole round: one transaction (one generation) per batch of changes."""
        written = False

        def seen_now(view: ClusterView) -> None:
            for join in joins:  # a full timeout of grace from now, as any registration gets
                if join.worker_id in view.members:
                    self._liveness[join.worker_id] = Liveness(self._clock())

        planned = [True]

        def planner(view: ClusterView) -> WritePlan | None:
            plan = plan_round(self.keys, view, joins)  # what is left, on the current view
            planned.append(plan is not None)
            return plan

        try:
            # One batch per transaction, each planned under the write lock on the view
            # as it is then; bounded: every applied batch leaves fewer changes.
            async with self.registrations.in_order(join.worker_id for join in joins):
                for _ in range(len(self._view.members) + len(joins) + 2):
                    await self._write(planner, on_applied=seen_now)
                    if not planned[-1]:
                        break
            written = True
        finally:
            self.rounds.written(joins[0], written)

    async def _rejoin_round(self, join: RoundJoin) -> None:
        """A rank of a written round that is not a live member registers alone (once)."""

        def planner(view: ClusterView) -> WritePlan | None:
            if judge(view, join) is not Verdict.REJOIN:
                return None  # written meanwhile (a retry of this very call): nothing to do
            return plan_register(
                self.keys,
                view,
                join.worker_id,
                join.capacity,
                host=join.host,
                pid=join.pid,
                rdzv=join.tag,
            )

        def seen_now(view: ClusterView) -> None:
            self._liveness[join.worker_id] = Liveness(self._clock())

        async with self.registrations.in_order([join.worker_id]):
            await self._write(planner, on_applied=seen_now)

    async def heartbeat(
        self,
        worker_id: str,
        incarnation: int,
        step: int,
        samples_per_s: float,
        checkpoint: CheckpointProgressReport | None = None,
    ) -> tuple[str, ClusterView]:
        """Record a beat in memory; returns "ok", "unknown", "dead" or "stale_incarnation"."""
        await self._leading_term()
        record = self._view.members.get(worker_id)
        if record is None:
            return "unknown", self._view
        if not record.alive:
            return "dead", self._view
        if incarnation and incarnation != record.incarnation:
            return "stale_incarnation", self._view
        seen = self._liveness.get(worker_id)
        if seen is None:
            self._liveness[worker_id] = Liveness(self._clock(), step, samples_per_s, checkpoint)
        else:  # in place: this is the hot path of every beat
            seen.last_seen, seen.step, seen.samples_per_s = self._clock(), step, samples_per_s
            seen.checkpoint = checkpoint
        return "ok", self._view

    async def deregister(self, worker_id: str, incarnation: int) -> bool:
        """Remove a worker that exits cleanly; False if it was already gone."""
        planned: list[bool] = []

        def planner(view: ClusterView) -> WritePlan | None:
            plan = plan_deregister(self.keys, view, worker_id, incarnation)
            planned.append(plan is not None)
            return plan

        async with self.registrations.in_order([worker_id]):
            await self._write(planner)
        self._liveness.pop(worker_id, None)
        return planned[-1]

    async def register_dataset(self, wanted: DatasetRecord) -> tuple[DatasetRecord, bool]:
        """Create a dataset, or confirm it as it is; the flag says whether this call created it."""
        planned: list[bool] = []

        def planner(view: ClusterView) -> WritePlan | None:
            plan = plan_register_dataset(self.keys, view, wanted)
            planned.append(plan is not None)
            return plan

        view = await self._write(planner)
        return view.datasets[wanted.name], planned[-1]

    # -- barriers ----------------------------------------------------------------
    async def barrier_arrive(
        self,
        name: str,
        worker_id: str,
        believed_generation: int,
        wait_s: float,
        incarnation: int = 0,
    ) -> Outcome:
        """Arrive (idempotently) and wait up to ``wait_s`` for the barrier's fate."""
        await self._leading_term()
        check_incarnation(self._view, worker_id, incarnation)
        state = await self._barrier(name)
        if state.released:
            # A retry of an arrival answers RELEASED whatever the generation is
            # now. A worker incarnation that did not arrive (it was dead,
            # joined later, or is a restart of the one that did) never
            # synchronized with anyone there and never will: MISSED, terminal.
            member = self._view.members.get(worker_id)
            mine = incarnation or (member.incarnation if member is not None else 0)
            if state.has_arrival_of(worker_id, mine):
                return state.outcome(self._view)
            return replace(state.outcome(self._view), status="missed")
        check_arrival(self._view, worker_id, believed_generation, incarnation)
        done = self.barriers.waiter(state)
        if worker_id not in state.arrived:
            arrival = (self._view.members[worker_id].incarnation, state.generation)
            self.barriers.pending.setdefault(name, {})[worker_id] = arrival
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush_arrivals())
        try:
            return await asyncio.wait_for(asyncio.shield(done), wait_s)
        except TimeoutError:
            return self.barriers.states.get(name, state).outcome(self._view)

    async def _barrier(self, name: str) -> BarrierState:
        """The barrier as this term knows it, loaded from etcd the first time."""
        state = self.barriers.states.get(name)
        if state is None:
            result = await asyncio.to_thread(self.store.txn, [], self.barriers.reads(name))
            state = self.barriers.states.get(name) or self.barriers.decode(name, result.results)
        state = reopened(state, name, self._view)
        self.barriers.states[name] = state
        return state

    async def _flush_arrivals(self) -> None:
        """Write pending arrivals, a group per transaction, until none are left."""
        while self.barriers.pending:
            name, arrivals = self.barriers.pending.popitem()
            ordered = sorted(arrivals.items())
            for start in range(0, len(ordered), MAX_ARRIVALS_PER_TXN):
                group = dict(ordered[start : start + MAX_ARRIVALS_PER_TXN])
                try:
                    await self._write_arrivals(name, group)
                except DtrError as err:
                    state = self.barriers.states.get(name)
                    if state is not None and state.done is not None and not state.done.done():
                        state.done.set_exception(err)
                    break

    async def _write_arrivals(self, name: str, arrivals: dict[str, tuple[int, int]]) -> None:
        written: list[BarrierState] = []

        def planner(view: ClusterView) -> WritePlan | None:
            written.clear()
            state = self.barriers.states.get(name)
            if state is None or (not state.released and state.generation != view.generation):
                return None  # the barrier failed or was forgotten; its waiters retry
            workers = still_valid(view, state, arrivals)
            if not workers:
                return None
            plan, new = plan_arrivals(self.keys, view, state, workers)
            written.append(new)
            return plan if plan.ops else None

        def applied(view: ClusterView) -> None:
            self.barriers.on_written(written[-1], view)
            if written[-1].released:
                self._releases_unretained += 1
                if self._releases_unretained >= retention_period(self.config.keep_barriers) and (
                    self._barrier_retention is None or self._barrier_retention.done()
                ):
                    self._barrier_retention = asyncio.create_task(self._retain_barriers())

        await self._write(planner, on_applied=applied)

    async def _retain_barriers(self) -> None:
        """Retention passes, one at a time, while releases came in during the last one."""
        while self._releases_unretained >= retention_period(self.config.keep_barriers):
            self._releases_unretained = 0
            await forget_barriers(self)

    # -- checkpoints -------------------------------------------------------------
    async def commit_checkpoint(self, commit: CheckpointCommit) -> CommitDecision:
        """Record one part (or answer DUPLICATE / SUPERSEDED); completes the step when due.

        Commits are group-committed (``commit_batches``): this one joins the
        queue and the commit flusher writes what queued while its previous
        transaction ran, up to ``commit_batch_max`` (40) per transaction. The
        write runs on the flusher's task, so it runs to its end even if this
        caller is cancelled: otherwise the step's last commit could find a part
        etcd recorded missing, and the step would never complete.
        """
        pending = PendingCommit.new(commit)
        self._commits.append(pending)
        if mutants.active(mutants.CANCELLED_WRITE):  # MUTANT cancelled-write: the
            await self._flush_commits()  # caller's own task writes, cancellable mid-write
        elif self._commit_flusher is None or self._commit_flusher.done():
            self._commit_flusher = asyncio.create_task(self._flush_commits())
        return await asyncio.shield(pending.answer)

    async def _flush_commits(self) -> None:
        """Write queued commits, a batch per transaction, until none are left."""
        while self._commits:
            count = min(len(self._commits), self.config.commit_batch_max)
            batch = [self._commits.popleft() for _ in range(count)]
            answers: Sequence[CommitAnswer | Exception]
            try:
                answers = await self._write_commits([p.commit for p in batch])
            except asyncio.CancelledError:
                for pending in [*batch, *self._commits]:
                    pending.settle(CoordinatorUnavailable("the coordinator is stopping; retry"))
                raise
            except Exception as err:  # every waiter must hear of it
                answers = [err] * len(batch)
            self.metrics.commit_batch.observe(len(answers))
            for pending, answer in zip(batch, answers, strict=False):
                pending.settle(answer)
            # Commits that did not fit this transaction go first in the next one.
            self._commits.extendleft(reversed(batch[len(answers) :]))

    async def _write_commits(self, commits: list[CheckpointCommit]) -> tuple[CommitAnswer, ...]:
        """One fenced transaction for ``commits`` (re-planned on a stale view); their answers."""
        planned: list[BatchPlan] = []

        async def load() -> None:
            book = self.checkpoints
            missing = steps_to_load(book, commits)
            for start in range(0, len(missing), MAX_STEPS_PER_READ):
                chunk = missing[start : start + MAX_STEPS_PER_READ]
                reads = [r for step in chunk for r in step_reads(self.keys, step)]
                result = await asyncio.to_thread(
                    self.store.txn, [], [*reads, Get(self.keys.latest_checkpoint)]
                )
                found = [r if isinstance(r, tuple) else () for r in result.results]
                for i, step in enumerate(chunk):
                    book.steps[step] = decode_step(step, found[2 * i], found[2 * i + 1])
                latest = found[-1]
                book.latest = CompleteRecord.decode(latest[0].value) if latest else None
                book.loaded = True

        def planner(view: ClusterView) -> WritePlan | None:
            planned[:] = [plan_commit_batch(self.keys, view, self.checkpoints, commits)]
            return planned[0].plan

        def applied(view: ClusterView) -> None:
            for decision in planned[-1].accepted:
                self.checkpoints.on_applied(decision)
                if decision.step_complete:
                    self._retention_due = True
            if self._retention_due and (self._retention is None or self._retention.done()):
                self._retention = asyncio.create_task(self._retain())

        await self._write(planner, load, applied)
        return planned[-1].answers

    async def _retain(self) -> None:
        """Delete records of complete steps beyond the newest K, and of abandoned steps.

        Runs again while steps completed during a pass (one pass at a time).
        """
        keep = self.config.keep_checkpoints
        while self._retention_due:
            self._retention_due = False
            try:
                ops = await asyncio.to_thread(retention_ops, self.store, self.keys, keep)
                if ops:
                    deletions = tuple(ops)
                    await self._write(lambda v: WritePlan((), deletions, v))  # noqa: B023
                    _log.info("checkpoint retention: %d deletions", len(ops))
            except DtrError as err:  # retried after the next complete step
                _log.warning("checkpoint retention failed: %s", err)

    async def latest_checkpoint(
        self, before_step: int | None
    ) -> tuple[CompleteRecord, list[PartRecord]] | None:
        """The newest complete step (below ``before_step``) and its parts; any replica."""
        return await asyncio.to_thread(read_latest, self.store, self.keys, before_step)

    # -- reads (any replica) -----------------------------------------------------
    async def read_view(self) -> ClusterView:
        """The leader's cached view, or (on a follower) a fresh read from etcd."""
        if self._term is not None and self.elector.current_term() == self._term:
            return self._view
        return await asyncio.to_thread(load_view, self.store, self.keys)

    async def assignment(self, view: ClusterView, dataset: DatasetRecord) -> dict[str, list[int]]:
        """Shards of every live member of ``view`` (``shard_cache.ShardCache``)."""
        return await self.shards.assignment(view, dataset)

    async def shard_bounds(self, view: ClusterView, dataset: DatasetRecord) -> tuple[int, int]:
        """The most and fewest shards any live member holds (``shard_cache.ShardCache``)."""
        return await self.shards.bounds(view, dataset)

    def open_barriers(self, view: ClusterView) -> list[BarrierState]:
        """Barriers of the current generation still waiting (known to the leader only)."""
        if self._term is None:
            return []
        return sorted(
            (
                s
                for s in self.barriers.states.values()
                if not s.released and s.generation == view.generation
            ),
            key=lambda s: s.name,
        )

    def age_s(self, liveness: Liveness) -> float:
        """Seconds since a worker's last beat, on this replica's monotonic clock."""
        return self._clock() - liveness.last_seen

    def liveness(self, worker_id: str) -> Liveness | None:
        return self._liveness.get(worker_id) if self._term is not None else None

    # -- the leader loop ---------------------------------------------------------
    def _export(self) -> None:
        """Refresh the gauges (once per cycle, off the request path)."""
        leader = self.elector.leader()
        self.metrics.term.set(leader.create_revision if leader else 0)
        leading = self._term is not None and self.elector.current_term() == self._term
        self.metrics.is_leader.set(1 if leading else 0)
        if leading:
            alive = len(self._view.live_members())
            self.metrics.generation.set(self._view.generation)
            self.metrics.workers.labels("alive").set(alive)
            self.metrics.workers.labels("dead").set(len(self._view.members) - alive)

    async def run_cycle(self) -> str:
        """One pass of the leader loop; returns what it did, for the log."""
        try:
            return await self._cycle()
        finally:
            self._export()

    async def _declare_dead(self, batch: list[str], silent: dict[str, int]) -> ClusterView:
        """Declare one batch dead: those still live as the incarnation found silent, still silent.

        The batches of a large failure are written one after another and the
        write lock is free between them, so a worker may re-register (a new
        incarnation, beating) meanwhile: it is re-checked when each batch is
        planned, never declared dead on its predecessor's silence.
        """
        declared: list[str] = []

        def planner(view: ClusterView) -> WritePlan | None:
            now, timeout_s = self._clock(), self.config.heartbeat_timeout_s
            declared[:] = [
                w
                for w in batch
                if (m := view.members.get(w)) is not None
                and m.alive
                and m.incarnation == silent[w]
                and now - self._liveness.get(w, Liveness(now)).last_seen >= timeout_s
            ]
            return plan_mark_dead(self.keys, view, declared) if declared else None

        def applied(view: ClusterView) -> None:
            for worker_id in declared:
                self._liveness.pop(worker_id, None)

        return await self._write(planner, on_applied=applied)

    async def _cycle(self) -> str:
        if self.elector.current_term() is None:
            self._lose_term()
            leader = self.elector.leader()
            return f"follower: leader {leader.replica_id if leader else 'unknown'}"
        term = await self._leading_term()
        dead = expired_workers(
            self._view,
            {w: s.last_seen for w, s in self._liveness.items()},
            self._clock(),
            self.config.heartbeat_timeout_s,
        )
        if not dead:
            return f"leader term {term.revision}: {len(self._view.live_members())} workers alive"
        view = self._view
        silent = {w: self._view.members[w].incarnation for w in dead}
        # MUTANT unbounded-mark-dead: the whole rack in one transaction.
        unbounded = mutants.active(mutants.UNBOUNDED_MARK_DEAD)
        for batch in [dead] if unbounded else batches(dead):  # a rack: one transaction per batch
            view = await self._declare_dead(batch, silent)
        named = ", ".join(dead[:_DEAD_LISTED])
        more = f" and {len(dead) - _DEAD_LISTED} more" if len(dead) > _DEAD_LISTED else ""
        return (
            f"leader term {term.revision}: declared dead {named}{more}; "
            f"generation {view.generation}"
        )
