"""torchrun's rendezvous on the leader: a compare-and-set state blob and the agents' store.

``torchrun --rdzv-backend=dtr`` (``dtr.worker.rendezvous``) keeps torch
elastic's rendezvous state here instead of on one agent (``c10d``) or in
etcd's removed v2 API (``etcd-v2``). Each rendezvous id owns, under the job's
prefix (``dtr.keys``):

- ``state``: torch's opaque blob. Its token is the key's etcd mod_revision, so
  "set if unchanged since token T" is one transaction comparing it, plus the
  leader's fence like every leader write.
- ``store/<hex key>``: the small key-value store torch's agents share before
  their workers start (the master address, role infos, rank assignments,
  the exit barrier's counter). Store reads wait on this leader's own writes,
  so only the leader answers; a replica that loses its term wakes its
  waiters, which then answer NOT_LEADER and the agents follow the new leader.
- ``adds/<request id>``: what a ``Store.add`` answered, so a retry of an add
  whose answer was lost does not add twice (an exit barrier counting one agent
  twice would release early). A retry comes within the client's retry
  deadline, so these keys ride on an etcd lease that expires them after
  ``ADD_ANSWER_TTL_S``; a new lease is granted every half TTL, so a key always
  lives at least half of it, whichever replica leads meanwhile.

The state and store keys, and ``lease`` (the id of the etcd lease they ride
on), expire together when the rendezvous is idle: every call for the id
renews its lease (at most every quarter TTL per replica), and etcd deletes
the keys ``idle_ttl_s`` after the last call (``--rendezvous-idle-ttl-s``,
default ``DEFAULT_IDLE_TTL_S``). torch's agents call at
least every keep-alive interval (5 s) while any of them runs, so a live
rendezvous never expires, and a later run reusing the ``--rdzv-id`` starts a
fresh round instead of meeting the closed one. The lease is found through
its key, so a new leader keeps renewing the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import defaultdict
from dataclasses import dataclass

from dtr.errors import InvalidArgument, LeaseExpired, StoreUnavailable
from dtr.keys import JobKeys
from dtr.store import Compare, Get, KeyValue, Put, TxnResult

from .leader import Coordinator

#: A store read waits at most this long per call; the agent calls again.
MAX_STORE_WAIT_S = 10.0
#: How long an add's answer is kept for its retries (clients give up after 30 s).
ADD_ANSWER_TTL_S = 600
#: A rendezvous nobody called for this long is deleted: well above torch's
#: keep-alive (5 s) and its dead-node timeout (3 missed keep-alives).
DEFAULT_IDLE_TTL_S = 60
_ADD_ATTEMPTS = 5


@dataclass(frozen=True)
class StateRead:
    """The state blob as etcd holds it; ``present`` False before the first set."""

    present: bool
    state: bytes = b""
    token: int = 0
    #: The key's create_revision (0 when unknown): which life of the rendezvous.
    created: int = 0

    @classmethod
    def of(cls, kvs: tuple[KeyValue, ...]) -> StateRead:
        if not kvs:
            return cls(False)
        return cls(True, kvs[0].value, kvs[0].mod_revision, kvs[0].create_revision)


@dataclass(frozen=True)
class StoreRead:
    """Values of the asked keys in order, or the ones still missing."""

    values: tuple[bytes, ...]
    missing: tuple[str, ...]


class Rendezvous:
    """The rendezvous calls of one replica; every write goes through the leader's fence."""

    def __init__(self, core: Coordinator) -> None:
        self.core = core
        self.keys: JobKeys = core.keys
        # One event per awaited key, held only by its waiters: a write wakes the
        # readers of what it wrote, not every reader of the rendezvous.
        self._changed: weakref.WeakValueDictionary[tuple[str, str], asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._add_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._answer_lease: tuple[int, float] | None = None  # (lease id, granted at)
        self.idle_ttl_s = core.config.rendezvous_idle_ttl_s
        self._leases: dict[str, tuple[int, float]] = {}  # rdzv id -> (lease, renewed at)
        core.term_lost_listeners.append(self.wake_all)

    # -- idle expiry ---------------------------------------------------------------
    def _lease_key(self, rendezvous_id: str) -> str:
        return f"{self.keys.rendezvous_prefix(rendezvous_id)}lease"

    async def _renewed(self, rendezvous_id: str, *, create: bool) -> int:
        """The rendezvous's lease, renewed; 0 when it has none and ``create`` is False.

        Renewal is what "in use" means: a read renews an existing lease, a write
        also creates one, through a fenced compare-absent on its key.
        """
        loop = asyncio.get_running_loop()
        cached = self._leases.get(rendezvous_id)
        if cached is not None and loop.time() - cached[1] < self.idle_ttl_s / 4:
            return cached[0]
        lease_id = cached[0] if cached is not None else await self._stored_lease(rendezvous_id)
        if lease_id and await self._refresh(lease_id):
            self._leases[rendezvous_id] = (lease_id, loop.time())
            return lease_id
        self._leases.pop(rendezvous_id, None)
        if cached is not None:  # the cached lease is gone: another may be stored now
            return await self._renewed(rendezvous_id, create=create)
        return await self._create_lease(rendezvous_id) if create else 0

    async def _stored_lease(self, rendezvous_id: str) -> int:
        await self.core.leading_term()
        result = await asyncio.to_thread(
            self.core.store.txn, [], [Get(self._lease_key(rendezvous_id))]
        )
        kvs = _kvs(result, 0)
        return int(kvs[0].value) if kvs else 0

    async def _refresh(self, lease_id: int) -> bool:
        try:
            await asyncio.to_thread(self.core.store.refresh_lease, lease_id)
        except LeaseExpired:
            return False
        return True

    async def _create_lease(self, rendezvous_id: str) -> int:
        """Grant a lease and record it, unless another call recorded one first."""
        granted = await asyncio.to_thread(self.core.store.grant_lease, self.idle_ttl_s)
        key = self._lease_key(rendezvous_id)
        result = await self.core.fenced_txn(
            [Compare.absent(key)], [Put(key, str(granted.lease_id).encode(), granted.lease_id)]
        )
        if not result.succeeded:
            await asyncio.to_thread(self.core.store.revoke_lease, granted.lease_id)
            return await self._renewed(rendezvous_id, create=True)
        self._leases[rendezvous_id] = (granted.lease_id, asyncio.get_running_loop().time())
        return granted.lease_id

    # -- state ---------------------------------------------------------------------
    async def get_state(self, rendezvous_id: str) -> StateRead:
        await self.core.leading_term()
        await self._renewed(rendezvous_id, create=False)
        key = self.keys.rendezvous_state(rendezvous_id)
        result = await asyncio.to_thread(self.core.store.txn, [], [Get(key)])
        return StateRead.of(_kvs(result, 0))

    async def set_state(
        self, rendezvous_id: str, state: bytes, token: int | None
    ) -> tuple[bool, StateRead]:
        """Compare-and-set; ``(has_set, state now)``.

        A losing call whose bytes are already the current state counts as set:
        that is this call's own earlier attempt (answer lost, retried), or a
        peer that wrote the very same state, which torch treats alike (its
        c10d backend compares the bytes the same way).
        """
        key = self.keys.rendezvous_state(rendezvous_id)
        expected = Compare.absent(key) if token is None else Compare.modified_at(key, token)
        lease_id = await self._renewed(rendezvous_id, create=True)
        result = await self.core.fenced_txn([expected], [Put(key, state, lease_id)], [Get(key)])
        if result.succeeded:
            return True, StateRead(True, state, result.revision)
        current = StateRead.of(_kvs(result, 0))
        return current.present and current.state == state, current

    # -- store ---------------------------------------------------------------------
    async def store_set(self, rendezvous_id: str, entries: tuple[tuple[str, bytes], ...]) -> None:
        lease_id = await self._renewed(rendezvous_id, create=True)
        puts = [Put(self.keys.rendezvous_store(rendezvous_id, k), v, lease_id) for k, v in entries]
        await self.core.fenced_txn([], puts)
        self._wake(rendezvous_id, [k for k, _ in entries])

    async def store_get(
        self, rendezvous_id: str, keys: tuple[str, ...], wait_s: float
    ) -> StoreRead:
        """The values, waiting up to ``wait_s`` (capped) for every key to exist."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait_s, MAX_STORE_WAIT_S)
        reads = [Get(self.keys.rendezvous_store(rendezvous_id, k)) for k in keys]
        await self._renewed(rendezvous_id, create=False)
        while True:
            await self.core.leading_term()
            # Events are taken before the read, so a write between the two is not missed.
            events = {key: self._event(rendezvous_id, key) for key in keys}
            result = await asyncio.to_thread(self.core.store.txn, [], reads)
            found = [_kvs(result, i) for i in range(len(keys))]
            missing = tuple(k for k, kvs in zip(keys, found, strict=True) if not kvs)
            remaining = deadline - loop.time()
            if not missing:
                return StoreRead(tuple(kvs[0].value for kvs in found), ())
            if remaining <= 0:
                return StoreRead((), missing)
            changed = events[missing[0]]  # the others are read again when it comes
            with contextlib.suppress(TimeoutError):  # then one last read, and the answer
                await asyncio.wait_for(changed.wait(), remaining)

    async def store_add(self, rendezvous_id: str, key: str, delta: int, request_id: str) -> int:
        """Add to an integer key, once per ``request_id`` however often it is retried."""
        etcd_key = self.keys.rendezvous_store(rendezvous_id, key)
        answered = self.keys.rendezvous_add(rendezvous_id, request_id)
        async with self._add_locks[rendezvous_id]:  # no compare races within this term
            for _ in range(_ADD_ATTEMPTS):
                await self.core.leading_term()
                read = await asyncio.to_thread(
                    self.core.store.txn, [], [Get(etcd_key), Get(answered)]
                )
                earlier = _kvs(read, 1)
                if earlier:
                    return int(earlier[0].value)
                current = _kvs(read, 0)
                value = _integer(key, current[0].value if current else b"0") + delta
                unchanged = (
                    Compare.modified_at(etcd_key, current[0].mod_revision)
                    if current
                    else Compare.absent(etcd_key)
                )
                encoded = str(value).encode()
                lease_id = await self._answers_lease()
                idle_lease = await self._renewed(rendezvous_id, create=True)
                result = await self.core.fenced_txn(
                    [unchanged],
                    [Put(etcd_key, encoded, idle_lease), Put(answered, encoded, lease_id)],
                )
                if result.succeeded:
                    self._wake(rendezvous_id, [key])
                    return value
        raise StoreUnavailable(f"store key {key!r} kept changing under this add; retry")

    async def _answers_lease(self) -> int:
        """The lease add answers ride on; a fresh one every half TTL, so none is near expiry."""
        loop = asyncio.get_running_loop()
        lease = self._answer_lease
        if lease is None or loop.time() - lease[1] > ADD_ANSWER_TTL_S / 2:
            granted = await asyncio.to_thread(self.core.store.grant_lease, ADD_ANSWER_TTL_S)
            lease = self._answer_lease = (granted.lease_id, loop.time())
        return lease[0]

    # -- waking waiters --------------------------------------------------------------
    def _event(self, rendezvous_id: str, key: str) -> asyncio.Event:
        event = self._changed.get((rendezvous_id, key))
        if event is None:
            event = self._changed[(rendezvous_id, key)] = asyncio.Event()
        return event

    def _wake(self, rendezvous_id: str, keys: list[str]) -> None:
        for key in keys:
            event = self._changed.pop((rendezvous_id, key), None)
            if event is not None:
                event.set()

    def wake_all(self) -> None:
        """The term is over: every waiter re-checks, and learns it is NOT_LEADER."""
        events = list(self._changed.values())
        self._changed.clear()
        for event in events:
            event.set()


def _kvs(result: TxnResult, index: int) -> tuple[KeyValue, ...]:
    found = result.results[index]
    return found if isinstance(found, tuple) else ()


def _integer(key: str, value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(
            f"key: store key {key!r} holds {value[:40]!r}, not an integer; add needs one"
        ) from None
