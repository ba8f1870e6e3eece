"""Named barriers: long-poll arrivals, persisted and released by fenced writes.

A barrier name is used once (``step-100``, ``epoch-3-end``). Its first
arrival opens it for the current membership generation G; it is released,
exactly once, when every live member of G has arrived. If the generation
moves while it is open (a member died, left or joined) it has failed: every
waiter gets ``MembershipChanged``, and the next arrival under the new
generation reopens it, counting only arrivals made for that generation.
Failing needs no write — "open for an old generation" *is* failed — so a
failure can never be lost.

Arrivals are bound to incarnations: each arrival key records the arriving
worker's incarnation, and a new incarnation of a live id moves the
generation (``membership.py``), so an arrival made by a process that has
since been replaced never counts for its successor. A barrier that was
released without the caller's incarnation answers ``missed``: terminal for
that name, the worker resumes from the latest complete checkpoint
(``dtr.errors.BarrierMissed``).

Arrivals and the release are in etcd (DESIGN §5 invariant 2), so a barrier
survives a leader crash: the new leader re-reads it, and a worker retrying
its arrival writes the same key again, so it is never counted twice.
Arrivals that come together share a transaction, split below etcd's default
limit of 128 operations per transaction.

This module holds the pure part (state, plans) and the per-term cache; the
``Coordinator`` runs the writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dtr import mutants
from dtr.errors import MembershipChanged, StaleIncarnation, UnknownWorker
from dtr.keys import JobKeys
from dtr.store import Compare, Delete, Get, KeyValue, Op, Put

from .membership import WritePlan
from .state import ClusterView

_log = logging.getLogger(__name__)
MAX_ARRIVALS_PER_TXN = 100
MAX_MISSING_LISTED = 100
#: Released barriers kept (in etcd and the leader's cache) for late retries of
#: their arrivals, by default (``--keep-barriers``); older ones are deleted. A
#: worker calls barriers one after another, so once this many newer ones were
#: released with it as a member, it cannot be retrying this one any more.
KEEP_RELEASED_BARRIERS = 256


def retention_period(keep: int) -> int:
    """Releases between retention passes (each lists every barrier key): a quarter of ``keep``."""
    return max(1, keep // 4)


#: Barriers forgotten per transaction: one compare and one delete each.
FORGET_PER_TXN = 50


@dataclass(frozen=True)
class Outcome:
    """What a waiter learns: released, failed (membership changed) or still waiting."""

    status: str  # "released", "membership_changed", "waiting" or "missed"
    generation: int
    arrived: int
    expected: int
    missing: tuple[str, ...] = ()


@dataclass
class BarrierState:
    """One barrier: what etcd holds (``stored``) and this term's waiters."""

    name: str
    generation: int
    released: bool = False
    #: worker id → the incarnation that arrived (0: recorded before incarnations were).
    arrived: dict[str, int] = field(default_factory=dict)
    stored: bytes | None = None  # the state key's value in etcd; None if absent
    done: asyncio.Future[Outcome] | None = None

    def encode(self) -> bytes:
        return json.dumps({"generation": self.generation, "released": self.released}).encode()

    def has_arrival_of(self, worker_id: str, incarnation: int) -> bool:
        """Whether this incarnation (0: any) of ``worker_id`` arrived."""
        arrived = self.arrived.get(worker_id)
        if mutants.active(mutants.INCARNATION_BLIND_BARRIERS):  # MUTANT: any incarnation
            return arrived is not None
        return arrived is not None and (arrived == incarnation or 0 in (arrived, incarnation))

    def outcome(self, view: ClusterView) -> Outcome:
        current = view.generation == self.generation
        expected = set(view.live_members()) if current else set()
        status = "released" if self.released else ("waiting" if current else "membership_changed")
        missing = tuple(sorted(expected - self.arrived.keys())[:MAX_MISSING_LISTED])
        return Outcome(status, self.generation, len(self.arrived), len(expected), missing)


def decode_state(
    name: str, value: bytes | None, arrivals: Iterable[tuple[str, bytes]]
) -> BarrierState | None:
    """A barrier from its state key and arrival keys (arrivals of other generations ignored)."""
    if value is None:
        return None
    data = json.loads(value)
    generation = int(data["generation"])
    arrived: dict[str, int] = {}
    for worker_id, raw in arrivals:
        arrival = json.loads(raw)
        if int(arrival["generation"]) == generation:
            arrived[worker_id] = int(arrival.get("incarnation", 0))
    return BarrierState(name, generation, bool(data["released"]), arrived, stored=value)


def reopened(state: BarrierState | None, name: str, view: ClusterView) -> BarrierState:
    """The barrier to arrive at now: ``state`` if usable, else opened for this generation."""
    if state is not None and (state.released or state.generation == view.generation):
        return state
    return BarrierState(name, view.generation, stored=state.stored if state else None)


def plan_arrivals(
    keys: JobKeys, view: ClusterView, state: BarrierState, workers: Iterable[str]
) -> tuple[WritePlan, BarrierState]:
    """Record arrivals (opening the barrier if needed) and release it if now complete.

    Each arrival is stamped with the worker's incarnation in ``view``: the
    caller checked it against the request, and a restart since moved the
    generation, so the planner refuses this state before getting here.
    """
    new = BarrierState(state.name, state.generation, state.released, dict(state.arrived))
    state_key = keys.barrier_state(state.name)
    guard = (
        Compare.value_is(state_key, state.stored)
        if state.stored is not None
        else Compare.absent(state_key)
    )
    ops: list[Op] = []
    for worker_id in sorted(set(workers) - new.arrived.keys()):
        member = view.members.get(worker_id)
        incarnation = member.incarnation if member is not None else 0
        arrival = encode_arrival(new.generation, incarnation)
        ops.append(Put(keys.barrier_arrival(state.name, worker_id), arrival))
        new.arrived[worker_id] = incarnation
    new.released = set(view.live_members()) <= new.arrived.keys()
    if new.encode() != state.stored:
        ops.append(Put(state_key, new.encode()))
    new.stored = new.encode()
    return WritePlan((guard,), tuple(ops), view), new


@dataclass(frozen=True)
class StoredBarrier:
    """A barrier's state key as a retention pass lists it."""

    name: str
    generation: int
    released: bool
    mod_revision: int


def stored_barriers(keys: JobKeys, kvs: Iterable[KeyValue]) -> list[StoredBarrier]:
    """The barriers among the keys under ``barriers/`` (arrival keys are skipped)."""
    found = []
    for kv in kvs:
        name = keys.last_segment(kv.key, keys.barriers_prefix)
        if kv.key != keys.barrier_state(name):
            continue
        data = json.loads(kv.value)
        found.append(
            StoredBarrier(name, int(data["generation"]), bool(data["released"]), kv.mod_revision)
        )
    return found


def barriers_to_forget(
    stored: Iterable[StoredBarrier], generation: int, keep: int = KEEP_RELEASED_BARRIERS
) -> list[StoredBarrier]:
    """Released barriers beyond the newest ``keep``, and barriers that failed.

    A barrier open for an older generation has failed (its waiters were told);
    forgetting it changes nothing, since the next arrival reopens it afresh
    either way. The newest releases are the highest mod revisions: a release
    is a barrier's last write.
    """
    barriers = list(stored)
    released = sorted((b for b in barriers if b.released), key=lambda b: -b.mod_revision)
    failed = [b for b in barriers if not b.released and b.generation < generation]
    return sorted([*released[keep:], *failed], key=lambda b: b.mod_revision)


def forget_ops(keys: JobKeys, barriers: Iterable[StoredBarrier]) -> tuple[list[Compare], list[Op]]:
    """Delete each barrier's keys, only if its state is as listed (not reopened since)."""
    compares: list[Compare] = []
    ops: list[Op] = []
    for barrier in barriers:
        compares.append(Compare.modified_at(keys.barrier_state(barrier.name), barrier.mod_revision))
        ops.append(Delete(keys.barrier_prefix(barrier.name), prefix=True))
    return compares, ops


def still_valid(
    view: ClusterView, state: BarrierState, pending: Mapping[str, tuple[int, int]]
) -> list[str]:
    """The queued arrivals that may still be written for ``state``, sorted.

    An arrival is checked when its call comes in but written later, in a
    group; meanwhile its worker may have been replaced by a new incarnation
    (which moved the generation) and the barrier reopened. Writing it then
    would count the old process for the new one (DESIGN §5 invariant 2), so
    only arrivals made for the barrier's generation by the worker's current,
    live incarnation are written; the others' waiters were already told the
    generation moved.
    """
    valid = []
    blind = mutants.active(mutants.INCARNATION_BLIND_BARRIERS)  # MUTANT: any incarnation
    for worker_id, (incarnation, generation) in pending.items():
        member = view.members.get(worker_id)
        if (
            generation == state.generation
            and member is not None
            and member.alive
            and (blind or member.incarnation == incarnation)
        ):
            valid.append(worker_id)
    return sorted(valid)


def encode_arrival(generation: int, incarnation: int) -> bytes:
    return json.dumps({"generation": generation, "incarnation": incarnation}).encode()


def check_incarnation(view: ClusterView, worker_id: str, incarnation: int) -> None:
    """Refuse a call from another incarnation than the member's (0: not given, allowed).

    Any other number, not only a smaller one: a deregistered id starts again
    at incarnation 1, so a leftover process may hold a larger number.
    """
    member = view.members.get(worker_id)
    if incarnation and member is not None and incarnation != member.incarnation:
        raise StaleIncarnation(
            f"incarnation: worker {worker_id!r} incarnation {incarnation} was replaced by "
            f"incarnation {member.incarnation}; this process must stop"
        )


def check_arrival(
    view: ClusterView, worker_id: str, believed_generation: int, incarnation: int = 0
) -> None:
    """Only live members arrive, as their current incarnation, for the job's generation."""
    check_incarnation(view, worker_id, incarnation)
    member = view.members.get(worker_id)
    if worker_id not in view.live_members() or (
        incarnation and member is not None and incarnation != member.incarnation
    ):
        raise UnknownWorker(
            f"worker_id: {worker_id!r} is not a live member of generation "
            f"{view.generation}; register it first"
        )
    if believed_generation and believed_generation != view.generation:
        raise MembershipChanged(
            f"generation: the worker believes generation {believed_generation}, "
            f"the job is at {view.generation}; refresh shards and retry the barrier"
        )


class Barriers:
    """The barriers of one leader term: a cache of etcd, waiters and pending arrivals."""

    def __init__(self, keys: JobKeys) -> None:
        self.keys = keys
        self.states: dict[str, BarrierState] = {}
        #: barrier → worker → (incarnation, generation) of an arrival not yet written.
        self.pending: dict[str, dict[str, tuple[int, int]]] = {}

    def reset(self, error: Exception | None) -> None:
        """Forget the cache (new term, stale view); fail this term's waiters with ``error``."""
        for state in self.states.values():
            if error is not None and state.done is not None and not state.done.done():
                state.done.set_exception(error)
        self.states.clear()
        self.pending.clear()

    def reads(self, name: str) -> list[Get]:
        """The reads that load one barrier, to run in one transaction."""
        return [
            Get(self.keys.barrier_state(name)),
            Get(self.keys.barrier_arrivals_prefix(name), prefix=True),
        ]

    def decode(self, name: str, results: tuple[object, ...]) -> BarrierState | None:
        state_kvs, arrival_kvs = results
        if not isinstance(state_kvs, tuple) or not isinstance(arrival_kvs, tuple):
            raise TypeError("barrier reads must be two Gets")
        prefix = self.keys.barrier_arrivals_prefix(name)
        arrivals = [(self.keys.last_segment(kv.key, prefix), kv.value) for kv in arrival_kvs]
        return decode_state(name, state_kvs[0].value if state_kvs else None, arrivals)

    def waiter(self, state: BarrierState) -> asyncio.Future[Outcome]:
        if state.done is None or state.done.done():
            state.done = asyncio.get_running_loop().create_future()
        return state.done

    def on_generation(self, view: ClusterView) -> None:
        """Membership moved: wake the waiters of every barrier that just failed."""
        for state in self.states.values():
            if state.released or state.generation == view.generation:
                continue
            if state.done is not None and not state.done.done():
                state.done.set_result(state.outcome(view))
                _log.info(
                    "barrier %s failed: generation %d -> %d",
                    state.name,
                    state.generation,
                    view.generation,
                )

    def forget(self, barrier: StoredBarrier) -> None:
        """Drop a deleted barrier from the cache, unless it was reopened here since."""
        cached = self.states.get(barrier.name)
        if (
            cached is not None
            and cached.generation == barrier.generation
            and cached.released == barrier.released
        ):
            del self.states[barrier.name]

    def on_written(self, new: BarrierState, view: ClusterView) -> None:
        """A plan for ``new`` applied: cache it and wake the waiters if it released."""
        old = self.states.get(new.name)
        new.done = old.done if old is not None else None
        self.states[new.name] = new
        if new.released and new.done is not None and not new.done.done():
            new.done.set_result(new.outcome(view))
            _log.info(
                "barrier %s released (generation %d, %d arrived)",
                new.name,
                new.generation,
                len(new.arrived),
            )
