"""Rendezvous rounds as membership generations: a torchrun round's ranks join together.

Under ``torchrun --rdzv-backend=dtr`` every restart of the worker group is a
new rendezvous round, and every rank of it starts again and registers. One by
one, N ranks would move the generation N times, ranks that asked for shards
in between would read different generations (overlapping shards), and the
previous round's ranks that do not come back (an agent that left) would hold
their shards until failure detection expired them.

So a rank that says which round it belongs to (``RendezvousRound``, filled in
from the environment dtr's rendezvous handler gives the ranks) is held by the
leader until every one of the round's ``world_size`` ranks has asked. Then
one fenced transaction writes them all, each a new incarnation of its id,
and declares dead the previous rounds' ranks that are not in this one: one
round, one generation (``plan_round``). A round larger than one
transaction's limit (``MAX_MEMBER_CHANGES_PER_TXN`` changes, within etcd's
``--max-txn-ops``) is written in batches, one generation each; the ranks are
answered only after the last.

What is held lives in the leader's memory only (``RoundGate``): nothing is
written before a round is whole, and a waiting rank asks again every few
seconds (``round_pending``), so after a failover the ranks' own retries
rebuild the set on the new leader. A rank of a round older than the newest
round written for its rendezvous is refused with ``StaleRound``: torchrun
stops every rank of a round before it starts the next, so such a process is
a leftover and must not train.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from dtr.errors import InvalidArgument, StaleRound
from dtr.keys import JobKeys

from .membership import WritePlan, batches, plan_member_changes
from .state import ClusterView, MemberRecord

#: How long the leader holds a rank's registration while its round forms; below
#: the client's attempt deadline, so the answer (pending) arrives, not a timeout.
ROUND_HOLD_S = 4.0


@dataclass(frozen=True)
class RoundJoin:
    """One rank's registration into a round.

    ``life`` is the rendezvous's life (its state key's etcd create_revision):
    a run that reuses an ``--rdzv-id`` after the old keys expired starts at
    round 0 again, in a newer life. Rounds are ordered by ``(life, round)``.
    """

    rdzv_id: str
    life: int
    round: int
    world_size: int
    rank: int
    worker_id: str
    capacity: float
    host: str
    pid: int

    @property
    def order(self) -> tuple[int, int]:
        return (self.life, self.round)

    @property
    def tag(self) -> tuple[str, int, int]:
        """What the member record keeps: (rdzv_id, life, round)."""
        return (self.rdzv_id, self.life, self.round)


class Verdict(enum.Enum):
    """What to do with a rank's registration, judged against the view."""

    JOIN = "join"  # its round is not written yet: hold it in the gate
    MEMBER = "member"  # this very process is already a member of its round (an answer lost)
    REJOIN = "rejoin"  # its round is written but it is not a live member: register it alone
    STALE = "stale"  # a newer round of its rendezvous is written: refuse


def newest_round(view: ClusterView, rdzv_id: str) -> tuple[int, int] | None:
    """The newest (life, round) written for ``rdzv_id`` (live or dead members), if any."""
    rounds = [(m.rdzv_life, m.rdzv_round) for m in view.members.values() if m.rdzv_id == rdzv_id]
    return max(rounds) if rounds else None


def judge(view: ClusterView, join: RoundJoin) -> Verdict:
    """Where ``join`` stands against what etcd holds."""
    newest = newest_round(view, join.rdzv_id)
    if newest is None or join.order > newest:
        return Verdict.JOIN
    if join.order < newest:
        return Verdict.STALE
    record = view.members.get(join.worker_id)
    if (
        record is not None
        and record.alive
        and record.pid == join.pid
        and (record.rdzv_id, record.rdzv_life, record.rdzv_round) == join.tag
    ):
        return Verdict.MEMBER
    return Verdict.REJOIN


def stale_round(join: RoundJoin, newest: tuple[int, int] | None) -> StaleRound:
    life, round_ = newest or (0, 0)
    return StaleRound(
        f"worker {join.worker_id}: round {join.round} (life {join.life}) of rendezvous "
        f"{join.rdzv_id!r} was replaced by round {round_} (life {life}); this process is a "
        "leftover of the old round and must exit"
    )


def round_changes(view: ClusterView, joins: Sequence[RoundJoin]) -> dict[str, MemberRecord]:
    """The member records a whole round writes: its ranks live, earlier rounds' others dead."""
    first = joins[0]
    changes: dict[str, MemberRecord] = {}
    for join in joins:
        previous = view.members.get(join.worker_id)
        changes[join.worker_id] = MemberRecord(
            worker_id=join.worker_id,
            capacity=join.capacity,
            alive=True,
            incarnation=(previous.incarnation + 1) if previous else 1,
            host=join.host,
            pid=join.pid,
            rdzv_id=join.rdzv_id,
            rdzv_round=join.round,
            rdzv_life=join.life,
        )
    for worker_id, record in view.members.items():
        earlier = (record.rdzv_life, record.rdzv_round) < first.order
        leftover = record.rdzv_id == first.rdzv_id and earlier
        if leftover and record.alive and worker_id not in changes:
            changes[worker_id] = replace(record, alive=False)
    return changes


def plan_round(keys: JobKeys, view: ClusterView, joins: Sequence[RoundJoin]) -> WritePlan | None:
    """The next batch of a round's write; None when nothing is left.

    Planned against the current view, so a retry after a stale view or an
    unknown outcome writes what is still missing and nothing twice: a rank
    already written for this round (by an earlier batch, or by this batch
    before its outcome was lost) is left as it is, and ranks of earlier
    rounds written meanwhile (an older round's write that was still in
    flight) are retired too. At most ``MAX_MEMBER_CHANGES_PER_TXN`` changes.
    """
    newest = newest_round(view, joins[0].rdzv_id)
    if newest is not None and newest > joins[0].order:
        return None  # a newer round was written meanwhile; the waiters will see StaleRound
    done = {j.worker_id for j in joins if judge(view, j) is Verdict.MEMBER}
    left = {w: r for w, r in round_changes(view, joins).items() if w not in done}
    if not left:
        return None
    batch: Mapping[str, MemberRecord] = {w: left[w] for w in batches(left)[0]}
    return plan_member_changes(keys, view, batch)


@dataclass
class _Forming:
    order: tuple[int, int]  # (life, round)
    world_size: int
    joins: dict[int, RoundJoin] = field(default_factory=dict)  # by rank
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    writing: bool = False


class RoundGate:
    """The rounds that are forming on this leader, and the ranks waiting on them."""

    def __init__(self) -> None:
        self._forming: dict[str, _Forming] = {}

    def add(self, join: RoundJoin) -> list[RoundJoin] | None:
        """Hold ``join``; the whole round (once) when it completes it, else None.

        Raises ``StaleRound`` for a round older than one already forming, and
        ``InvalidArgument`` for ranks that disagree on the round's size or share
        an id (each rank needs its own worker id).
        """
        forming = self._forming.get(join.rdzv_id)
        if forming is not None and forming.order > join.order:
            raise stale_round(join, forming.order)
        if forming is None or forming.order < join.order:
            if forming is not None:
                forming.settled.set()  # its waiters ask again and learn they are stale
            forming = self._forming[join.rdzv_id] = _Forming(join.order, join.world_size)
        if join.world_size != forming.world_size:
            raise InvalidArgument(
                f"rendezvous_round.world_size: rank {join.rank} of round {join.round} of "
                f"{join.rdzv_id!r} says {join.world_size}, an earlier rank said "
                f"{forming.world_size}"
            )
        for rank, other in forming.joins.items():
            if other.worker_id == join.worker_id and rank != join.rank:
                raise InvalidArgument(
                    f"worker_id {join.worker_id!r} is rank {rank} and rank {join.rank} of round "
                    f"{join.round}; give each rank its own id (the default is <host>-rank<RANK>; "
                    "do not set DTR_WORKER_ID for all ranks)"
                )
        forming.joins[join.rank] = join
        if len(forming.joins) == forming.world_size and not forming.writing:
            forming.writing = True
            return [forming.joins[rank] for rank in sorted(forming.joins)]
        return None

    def newest(self, rdzv_id: str) -> tuple[int, int] | None:
        """The (life, round) forming for ``rdzv_id`` on this leader, if any."""
        forming = self._forming.get(rdzv_id)
        return forming.order if forming is not None else None

    def writing(self, join: RoundJoin) -> bool:
        """Whether ``join``'s round is being written now (some batches may have landed)."""
        forming = self._forming.get(join.rdzv_id)
        return forming is not None and forming.order == join.order and forming.writing

    def written(self, join: RoundJoin, ok: bool) -> None:
        """``join``'s round's write ended: wake its waiters, or let the next rank try again."""
        rdzv_id = join.rdzv_id
        forming = self._forming.get(rdzv_id)
        if forming is None or forming.order != join.order:
            return
        if ok:
            del self._forming[rdzv_id]
            forming.settled.set()
        else:
            forming.writing = False

    async def wait(self, join: RoundJoin, timeout_s: float) -> None:
        """Until ``join``'s round is written, replaced or reset, or ``timeout_s`` passes."""
        forming = self._forming.get(join.rdzv_id)
        if forming is None or forming.order != join.order:
            return
        try:
            await asyncio.wait_for(forming.settled.wait(), timeout_s)
        except TimeoutError:
            return

    def reset(self) -> None:
        """Forget every forming round (leadership lost or taken): waiters ask again."""
        for forming in self._forming.values():
            forming.settled.set()
        self._forming.clear()
