"""Registrations group-committed: those that queue during one transaction share the next.

Why: each ``RegisterWorker`` used to be its own fenced transaction behind the
leader's write lock, so the last of N workers starting together waited N
etcd round trips (1,000 registrations took 1.93 s, issue 18). Now the first
registration is written at once, and every one that arrives while that
transaction runs is written together in the next, up to
``register_batch_max`` distinct worker ids (at most
``MAX_MEMBER_CHANGES_PER_TXN``, within etcd's 128 operations a transaction).
One transaction moves the generation once for the whole batch.

The semantics of one registration are unchanged: a new incarnation of its id,
live, seen now. Two registrations of the same id (a worker restarted while
its earlier registration still queues, or a retry of it) never share a
transaction: the later waits for the next, so each gets its own incarnation,
in arrival order, as if written one at a time.

Other writes of a member's record (``deregister``, a torchrun rank rejoining
or a whole round, ``rounds.py``) keep arrival order with the registrations of
the same ids through ``in_order``: such a write waits for the registrations
of its ids that arrived before it, and registrations of those ids that
arrive while it waits or runs are written after it. Without that, a write
arriving during a batch in flight would overtake an earlier registration of
its id: a restart could reuse incarnation 1 after a deregister, or a plain
registration could supersede the rank that re-registered after it.

The writes run on the flusher's task, so a caller cancelled mid-write (its
deadline, a closed channel) does not cancel the transaction of the others in
its batch; its own registration may still be written, which a re-sent
registration then supersedes with a newer incarnation, as before.

What must not live here: the fence and the plan-and-retry (``leader.py``'s
``_write``) and the member record's rules (``membership.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from dtr.errors import CoordinatorUnavailable
from dtr.keys import JobKeys

from .membership import MAX_MEMBER_CHANGES_PER_TXN, WritePlan, plan_member_changes
from .state import ClusterView, MemberRecord

#: The largest batch (``--register-batch-max``): etcd's 128 operations a
#: transaction hold 100 member puts, the generation and the writer stamp.
MAX_REGISTER_BATCH = MAX_MEMBER_CHANGES_PER_TXN

Planner = Callable[[ClusterView], WritePlan | None]
Applied = Callable[[ClusterView], None]
#: ``Coordinator._write``: plan against the view, apply fenced, re-plan when stale.
Write = Callable[[Planner, None, Applied], Awaitable[ClusterView]]


@dataclass(frozen=True)
class Registration:
    """One ``RegisterWorker`` as the leader writes it (validated by the servicer)."""

    worker_id: str
    capacity: float
    host: str
    pid: int


@dataclass
class PendingRegistration:
    """A registration waiting for its batch, and the future its handler awaits."""

    wanted: Registration
    answer: asyncio.Future[tuple[MemberRecord, ClusterView]]
    #: Arrival order among registrations and the writes of ``in_order``.
    seq: int = 0

    @classmethod
    def new(cls, wanted: Registration, seq: int = 0) -> PendingRegistration:
        answer: asyncio.Future[tuple[MemberRecord, ClusterView]] = (
            asyncio.get_running_loop().create_future()
        )
        # A caller that gave up (deadline) never reads it: do not warn about that.
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        return cls(wanted, answer, seq)

    def settle(self, answer: tuple[MemberRecord, ClusterView] | BaseException) -> None:
        if self.answer.done():
            return
        if isinstance(answer, BaseException):
            self.answer.set_exception(answer)
        else:
            self.answer.set_result(answer)


def take_batch(
    queue: collections.deque[PendingRegistration],
    limit: int,
    held: Mapping[str, int] | None = None,
) -> list[PendingRegistration]:
    """Up to ``limit`` queued registrations of distinct ids, oldest first, taken out.

    A second registration of an id already in the batch stays queued, in its
    place, for a later batch: it must be written after the first. So does
    one that arrived after an ``in_order`` write of its id still pending
    (``held``: id -> the earliest such write's arrival).
    """
    held = held or {}
    batch: list[PendingRegistration] = []
    ids: set[str] = set()
    left: list[PendingRegistration] = []
    while queue and len(batch) < limit:
        pending = queue.popleft()
        worker_id = pending.wanted.worker_id
        if worker_id in ids or held.get(worker_id, pending.seq) < pending.seq:
            left.append(pending)
        else:
            ids.add(pending.wanted.worker_id)
            batch.append(pending)
    queue.extendleft(reversed(left))
    return batch


def plan_registrations(keys: JobKeys, view: ClusterView, batch: list[Registration]) -> WritePlan:
    """Each worker of ``batch`` a new live incarnation, in one write (distinct ids)."""
    changes: dict[str, MemberRecord | None] = {}
    for wanted in batch:
        previous = view.members.get(wanted.worker_id)
        changes[wanted.worker_id] = MemberRecord(
            worker_id=wanted.worker_id,
            capacity=wanted.capacity,
            alive=True,
            incarnation=(previous.incarnation + 1) if previous else 1,
            host=wanted.host,
            pid=wanted.pid,
        )
    return plan_member_changes(keys, view, changes)


class RegistrationBatcher:
    """The leader's queue of registrations and the task that writes them in batches."""

    def __init__(
        self,
        keys: JobKeys,
        write: Write,
        seen: Callable[[str], None],
        batch_max: int = MAX_REGISTER_BATCH,
    ) -> None:
        self._keys = keys
        self._write = write
        self._seen = seen
        self._batch_max = batch_max
        self._queue: collections.deque[PendingRegistration] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._seq = 0
        self._unsettled: dict[int, PendingRegistration] = {}  # seq -> queued or being written
        self._held: dict[str, list[int]] = {}  # id -> arrivals of its pending in_order writes
        #: Sizes of the batches written, newest last (bounded; for tests and metrics).
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1024)

    async def register(self, wanted: Registration) -> tuple[MemberRecord, ClusterView]:
        """Queue ``wanted``; its record and the view once its batch is written."""
        self._seq += 1
        pending = PendingRegistration.new(wanted, self._seq)
        self._unsettled[pending.seq] = pending
        pending.answer.add_done_callback(lambda _: self._unsettled.pop(pending.seq, None))
        self._queue.append(pending)
        self._kick()
        return await asyncio.shield(pending.answer)

    @contextlib.asynccontextmanager
    async def in_order(self, worker_ids: Iterable[str]) -> AsyncIterator[None]:
        """Hold the body (another write of these members) in arrival order with registrations.

        Waits for the registrations of ``worker_ids`` that arrived earlier to
        be answered; registrations of them arriving from now on wait until
        the body is done. Their outcome does not matter here: the body plans
        on the view as it then is.
        """
        ids = set(worker_ids)
        self._seq += 1
        seq = self._seq
        for worker_id in ids:
            self._held.setdefault(worker_id, []).append(seq)
        try:
            earlier = [
                p.answer
                for p in self._unsettled.values()
                if p.seq < seq and p.wanted.worker_id in ids
            ]
            if earlier:
                await asyncio.wait(earlier)
            yield
        finally:
            for worker_id in ids:
                arrivals = self._held[worker_id]
                arrivals.remove(seq)
                if not arrivals:
                    del self._held[worker_id]
            self._kick()  # registrations that waited behind the body

    def _kick(self) -> None:
        if self._queue and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Write queued registrations, a batch per transaction, until none can go now."""
        while self._queue:
            held = {worker_id: min(seqs) for worker_id, seqs in self._held.items()}
            batch = take_batch(self._queue, self._batch_max, held)
            if not batch:  # every one waits behind an in_order write, which kicks again
                return
            wanted = [p.wanted for p in batch]

            def planner(view: ClusterView, wanted: list[Registration] = wanted) -> WritePlan:
                return plan_registrations(self._keys, view, wanted)

            def applied(view: ClusterView, wanted: list[Registration] = wanted) -> None:
                for registration in wanted:
                    self._seen(registration.worker_id)

            try:
                view = await self._write(planner, None, applied)
            except asyncio.CancelledError:  # the server stops: every waiter must hear of it
                for pending in [*batch, *self._queue]:
                    pending.settle(CoordinatorUnavailable("the coordinator is stopping; retry"))
                raise
            except Exception as err:  # NOT_LEADER, etcd unavailable: each caller retries
                for pending in batch:
                    pending.settle(err)
                continue
            self.batch_sizes.append(len(batch))
            for pending in batch:
                pending.settle((view.members[pending.wanted.worker_id], view))
