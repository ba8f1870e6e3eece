"""The news of who leads, kept open by one background call per client (issue 18).

Every replica answers ``WatchLeader`` (a hanging get, ``coordinator/leader_news.py``)
the moment its election watch shows a leader newer than the term the caller
names. ``LeaderWatch`` keeps one such call open, to one replica at a time, on
a daemon thread of its own, and hands each answer to its client
(``CoordinatorClient.note_news``), which re-aims, cancels mutating calls held
by a replica that no longer leads, and wakes the retries sleeping in their
backoff (``dtr.retry.LeaderSignal``).

Which replica: the one watched so far while it answers, preferring one that is
not the cached leader (a frozen leader answers nothing, and the news of its
successor must come from elsewhere). A replica that fails the call is left
for the next one at once; after a whole round of failures the watch pauses,
doubling up to ``_MAX_PAUSE_S``. A replica that refuses the call for good
(UNIMPLEMENTED: an older release; a wrong job; credentials) is skipped for
``_REFUSED_S``; while every replica refuses (logged once), calls fall back to
their backoff, as before, and the watch asks again now and then (a rolling
upgrade ends). The watch dials channels of its own with keepalive pings, so a
frozen replica holding its call is left within about two seconds.

The thread holds only a weak reference to its client between calls, so a
client nobody closed does not live on for its watch's sake.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Sequence
from typing import Protocol

import grpc

from dtr.errors import InvalidArgument
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.retry import status_code

from .addresses import resolved_addresses

_log = logging.getLogger(__name__)


class NewsClient(Protocol):
    """What a watch needs of its client (``CoordinatorClient``; ``dtr status --watch``)."""

    @property
    def addresses(self) -> Sequence[str]: ...
    @property
    def caller_id(self) -> str: ...
    @property
    def term(self) -> int: ...
    @property
    def leader_address(self) -> str | None: ...
    def watch_stub(self, address: str) -> pb_grpc.CoordinatorStub:
        """A stub on a channel of the watch's own, with keepalive pings (never closed by news)."""
        ...

    def header(self, request_id: str) -> pb.RequestHeader: ...
    def note_news(self, replica: str, response: pb.WatchLeaderResponse) -> None: ...


#: How long a replica may hold one call without news (the server caps it at 10 s).
WATCH_WAIT_S = 5.0
#: How much longer than that the client waits for the answer before it takes
#: the replica for stopped (frozen, or cut off) and watches another.
WATCH_GRACE_S = 2.0
_FIRST_PAUSE_S = 0.1
#: How long a replica whose watch call failed is passed over while others answer.
_DOWN_S = 10.0
_MAX_PAUSE_S = 2.0
#: Answers that another attempt at the same replica soon would not change.
#: INTERNAL and UNKNOWN are not among them: a proxy's reset stream reads so.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,  # another job
    }
)
#: How long a refusing replica is left alone: a rolling upgrade replaces an
#: older release (UNIMPLEMENTED) within minutes, and the watch comes back.
_REFUSED_S = 60.0
#: Keepalive pings on the watch's own channels: a replica frozen (SIGSTOP, a
#: hung host) keeps its TCP connection, and without pings its held call would
#: only be given up at its deadline (``WATCH_WAIT_S + WATCH_GRACE_S``). With
#: them, within about two seconds. The coordinator permits such pings
#: (``coordinator/main.py``); they go only to the one replica watched.
WATCH_KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # grpc 1.85 times out an unanswered ping by this, not by keepalive_timeout_ms
    # (default one minute): without it a frozen replica is never noticed.
    ("grpc.http2.ping_timeout_ms", 1000),
)


def first_replica(caller_id: str, count: int) -> int:
    """Where a caller's watch starts: spread by caller id, the same in every process."""
    return zlib.crc32(caller_id.encode()) % count


class LeaderWatch:
    """One ``WatchLeader`` call open at a time for ``client``, on a daemon thread."""

    def __init__(
        self,
        client: NewsClient,
        *,
        wait_s: float = WATCH_WAIT_S,
        grace_s: float = WATCH_GRACE_S,
    ) -> None:
        if not (wait_s > 0 and grace_s > 0):
            raise InvalidArgument(f"wait_s and grace_s must be > 0; got {wait_s!r}, {grace_s!r}")
        self._client = weakref.ref(client)
        self.addresses = tuple(client.addresses)
        self._wait_s = wait_s
        self._grace_s = grace_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: grpc.Future[pb.WatchLeaderResponse] | None = None
        self._refused: dict[str, float] = {}  # address -> time.monotonic() of its refusal
        self._resolved: dict[str, frozenset[str]] = {}  # HOST:PORT -> IP:PORT, resolved once
        self._down: dict[str, float] = {}  # address -> time.monotonic() of its last failure
        self._index = first_replica(client.caller_id, len(self.addresses))
        #: The replica watched now (None between calls); for tests and logs.
        self.watching: str | None = None
        #: Answers received (news or not), for tests.
        self.answers = 0
        self._thread = threading.Thread(
            target=self._run, name=f"dtr-leader-watch-{client.caller_id}"[:60], daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 2.0) -> None:
        """End the watch: cancel the open call and join the thread (bounded)."""
        self._stop.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    # -- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        warned = False
        while not self._stop.is_set():
            address = self._choose()
            if address is None:
                if not warned:
                    warned = True
                    _log.warning(
                        "leader watch: every coordinator refused WatchLeader; retries fall "
                        "back to their backoff (an older coordinator release, or a token it "
                        "refuses); asking again in %.0f s",
                        _REFUSED_S,
                    )
                self._stop.wait(_REFUSED_S / 4)
                continue
            outcome = self._watch_once(address)
            if outcome == "closed":
                return
            if outcome == "answered":
                failures = 0
                continue
            self._index += 1  # this replica failed or knows no leader: the next one
            failures += 1
            rounds, rest = divmod(failures, max(1, len(self.addresses) - len(self._refused)))
            if rest == 0:  # every replica failed in a row: pause before the next round
                self._stop.wait(min(_MAX_PAUSE_S, _FIRST_PAUSE_S * 2.0 ** (rounds - 1)))

    def _choose(self) -> str | None:
        """The replica to watch, in rotation from the current one.

        Preferred: one that answered last time and is not the cached leader;
        then one that answered (the leader, when the followers are down);
        then any not refused. A replica's failure is held against it for
        ``_DOWN_S``, so the watch does not keep dialling a dead follower
        while a live leader could tell it the news.
        """
        now = time.monotonic()
        for address, since in list(self._refused.items()):
            if now - since >= _REFUSED_S:
                del self._refused[address]
        usable = [a for a in self.addresses if a not in self._refused]
        if not usable:
            return None
        client = self._client()
        leader = client.leader_address if client is not None else None
        del client
        ranked = []
        for step in range(len(self.addresses)):
            address = self.addresses[(self._index + step) % len(self.addresses)]
            if address in usable:
                down = now - self._down.get(address, -_DOWN_S) < _DOWN_S
                leads = leader is not None and len(usable) > 1 and self._same(address, leader)
                ranked.append((down, leads, step, address))
        _, _, step, address = min(ranked)
        self._index += step
        return address

    def _same(self, address: str, other: str) -> bool:
        """Whether two addresses name one replica: equal, or resolving to a common IP:PORT."""
        if address == other:
            return True
        for name in (address, other):
            if name not in self._resolved:
                self._resolved[name] = resolved_addresses(name)
        return bool(self._resolved[address] & self._resolved[other])

    def _watch_once(self, address: str) -> str:
        """One call to ``address``: "answered", "moved" (failed or no leader) or "closed"."""
        client = self._client()
        if client is None:
            return "closed"
        try:
            stub = client.watch_stub(address)
        except InvalidArgument:  # the client was closed
            return "closed"
        request = pb.WatchLeaderRequest(
            header=client.header(f"watch-{uuid.uuid4().hex[:12]}"),
            known_term=client.term,
            wait_s=self._wait_s,
        )
        del client  # no strong reference while the call is held
        call = stub.WatchLeader.future(request, timeout=self._wait_s + self._grace_s)
        with self._lock:
            self._call, self.watching = call, address
        if self._stop.is_set():
            call.cancel()
        try:
            response: pb.WatchLeaderResponse = call.result()
        except grpc.FutureCancelledError:
            return "closed" if self._stop.is_set() else "moved"
        except grpc.RpcError as err:
            return self._failed(address, err)
        finally:
            with self._lock:
                self._call, self.watching = None, None
        self.answers += 1
        self._down.pop(address, None)
        client = self._client()
        if client is None:
            return "closed"
        client.note_news(address, response)
        return "answered" if response.HasField("leader") else "moved"

    def _failed(self, address: str, err: grpc.RpcError) -> str:
        code = status_code(err)
        if self._stop.is_set():
            return "closed"
        if code != grpc.StatusCode.CANCELLED:  # CANCELLED: news closed the channel; not down
            self._down[address] = time.monotonic()
        if code in _REFUSALS:
            self._refused[address] = time.monotonic()
            _log.info(
                "leader watch: %s refused WatchLeader (%s); not watching it",
                address,
                code.name if code else "?",
            )
        else:
            _log.debug("leader watch: %s: %s; watching another replica", address, code)
        return "moved"
