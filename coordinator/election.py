"""Leader election on etcd leases, with the leader's term as a fencing token.

etcd's election recipe (client/v3/concurrency): each replica creates a
candidate key under the job's election prefix, bound to its own lease; the
live candidate with the lowest create revision leads, and that create
revision is the **term**. Every write the leader makes compares
``create_revision(leader key) == term`` (``Term.fence``), so a deposed or
paused leader cannot change anything even while it still believes it leads.

Leadership is also bounded in time on the leader's side: ``current_term()``
returns the term only while the last successful lease renewal is younger
than ``renew_deadline_s``, which is shorter than the TTL, so a leader that
cannot reach etcd stops accepting writes before its lease can expire.

A slow etcd is not a dead etcd (DESIGN §4). Keep-alives are sent every
``keepalive_interval_s`` on a small pool of their own, whether or not earlier
ones have answered, and each may take ``keepalive_timeout_s`` (sized from the
renew deadline, not from a fast etcd's latency). A renewal counts from the
moment its keep-alive was **sent**, never from when it was answered: the
lease was extended no earlier than that, so a late answer cannot stretch
leadership past what etcd guarantees.

The election watch only wakes the thread early (it also re-reads the prefix
every interval); a watch that ended (etcd compacted the revision it had to
resume from) is created again. A key under the election prefix that is not a
candidate this code wrote is ignored, logged once.

The elector runs on its own thread because ``dtr.store`` is synchronous; the
asyncio server only reads ``current_term()`` and ``leader()``, and hears of a
new leader through ``add_leader_listener`` (``leader_news.py``), called from
this thread the moment a re-read of the prefix shows another head, so every
replica can push the news to its clients (``WatchLeader``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dtr import mutants
from dtr.errors import DtrError, LeaseExpired, StoreError
from dtr.keys import JobKeys
from dtr.store import Compare, EtcdStore, KeyValue, Put
from dtr.watch import Watch, WatchBatch

_log = logging.getLogger(__name__)
_RETRY_S = 0.1


@dataclass(frozen=True)
class Term:
    """A leadership: the leader's candidate key and its create revision (the token)."""

    key: str
    revision: int

    def fence(self) -> Compare:
        """The compare every leader write carries."""
        return Compare.created_at(self.key, self.revision)


@dataclass(frozen=True)
class Candidate:
    """A live replica as the election prefix shows it."""

    replica_id: str
    address: str
    key: str
    create_revision: int


def leader_of(candidates: list[Candidate]) -> Candidate | None:
    """The live candidate with the lowest create revision (pure)."""
    return min(candidates, key=lambda c: c.create_revision, default=None)


def encode_candidate(replica_id: str, address: str) -> bytes:
    return json.dumps({"replica_id": replica_id, "address": address}, sort_keys=True).encode()


def decode_candidate(key: str, value: bytes, create_revision: int) -> Candidate:
    """The candidate ``encode_candidate`` wrote; ValueError for anything else."""
    try:
        data = json.loads(value)
        replica_id, address = data["replica_id"], data["address"]
    except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{key} is not a candidate: {err!r}") from None
    if not isinstance(replica_id, str) or not isinstance(address, str):
        raise ValueError(f"{key} is not a candidate: replica_id and address must be strings")
    return Candidate(replica_id, address, key, create_revision)


def keepalives_in_flight(timeout_s: float, interval_s: float) -> int:
    """How many keep-alives can be pending at once when one is sent every ``interval_s``."""
    return math.ceil(timeout_s / interval_s) + 1


class Elector:
    """Campaigns, keeps the lease alive, and knows who leads. One per replica."""

    def __init__(
        self,
        store: EtcdStore,
        keys: JobKeys,
        *,
        replica_id: str,
        address: str,
        lease_ttl_s: int,
        renew_deadline_s: float,
        keepalive_interval_s: float,
        keepalive_timeout_s: float | None = None,
        on_change: Callable[[], None] = lambda: None,
        self_fencing: bool = True,
    ) -> None:
        """``self_fencing=False`` is the test-only broken replica (``--unsafe-disable-fencing``).

        It keeps a term it once won whatever happens: past its renew deadline,
        after a refused write, after its lease expired. The chaos checkers
        must catch the split brain that follows.
        """
        self._store = store
        self._keys = keys
        self.replica_id = replica_id
        self._value = encode_candidate(replica_id, address)
        self._address = address
        self._ttl_s = lease_ttl_s
        self._deadline_s = renew_deadline_s
        self._interval_s = keepalive_interval_s
        self._keepalive_timeout_s = (
            keepalive_timeout_s
            if keepalive_timeout_s is not None
            else renew_deadline_s - keepalive_interval_s
        )
        self._max_in_flight = keepalives_in_flight(self._keepalive_timeout_s, self._interval_s)
        self._on_change = on_change
        if mutants.active(mutants.UNFENCED_WRITES):  # MUTANT unfenced-writes
            self_fencing = False  # no fence compare in any leader write, never a step-down
        self.self_fencing = self_fencing
        if not self_fencing:
            _log.warning("UNSAFE: fencing is disabled; this replica never steps down (test only)")
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lease_id: int | None = None
        self._my_key: str | None = None
        self._renewed_at = float("-inf")
        self._term: Term | None = None
        self._candidates: list[Candidate] = []
        self._in_flight = 0
        self._lease_lost: int | None = None  # a keep-alive found this lease expired
        self._watch: Watch | None = None
        self._watch_ended = threading.Event()
        self._ignored_keys: set[str] = set()
        self._leader_listeners: list[Callable[[Candidate | None], None]] = []
        self._head: Candidate | None = None  # the leader the listeners last heard of
        self._announcing = threading.Lock()  # taken before _lock, never inside it
        self._keepalives = ThreadPoolExecutor(
            self._max_in_flight, thread_name_prefix="dtr-keepalive"
        )
        self._thread = threading.Thread(target=self._run, name="dtr-elector", daemon=True)
        self._keeper = threading.Thread(
            target=self._keep_alive_loop, name="dtr-keepalive-timer", daemon=True
        )

    # -- what the server reads ---------------------------------------------------
    def current_term(self) -> Term | None:
        """My term if I lead and renewed my lease within the renew deadline, else None."""
        with self._lock:
            if self._term is None:
                return None
            late = time.monotonic() - self._renewed_at >= self._deadline_s
            if late and self.self_fencing:
                return None
            return self._term

    def leader(self) -> Candidate | None:
        """The leading candidate as last seen in etcd (maybe myself)."""
        with self._lock:
            return leader_of(self._candidates)

    def leader_hint(self) -> str | None:
        """The address to send writes to, or None when unknown.

        Never my own address: a replica that believes it leads but cannot
        write (its renew deadline passed) must not send clients back to itself.
        """
        with self._lock:
            head = leader_of(self._candidates)
            if head is None or head.address == self._address:
                return None
            return head.address

    def add_leader_listener(self, listener: Callable[[Candidate | None], None]) -> None:
        """Call ``listener(leader)`` now and whenever the leading candidate changes.

        Called on the elector's thread (or the caller's, for the first call),
        so it must be quick and thread-safe: the push of ``WatchLeader``
        hands the news to the event loop and returns.
        """
        with self._announcing:  # no announcement can slip between the two lines
            with self._lock:
                self._leader_listeners.append(listener)
                head = self._head
            listener(head)

    def in_touch(self) -> bool:
        """Whether my lease was renewed within the renew deadline: what I know of
        the election is current. A replica cut off from etcd must not vouch for
        the leader it last saw (``_announce(None)`` in ``_check_deadline``)."""
        with self._lock:
            return time.monotonic() - self._renewed_at < self._deadline_s

    def candidates(self) -> list[Candidate]:
        with self._lock:
            return sorted(self._candidates, key=lambda c: c.create_revision)

    def step_down(self, reason: str) -> None:
        """A fenced write failed or the deadline passed: I am not the leader."""
        with self._lock:
            if self._term is None or not self.self_fencing:
                return
            revision, self._term = self._term.revision, None
        # Logged outside the lock: the log filter asks leader(), which takes it
        # (a chaos run found the deadlock: a leader cut off from etcd froze).
        _log.warning("term %d: stepping down: %s", revision, reason)
        self._wake.set()
        self._on_change()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._watch = self._store.watch_prefix(self._keys.election_prefix, self._on_election_event)
        self._thread.start()
        self._keeper.start()

    def resign(self) -> None:
        """Stop campaigning and revoke the lease, so a follower takes over at once."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5.0)
        self._keeper.join(timeout=5.0)
        self._keepalives.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            lease_id, self._lease_id, self._term = self._lease_id, None, None
        self._announce(None)  # held WatchLeader calls move on instead of delaying the stop
        if lease_id is not None:
            try:
                self._store.revoke_lease(lease_id)
            except DtrError as err:
                _log.warning("could not revoke lease %x on shutdown: %s", lease_id, err)

    # -- the thread --------------------------------------------------------------
    def _on_election_event(self, batch: WatchBatch) -> None:
        if batch.error is not None:  # the watch has ended (compacted, refused)
            _log.warning("election: watch ended: %s; watching again", batch.error)
            self._watch_ended.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait_s = self._interval_s
            self._wake.clear()  # before the cycle: a change seen during it wakes the next
            try:
                self._cycle()
            except StoreError as err:
                _log.info("election: etcd: %s", err)
                wait_s = min(wait_s, _RETRY_S)  # etcd is back within a reconnect backoff
            except Exception:  # a bug must not silently end the election for this replica
                _log.exception("election: cycle failed; trying again")
                wait_s = min(wait_s, _RETRY_S)
            self._check_deadline()
            if not self._stop.is_set():  # resign() may have consumed the wake-up
                self._wake.wait(wait_s)

    def _cycle(self) -> None:
        self._rewatch_if_ended()
        with self._lock:
            lost = self._lease_lost is not None and self._lease_lost == self._lease_id
            self._lease_lost = None
            if lost:
                self._lease_id, self._my_key = None, None
        if lost:
            _log.warning("election: my lease expired; campaigning again")
            self._set_term(None)
        if self._lease_id is None:
            self._campaign()
        self._evaluate()

    def _rewatch_if_ended(self) -> None:
        """Create the election watch again after it ended (the prefix is re-read anyway)."""
        if not self._watch_ended.is_set():
            return
        self._watch_ended.clear()
        try:
            self._watch = self._store.watch_prefix(
                self._keys.election_prefix, self._on_election_event
            )
        except StoreError:
            self._watch_ended.set()  # try again next cycle
            raise
        _log.info("election: watching %s again", self._keys.election_prefix)

    # -- keep-alives -------------------------------------------------------------
    def _keep_alive_loop(self) -> None:
        """Send a keep-alive every interval, not waiting for earlier ones to answer."""
        while not self._stop.is_set():
            with self._lock:
                lease_id = self._lease_id
                send = lease_id is not None and self._in_flight < self._max_in_flight
                if send:
                    self._in_flight += 1
            if send and lease_id is not None:
                try:
                    self._keepalives.submit(self._keep_alive, lease_id)
                except RuntimeError:  # the pool was shut down: resigning
                    return
            self._stop.wait(self._interval_s)

    def _keep_alive(self, lease_id: int) -> None:
        """One keep-alive; a success renews as of the moment it was sent."""
        sent_at = time.monotonic()
        try:
            self._store.refresh_lease(lease_id, timeout_s=self._keepalive_timeout_s)
        except LeaseExpired:
            with self._lock:
                self._lease_lost = lease_id
            self._wake.set()
        except StoreError as err:
            _log.info("election: etcd: %s", err)
        else:
            with self._lock:
                if self._lease_id == lease_id:
                    self._renewed_at = max(self._renewed_at, sent_at)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _campaign(self) -> None:
        sent_at = time.monotonic()
        lease = self._store.grant_lease(self._ttl_s)
        key = self._keys.candidate(lease.lease_id)
        result = self._store.txn([Compare.absent(key)], [Put(key, self._value, lease.lease_id)])
        if not result.succeeded:  # a lease id is unique; this means etcd reused one
            self._store.revoke_lease(lease.lease_id)
            return
        with self._lock:
            self._lease_id, self._my_key, self._renewed_at = lease.lease_id, key, sent_at
        _log.info("election: campaigning with %s", key)

    def _evaluate(self) -> None:
        snapshot = self._store.get_prefix(self._keys.election_prefix)
        candidates = [c for c in map(self._candidate, snapshot.kvs) if c is not None]
        with self._lock:
            self._candidates = candidates
            my_key = self._my_key
            orphaned = my_key is not None and all(c.key != my_key for c in candidates)
            if orphaned:
                # My key is gone while my lease lives: the job's prefix was
                # wiped (a new job life). Without a key I can never lead
                # again, so campaign afresh on the next cycle.
                self._lease_id, self._my_key = None, None
                self._wake.set()
        if orphaned:
            _log.warning("election: my candidate key %s was deleted; campaigning again", my_key)
        head = leader_of(candidates)
        if head is not None and head.key == my_key:
            self._set_term(Term(head.key, head.create_revision))
        else:
            self._set_term(None)
        self._announce(head if self.in_touch() else None)

    def _announce(self, head: Candidate | None) -> None:
        """Tell the leader listeners when the head of the prefix changed (outside the lock).

        Serialized by ``_announcing``, so listeners hear the changes in order
        and one added meanwhile (``add_leader_listener``) misses none.
        """
        with self._announcing:
            with self._lock:
                if head == self._head:
                    return
                self._head = head
                listeners = list(self._leader_listeners)
            for listener in listeners:
                try:
                    listener(head)
                except Exception:  # a listener's bug must not end the election
                    _log.exception("election: a leader listener failed")

    def _candidate(self, kv: KeyValue) -> Candidate | None:
        """The candidate ``kv`` holds; None (logged once per key) if it holds none."""
        try:
            return decode_candidate(kv.key, kv.value, kv.create_revision)
        except ValueError as err:
            if kv.key not in self._ignored_keys:
                self._ignored_keys.add(kv.key)
                _log.warning("election: ignoring a key that is not a candidate: %s", err)
            return None

    def _set_term(self, term: Term | None) -> None:
        with self._lock:
            if term is None and not self.self_fencing:
                return  # the broken replica: a term once won is never given up
            changed = term != self._term
            self._term = term
        if changed:
            if term is not None:
                _log.info("term %d: elected leader", term.revision)
            self._on_change()

    def _check_deadline(self) -> None:
        """etcd is out of reach: past the renew deadline, drop the term at once."""
        with self._lock:
            expired = (
                self._term is not None and time.monotonic() - self._renewed_at >= self._deadline_s
            )
        if expired:
            self.step_down("could not renew the lease within the renew deadline")
        if not self.in_touch():
            # Cut off from etcd: what this replica saw may be over. Its held
            # WatchLeader calls answer "no leader", so clients ask another.
            self._announce(None)
