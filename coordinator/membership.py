"""Decisions about membership and datasets, as pure functions of a view.

Each ``plan_*`` takes the current ``ClusterView`` and returns a ``WritePlan``:
the compares that make the write safe to apply to exactly that view, the
operations, and the view as it will be once etcd applies them. The leader
adds its fence and sends the plan as one transaction; these functions do no
I/O and are unit-tested without etcd.

Every change to the live member set, to a live member's capacity, or to a
live member's incarnation (the same id registered again by a new process)
bumps the membership generation by exactly one, in the same transaction. A
new incarnation is a membership change because the new process did none of
what the old one did: every barrier arrival and checkpoint part is bound to
the generation it was made in, so the bump voids the old incarnation's
arrivals and parts at once (DESIGN §5 invariants 2 and 4).

Plans whose size grows with the number of workers (declaring a rack dead) are
split into batches of at most ``MAX_MEMBER_CHANGES_PER_TXN`` members, each
its own transaction within etcd's limits (``dtr.store_types.PLAN_MAX_OPS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from dtr import mutants
from dtr.errors import AlreadyExists
from dtr.keys import JobKeys
from dtr.store import Compare, Delete, Op, Put

from .state import ClusterView, DatasetRecord, MemberRecord

#: Members one plan may change: a compare and a put (or delete) each, plus the
#: generation's compare and put, stay below ``PLAN_MAX_OPS`` (120) and, with
#: records of a few hundred bytes, far below etcd's 1.5 MiB.
MAX_MEMBER_CHANGES_PER_TXN = 100


@dataclass(frozen=True)
class WritePlan:
    """What to write, under which conditions, and the view it leads to."""

    compares: tuple[Compare, ...]
    ops: tuple[Op, ...]
    view: ClusterView


def _unchanged(key: str, record: MemberRecord | DatasetRecord | None) -> Compare:
    """The record is still what the view says (so a stale plan cannot apply)."""
    return Compare.absent(key) if record is None else Compare.value_is(key, record.encode())


def _bump_generation(keys: JobKeys, view: ClusterView) -> tuple[Compare, Put]:
    current = view.generation
    guard = (
        Compare.absent(keys.generation)
        if current == 0
        else Compare.value_is(keys.generation, str(current).encode())
    )
    return guard, Put(keys.generation, str(current + 1).encode())


def plan_member_changes(
    keys: JobKeys, view: ClusterView, changes: Mapping[str, MemberRecord | None]
) -> WritePlan:
    """Write (or delete, for None) member records and bump the generation once."""
    unbounded = mutants.active(mutants.UNBOUNDED_MARK_DEAD)  # MUTANT unbounded-mark-dead
    if len(changes) > MAX_MEMBER_CHANGES_PER_TXN and not unbounded:
        raise ValueError(
            f"{len(changes)} member changes in one plan; split them into batches of "
            f"{MAX_MEMBER_CHANGES_PER_TXN} (membership.batches)"
        )
    compares: list[Compare] = []
    ops: list[Op] = []
    members = _copy(view.members)
    for worker_id, record in sorted(changes.items()):
        key = keys.member(worker_id)
        compares.append(_unchanged(key, view.members.get(worker_id)))
        if record is None:
            ops.append(Delete(key))
            members.pop(worker_id, None)
        else:
            ops.append(Put(key, record.encode()))
            members[worker_id] = record
    # ``members`` is this plan's own dict: the view may hold it without a copy.
    new_view = dataclasses.replace(view, members=MappingProxyType(members))
    if _live_set_changed(view, changes) or _new_live_incarnation(view, changes):
        guard, bump = _bump_generation(keys, view)
        compares.append(guard)
        ops.append(bump)
        new_view = new_view.replace(generation=view.generation + 1)
    return WritePlan(tuple(compares), tuple(ops), new_view)


def _copy(members: Mapping[str, MemberRecord]) -> dict[str, MemberRecord]:
    """A dict of ``members``: ``dict(proxy)`` walks a read-only proxy key by key,
    many times slower than the underlying dict's own ``copy``, once per write."""
    copy = getattr(members, "copy", None)
    return copy() if copy is not None else dict(members)


def _live_set_changed(view: ClusterView, changes: Mapping[str, MemberRecord | None]) -> bool:
    """Whether ``changes`` alter the live members or their capacities (``live_members()``).

    Judged from the changed records alone: comparing the whole live maps
    before and after cost O(members) per write, which was most of the
    leader's time planning a fleet's registrations in batches.
    """
    for worker_id, record in changes.items():
        before = view.members.get(worker_id)
        was = before.capacity if before is not None and before.alive else None
        now = record.capacity if record is not None and record.alive else None
        if was != now:
            return True
    return False


def _new_live_incarnation(view: ClusterView, changes: Mapping[str, MemberRecord | None]) -> bool:
    """Whether a live member is replaced by a new incarnation of its id (a restart)."""
    if mutants.active(mutants.INCARNATION_BLIND_BARRIERS):  # MUTANT incarnation-blind-barriers
        return False
    for worker_id, record in changes.items():
        before = view.members.get(worker_id)
        if (
            record is not None
            and before is not None
            and before.alive
            and record.alive
            and before.incarnation != record.incarnation
        ):
            return True
    return False


def batches(worker_ids: Iterable[str], size: int = MAX_MEMBER_CHANGES_PER_TXN) -> list[list[str]]:
    """``worker_ids`` sorted and cut into plans of at most ``size`` members."""
    ordered: Sequence[str] = sorted(set(worker_ids))
    return [list(ordered[i : i + size]) for i in range(0, len(ordered), size)]


def plan_register(
    keys: JobKeys,
    view: ClusterView,
    worker_id: str,
    capacity: float,
    *,
    host: str,
    pid: int,
    rdzv: tuple[str, int, int] = ("", 0, 0),
) -> WritePlan:
    """A worker (re)joins: a new incarnation; the generation moves only if membership did.

    ``rdzv`` (id, life, round): a torchrun rank of a completed round registering
    again on its own (declared dead after a partition) stays in its round.
    """
    previous = view.members.get(worker_id)
    record = MemberRecord(
        worker_id=worker_id,
        capacity=capacity,
        alive=True,
        incarnation=(previous.incarnation + 1) if previous else 1,
        host=host,
        pid=pid,
        rdzv_id=rdzv[0],
        rdzv_life=rdzv[1],
        rdzv_round=rdzv[2],
    )
    return plan_member_changes(keys, view, {worker_id: record})


def plan_mark_dead(keys: JobKeys, view: ClusterView, worker_ids: Iterable[str]) -> WritePlan | None:
    """Declare live workers dead in one write; None if none of them is live.

    At most ``MAX_MEMBER_CHANGES_PER_TXN`` workers: the leader declares a
    larger failure in ``batches``, one transaction (and one generation) each.
    """
    changes: dict[str, MemberRecord | None] = {}
    for worker_id in worker_ids:
        record = view.members.get(worker_id)
        if record is not None and record.alive:
            changes[worker_id] = replace(record, alive=False)
    return plan_member_changes(keys, view, changes) if changes else None


def plan_deregister(
    keys: JobKeys, view: ClusterView, worker_id: str, incarnation: int
) -> WritePlan | None:
    """A clean exit removes the record; None if it is gone or a newer incarnation runs."""
    record = view.members.get(worker_id)
    if record is None or (incarnation and record.incarnation != incarnation):
        return None
    return plan_member_changes(keys, view, {worker_id: None})


def expired_workers(
    view: ClusterView, last_seen: Mapping[str, float], now: float, timeout_s: float
) -> list[str]:
    """Live members not heard from for ``timeout_s`` (a member never seen counts as seen now)."""
    return sorted(
        worker_id
        for worker_id, record in view.members.items()
        if record.alive and now - last_seen.get(worker_id, now) >= timeout_s
    )


def plan_register_dataset(
    keys: JobKeys, view: ClusterView, wanted: DatasetRecord
) -> WritePlan | None:
    """Create a dataset; None if it exists as asked; AlreadyExists if it differs."""
    existing = view.datasets.get(wanted.name)
    if existing is not None:
        if existing != wanted:
            raise AlreadyExists(
                f"dataset {wanted.name!r} exists with num_shards={existing.num_shards}, "
                f"vnodes={existing.vnodes}, load_factor={existing.load_factor}; "
                f"asked for num_shards={wanted.num_shards}, vnodes={wanted.vnodes}, "
                f"load_factor={wanted.load_factor}"
            )
        return None
    key = keys.dataset(wanted.name)
    datasets = {**view.datasets, wanted.name: wanted}
    return WritePlan(
        (Compare.absent(key),), (Put(key, wanted.encode()),), view.replace(datasets=datasets)
    )
