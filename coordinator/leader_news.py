"""Who leads, as this replica knows it, and the ``WatchLeader`` calls waiting for a change.

Every replica watches the election prefix (``election.py``), so every replica
learns of a new leader within one etcd watch event of its election, whether or
not it is that leader. ``LeaderNews`` keeps that knowledge for the servicer's
``WatchLeader`` (a hanging get): a call naming the greatest term its client
knows is answered at once when this replica knows a greater one, else the
moment it learns of one, else when its wait ends. Clients then stop sleeping
out retry backoffs past the moment a new leader is known (issue 18).

Thread-safety: ``publish`` runs on the elector's thread; the waiters are
futures of the server's event loop, resolved with ``call_soon_threadsafe``.
Nothing here blocks the loop or holds a lock across an ``await``.

What must not live here: anything that decides who leads (the election does)
or that follows the leader (the worker client does).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from dataclasses import dataclass

from dtr.errors import InvalidArgument
from dtr.proto import coordinator_pb2 as pb

from .election import Candidate

#: The longest a replica holds one WatchLeader call without news; the client
#: then calls again, which is also how it notices a replica that stopped.
MAX_WATCH_S = 10.0
#: Larger requested waits are refused as nonsense rather than capped silently.
_MAX_REQUESTED_WAIT_S = 60.0


@dataclass(frozen=True)
class LeaderWatchRequest:
    """A cleaned ``WatchLeaderRequest``: the caller's greatest term and the hold time."""

    known_term: int
    wait_s: float


def watch_leader_request(req: pb.WatchLeaderRequest) -> LeaderWatchRequest:
    """Validate ``WatchLeader`` (INVALID_ARGUMENT naming the field, DESIGN §8)."""
    wait_s = req.wait_s
    if not math.isfinite(wait_s) or not 0.0 <= wait_s <= _MAX_REQUESTED_WAIT_S:
        raise InvalidArgument(
            f"wait_s: must be 0 (the replica's maximum) or in (0, {_MAX_REQUESTED_WAIT_S:g}] "
            f"seconds; got {wait_s!r}"
        )
    return LeaderWatchRequest(req.known_term, min(wait_s or MAX_WATCH_S, MAX_WATCH_S))


class LeaderNews:
    """The leading candidate this replica last saw, and the waiters for a newer one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leader: Candidate | None = None
        self._waiters: dict[asyncio.Future[None], asyncio.AbstractEventLoop] = {}

    @property
    def leader(self) -> Candidate | None:
        with self._lock:
            return self._leader

    @property
    def waiting(self) -> int:
        """How many calls are held right now (for tests and metrics)."""
        with self._lock:
            return len(self._waiters)

    def publish(self, leader: Candidate | None) -> None:
        """The election saw ``leader`` at the head of the prefix: wake every waiter.

        Called from the elector's thread (an ``Elector`` leader listener).
        None (no candidate, or this replica resigned) answers the held calls
        at once without a leader, so their clients ask another replica
        instead of holding a call on one that is going away.
        """
        with self._lock:
            self._leader = leader
            waiters, self._waiters = self._waiters, {}
        for future, loop in waiters.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: the server stopped
                loop.call_soon_threadsafe(_resolve, future)

    async def wait_newer(self, known_term: int, wait_s: float) -> tuple[Candidate | None, bool]:
        """(the leader, whether its term is greater than ``known_term``), within ``wait_s``.

        A replica that knows no leader (it is not in the election: starting,
        resigned, or its job's keys were wiped) answers at once, so the
        caller asks another instead of holding a call here; a stopping
        replica's held calls would otherwise delay its stop by its grace.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            future: asyncio.Future[None] = loop.create_future()
            with self._lock:
                leader = self._leader
                newer = leader is not None and leader.create_revision > known_term
                remaining = deadline - loop.time()
                if newer or leader is None or remaining <= 0:
                    return leader, newer
                self._waiters[future] = loop
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                leader = self.leader
                return leader, leader is not None and leader.create_revision > known_term
            finally:  # woken, timed out or cancelled: no waiter is left behind
                with self._lock:
                    self._waiters.pop(future, None)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def watch_answer(
    leader: Candidate | None, changed: bool, header: pb.ResponseHeader
) -> pb.WatchLeaderResponse:
    """The wire answer for ``leader`` (the header's term and hint describe the same leader)."""
    response = pb.WatchLeaderResponse(header=header, changed=changed)
    if leader is not None:
        response.header.term = leader.create_revision
        response.header.leader_address = leader.address
        response.leader.CopyFrom(
            pb.LeaderInfo(id=leader.replica_id, address=leader.address, term=leader.create_revision)
        )
    return response
