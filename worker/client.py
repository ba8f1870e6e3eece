"""The worker's gRPC client: one channel per coordinator, the cached leader, one ``call``.

Every unary RPC the worker side makes goes through ``CoordinatorClient.call``:
the retry policy of ``dtr/retry.py`` around single attempts, each aimed at
the best guess of the leader —

1. the leader cached from an earlier answer (a mutating call that succeeded,
   a ``ResponseHeader`` with ``is_leader``, or a ``dtr-leader`` hint);
2. otherwise the configured coordinators in turn, starting after the last
   one that failed.

A NOT-LEADER answer caches its hint (or forgets the leader when it carries
none); an UNAVAILABLE or timed-out attempt forgets a cached leader it was
aimed at. Errors leave as ``dtr.errors`` types (``rpc_errors``), never as
``grpc.RpcError``.

Leader changes are pushed, not polled (issue 18). From its first call on, the
client keeps one ``WatchLeader`` call open to one replica (``leader_watch.py``).
News of a newer term — from that watch, or from any answer's header — aims
the next attempt at the new leader, closes the channel to any other replica
holding one of the client's mutating calls (a frozen or deposed leader's long
poll would otherwise run to its end; the heartbeat stream beside it moves
too), so those calls are sent again at once, and wakes every retry sleeping
in its backoff (``dtr.retry.LeaderSignal``). Calls stay plain blocking calls (a
cancellable future per call costs a thread hop on every call). For a moment after such news, a
NOT-LEADER answer from the announced leader (it is still taking over) keeps
it as the target instead of following its stale hint. ``leader_watch=False``
(or ``DTR_LEADER_WATCH=0``) turns all of this off, for comparisons.

A hint is followed only where it cannot hand the caller's bearer token (or
its requests) to an address nobody vouched for (``hint_allowed``): an address
in the configured list, or one that a configured name resolves to (a headless
Service names every replica's pod IP), or any address when TLS is on (the
channel then checks that the hinted name is in the server's certificate).
Any other hint is ignored, logged once per address, and the client tries the
configured replicas in turn instead.

Credentials (TLS, a bearer token) come in as one ``dtr.security.ClientSecurity``
and ride on every channel, streams included; the default is plaintext.

Each attempt is timed into ``WorkerMetrics.rpc_seconds`` (method, status
code) and, when OpenTelemetry is installed, runs in a CLIENT span whose
context rides in the call's metadata (``dtr.tracing``).

Thread-safe: the training thread and the heartbeat thread share one client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from dtr import tracing
from dtr.errors import InvalidArgument
from dtr.keys import validate_name
from dtr.proto import LEADER_METADATA_KEY
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.retry import (
    LeaderSignal,
    RetryPolicy,
    call_with_retry,
    is_not_leader,
    status_code,
    trailing_metadata,
)
from dtr.security import (
    ENV_TOKEN_FILE,
    ClientSecurity,
    TlsFiles,
    client_security,
    read_token_file,
)

from .addresses import HOST_PORT, resolved_addresses
from .leader_watch import WATCH_KEEPALIVE_OPTIONS, LeaderWatch
from .metrics import WorkerMetrics
from .rpc_errors import error_from_rpc

_log = logging.getLogger(__name__)

#: Reconnect quickly to a coordinator that came back (the default backoff
#: grows to two minutes); gRPC's own retries stay off (dtr/retry.py). Answers
#: may be as large as the coordinator sends (64 MiB, coordinator/main.py).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)
AnswerListener = Callable[[str, str, pb.ResponseHeader, bool], None]
_FORGET_LEADER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: ``DTR_LEADER_WATCH=0`` turns the pushed leader news off (benchmarks/failover_seen.py).
ENV_LEADER_WATCH = "DTR_LEADER_WATCH"
#: How long after news of a leader its own NOT-LEADER answers are taken for
#: "still taking over" rather than followed to the (stale) hint they carry.
NEWS_PIN_S = 1.0


def leader_watch_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``DTR_LEADER_WATCH`` leaves the pushed leader news on (the default)."""
    raw = (os.environ if environ is None else environ).get(ENV_LEADER_WATCH, "").strip().lower()
    if raw in ("", "1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"{ENV_LEADER_WATCH}={raw!r}: expected 1 or 0")


class _Abandoned(grpc.RpcError):
    """A mutating call given up on a replica that no longer serves it; retried (UNAVAILABLE).

    Either news named another leader and the client closed the channel the
    call was on, or the replica cancelled it itself (CANCELLED: a replica
    stopping cancels what it holds when its grace ends). Every mutating call
    is idempotent, so sending it again is safe either way; a read is sent
    again only in the first case.
    """

    def __init__(self, address: str, *, by_replica: bool = False) -> None:
        super().__init__(address)
        self.by_replica = by_replica
        why = "cancelled the call (stopping)" if by_replica else "no longer leads"
        self._details = f"{address} {why}; the call is sent again to the leader"

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return ()


def parse_coordinators(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"h1:p1,h2:p2"`` or a list of ``HOST:PORT`` as a tuple, checked, duplicates dropped."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    addresses: list[str] = []
    for raw in parts:
        if not isinstance(raw, str):
            raise InvalidArgument(f"coordinators: expected HOST:PORT strings; got {raw!r}")
        address = raw.strip()
        match = HOST_PORT.fullmatch(address)
        if match is None or not 0 < int(match["port"]) < 65536:
            raise InvalidArgument(
                f"coordinators: {address!r} is not HOST:PORT with a port in 1-65535 "
                "(give a comma-separated list such as '10.0.0.1:50051,10.0.0.2:50051')"
            )
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise InvalidArgument("coordinators: give at least one HOST:PORT")
    return tuple(addresses)


def resolve_security(tls: TlsFiles | None, token: str | None) -> ClientSecurity:
    """A client's credentials: the arguments first, then the ``DTR_*`` variables.

    Shared by ``Worker`` and the torchrun rendezvous (``rendezvous.py``), so a
    training script and its launcher read the same ``DTR_TLS_*`` /
    ``DTR_TOKEN_FILE`` environment the same way.
    """
    if tls is None:
        tls = TlsFiles.from_environment(os.environ)
    if token is None and os.environ.get(ENV_TOKEN_FILE):
        token = read_token_file(os.environ[ENV_TOKEN_FILE])
    return client_security(tls, token)


def hint_allowed(
    hint: str,
    configured: Sequence[str],
    *,
    tls: bool,
    resolve: Callable[[str], frozenset[str]] | None = None,
) -> bool:
    """Whether a ``dtr-leader`` hint may be dialled with the caller's credentials.

    The one rule every hint follower shares (``CoordinatorClient``, the
    torchrun rendezvous through it, and ``dtr status``): a replica is trusted
    to name the leader only among addresses the caller already trusts, so a
    misconfigured or hostile replica cannot redirect a plaintext client, and
    its token, elsewhere. ``resolve`` maps a configured ``HOST:PORT`` to the
    ``IP:PORT`` addresses its name stands for (default: DNS via getaddrinfo).
    """
    if hint in configured or tls:
        return True
    resolve = resolve or resolved_addresses
    hinted = resolve(hint)
    return bool(hinted) and any(hinted & resolve(address) for address in configured)


class CoordinatorClient:
    """Channels to the coordinators of one job and the leader-following ``call``."""

    def __init__(
        self,
        coordinators: str | Sequence[str],
        *,
        job: str,
        caller_id: str,
        policy: RetryPolicy | None = None,
        attempt_timeout_s: float = 5.0,
        security: ClientSecurity | None = None,
        metrics: WorkerMetrics | None = None,
        leader_watch: bool | None = None,
    ) -> None:
        """Validate everything and dial nothing yet (channels connect on first use).

        ``security`` (TLS credentials and a token, ``dtr.security.client_security``)
        applies to every channel, hinted leaders' included; None is plaintext.
        ``leader_watch`` (default ``$DTR_LEADER_WATCH``, else on): keep the
        pushed leader news (see the module docstring); it starts with the
        first ``call``.
        """
        self.addresses = parse_coordinators(coordinators)
        self.job = validate_name("job", job)
        self.caller_id = caller_id
        self.policy = policy or RetryPolicy()
        if not attempt_timeout_s > 0:
            raise InvalidArgument(f"attempt_timeout_s must be > 0; got {attempt_timeout_s!r}")
        self.attempt_timeout_s = attempt_timeout_s
        self.security = security or ClientSecurity()
        self.metrics = metrics or WorkerMetrics()
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, pb_grpc.CoordinatorStub] = {}
        self._leader: str | None = None
        self._next = 0
        self._hint_verdicts: dict[str, bool] = {}  # hint -> allowed, decided once
        self._closed = False
        self.leader_watch = leader_watch_from_env() if leader_watch is None else leader_watch
        #: Counted news of the leader; retries wait on it (None: the push is off).
        self.news: LeaderSignal | None = LeaderSignal() if self.leader_watch else None
        self._watch: LeaderWatch | None = None
        self._watch_channels: dict[str, grpc.Channel] = {}
        self._watch_stubs: dict[str, pb_grpc.CoordinatorStub] = {}
        self._news_leader: str | None = None  # the leader the latest news named
        self._news_at = float("-inf")
        self._news_count = 0  # pieces of news that named a leader
        self._in_flight: dict[str, int] = {}  # address -> mutating calls in flight there
        self._drops: dict[str, int] = {}  # address -> channels to it closed by news
        #: The largest term and generation any answer carried.
        self.term = 0
        self.generation = 0
        #: time.monotonic() of the last answer from any coordinator (0: never).
        self.last_answer_at = 0.0
        #: Called with (method, address, header, accepted_write) after every
        #: answered call, on the calling thread: for tracing and the chaos
        #: harness's history. A listener must be quick and must not raise.
        self.answer_listeners: list[AnswerListener] = []

    # -- targets ----------------------------------------------------------------
    @property
    def leader_address(self) -> str | None:
        """The cached leader, or None when the next attempt will try replicas in turn."""
        return self._leader

    def target(self) -> str:
        """The address the next attempt should use."""
        with self._lock:
            return self._leader or self.addresses[self._next % len(self.addresses)]

    def stub(self, address: str) -> pb_grpc.CoordinatorStub:
        """The stub for ``address``, dialling it on first use."""
        with self._lock:
            if self._closed:
                raise InvalidArgument("the coordinator client is closed")
            stub = self._stubs.get(address)
            if stub is None:
                channel = self.security.channel(address, options=CHANNEL_OPTIONS)
                self._channels[address] = channel
                stub = self._stubs[address] = pb_grpc.CoordinatorStub(channel)
            return stub

    def watch_stub(self, address: str) -> pb_grpc.CoordinatorStub:
        """The leader watch's stub for ``address``: a channel of its own, with keepalive
        pings, never closed by news (``leader_watch.WATCH_KEEPALIVE_OPTIONS``)."""
        with self._lock:
            if self._closed:
                raise InvalidArgument("the coordinator client is closed")
            stub = self._watch_stubs.get(address)
            if stub is None:
                channel = self.security.channel(
                    address, options=CHANNEL_OPTIONS + WATCH_KEEPALIVE_OPTIONS
                )
                self._watch_channels[address] = channel
                stub = self._watch_stubs[address] = pb_grpc.CoordinatorStub(channel)
            return stub

    def followable(self, hint: str) -> bool:
        """``hint_allowed`` for this client, decided once per hint and logged once if refused.

        Called outside the lock: deciding may resolve the configured names.
        """
        verdict = self._hint_verdicts.get(hint)
        if verdict is None:
            verdict = hint_allowed(hint, self.addresses, tls=self.security.credentials is not None)
            with self._lock:
                first = hint not in self._hint_verdicts
                self._hint_verdicts[hint] = verdict
            if first and not verdict:
                _log.warning(
                    "ignoring leader hint %r: it is not one of the configured coordinators "
                    "(%s) and TLS is off, so it is not dialled with this client's "
                    "credentials; list it in the coordinators (or turn TLS on) to follow it",
                    hint,
                    ",".join(self.addresses),
                )
        return verdict

    def note_answer(self, address: str, header: pb.ResponseHeader, *, accepted_write: bool) -> None:
        """Learn from an answer: the leader, and the newest term and generation.

        With the push on, an answer carrying a newer term is news like a
        ``WatchLeader`` answer (``_news_locked``): other threads' retries wake.
        """
        hint = header.leader_address
        allowed = bool(hint) and not header.is_leader and self.followable(hint)
        with self._lock:
            self.last_answer_at = time.monotonic()
            newer = self.news is not None and header.term > self.term
            # With the push on, a late answer of an older term (the old leader
            # answering a call sent before the news) does not undo the news.
            older = self.news is not None and 0 < header.term < self.term
            self.term = max(self.term, header.term)
            self.generation = max(self.generation, header.generation)
            if (accepted_write or header.is_leader) and not older:
                self._leader = address
            elif allowed and (self._leader is None or newer):
                self._leader = hint
            closing = self._news_locked(self._leader) if newer else []
        self._spread(closing, newer)

    def note_news(self, replica: str, response: pb.WatchLeaderResponse) -> None:
        """A ``WatchLeader`` answer from ``replica``: a newer term re-aims and wakes retries."""
        del replica  # any replica may tell who leads; the hint rule decides whether to follow
        if self.news is None or not response.HasField("leader"):
            return
        leader = response.leader
        allowed = bool(leader.address) and self.followable(leader.address)
        with self._lock:
            newer = leader.term > self.term
            self.term = max(self.term, leader.term)
            if allowed and (newer or self._leader is None):
                self._leader = leader.address
            closing = self._news_locked(leader.address) if newer and allowed else []
        self._spread(closing, newer)

    def _news_locked(self, leader: str | None) -> list[grpc.Channel]:
        """Record news of ``leader`` (lock held); the channels to close, now taken out.

        Those are the channels to any other replica holding one of this
        client's mutating calls: closing one ends every call on it at once (a
        frozen or deposed leader's long poll, and the heartbeat stream beside
        it), and the next call dials afresh. Cheaper than making every call
        cancellable. A channel with no call held is left alone: a replica
        that stopped leading ends its streams itself, and closing them all at
        once would send every stream to the new leader in the same instant
        as it takes over.
        """
        if leader is None:
            return []
        self._news_leader, self._news_at = leader, time.monotonic()
        self._news_count += 1
        stale = sorted(a for a, n in self._in_flight.items() if n > 0 and a != leader)
        closing = []
        for address in stale:
            channel = self._channels.pop(address, None)
            self._stubs.pop(address, None)
            if channel is not None:
                self._drops[address] = self._drops.get(address, 0) + 1
                closing.append(channel)
        return closing

    def _spread(self, closing: list[grpc.Channel], newer: bool) -> None:
        """Wake sleeping retries, then close ``closing`` (their calls are re-sent); lock free.

        Waking first: a retry aims at the new leader at once, while closing a
        channel can take milliseconds (it ends the calls on it).
        """
        if newer and self.news is not None:
            self.news.announce()
        for channel in closing:
            channel.close()

    def note_failure(self, address: str, err: BaseException) -> None:
        """Re-aim after a failed attempt: follow an allowed hint, or move to the next replica.

        With the push on, a refusal from a replica other than the leader the
        client follows now (a call, or the heartbeat stream, aimed at the old
        leader before the news came) changes nothing: the news is newer than
        the hint of a replica that stopped leading.
        """
        hint = trailing_metadata(err).get(LEADER_METADATA_KEY) if is_not_leader(err) else None
        allowed = bool(hint) and self.followable(hint or "")
        with self._lock:
            if is_not_leader(err) and self._taking_over(address):
                self._leader = address  # announced, not yet serving: its hint is stale
                return
            if self.news is not None and self._leader not in (None, address):
                return  # an attempt aimed elsewhere before the leader was learnt
            if is_not_leader(err):
                self._leader = hint if allowed else None
                if self._leader == address:  # a replica naming itself while refusing: move on
                    self._leader = None
            elif status_code(err) in _FORGET_LEADER_CODES or status_code(err) is None:
                if self._leader == address:
                    self._leader = None
            else:
                return
            if address in self.addresses:
                self._next = self.addresses.index(address) + 1

    def _taking_over(self, address: str) -> bool:
        """``address`` was announced as the leader moments ago (lock held)."""
        return address == self._news_leader and time.monotonic() - self._news_at < NEWS_PIN_S

    # -- calls ------------------------------------------------------------------
    def header(self, request_id: str) -> pb.RequestHeader:
        return pb.RequestHeader(
            job=self.job, caller_id=self.caller_id, client_request_id=request_id
        )

    def call(
        self,
        method: str,
        build: Callable[[], Any],
        *,
        operation: str,
        mutating: bool,
        policy: RetryPolicy | None = None,
        attempt_timeout_s: float | None = None,
    ) -> Any:
        """Send ``build()`` (a request without header) until it succeeds or fails for good.

        ``build`` runs before every attempt, so a request can carry what the
        worker learned meanwhile (a new incarnation). Raises ``dtr.errors``
        types only: ``CoordinatorUnavailable`` when the policy's deadline ran
        out on retryable failures.
        """
        policy = policy or self.policy
        per_attempt = attempt_timeout_s or self.attempt_timeout_s
        deadline = time.monotonic() + policy.deadline_s
        request_id = uuid.uuid4().hex
        self._start_watch()

        def attempt() -> Any:
            with self._lock:
                address = self._leader or self.addresses[self._next % len(self.addresses)]
                news_seen, drops_seen = self._news_count, self._drops.get(address, 0)
            request = build()
            request.header.CopyFrom(self.header(request_id))
            timeout = max(0.05, min(per_attempt, deadline - time.monotonic()))
            rpc = getattr(self.stub(address), method)
            started, code = time.perf_counter(), "OK"
            try:
                with tracing.client_span(method) as metadata, self._held(address, mutating):
                    if mutating and self._stale_aim(address, news_seen):
                        raise _Abandoned(address)  # news came since it was chosen: not sent
                    try:
                        response = rpc(request, timeout=timeout, metadata=metadata or None)
                    except (grpc.RpcError, ValueError) as err:  # ValueError: a closed channel
                        again = self._abandoned(address, err, drops_seen, mutating=mutating)
                        if again is None:
                            raise
                        raise again from err
            except _Abandoned as err:
                code = "CANCELLED"
                if err.by_replica:
                    self.note_failure(address, err)  # UNAVAILABLE: forget it, try the next
                raise
            except grpc.RpcError as err:
                code = getattr(status_code(err), "name", "UNKNOWN")
                self.note_failure(address, err)
                raise
            finally:
                self.metrics.rpc(method, code).observe(time.perf_counter() - started)
            self.note_answer(address, response.header, accepted_write=mutating)
            for listener in self.answer_listeners:
                listener(method, address, response.header, mutating)
            return response

        try:
            return call_with_retry(
                attempt, operation=operation, policy=policy, logger=_log, wakeup=self.news
            )
        except grpc.RpcError as err:
            raise error_from_rpc(err, operation) from err

    @contextlib.contextmanager
    def _held(self, address: str, mutating: bool) -> Iterator[None]:
        """Count a mutating call in flight at ``address`` (news closes its channel)."""
        if not mutating or self.news is None:
            yield
            return
        with self._lock:
            self._in_flight[address] = self._in_flight.get(address, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[address] -= 1

    def _stale_aim(self, address: str, news_seen: int) -> bool:
        """News named another leader since ``address`` was chosen (the call is not sent)."""
        with self._lock:
            return self._news_count != news_seen and self._news_leader not in (None, address)

    def _abandoned(
        self, address: str, err: Exception, drops_seen: int, *, mutating: bool
    ) -> _Abandoned | None:
        """The ``_Abandoned`` to raise instead of ``err`` where sending again is right, else None.

        A call on a channel that news closed meanwhile (CANCELLED, or the
        ValueError of a channel closed before the call began) was abandoned
        by this client; a mutating call CANCELLED otherwise was given up by
        the replica (it is stopping). Anything else stays ``err``.
        """
        with self._lock:
            dropped = self._drops.get(address, 0) != drops_seen
        cancelled = isinstance(err, ValueError) or status_code(err) == grpc.StatusCode.CANCELLED
        if cancelled and dropped and self.news is not None:
            return _Abandoned(address)
        if cancelled and mutating and self.news is not None and not self._closed:
            return _Abandoned(address, by_replica=True)
        return None

    def _start_watch(self) -> None:
        """Start the leader watch with the first call (a client never called dials nothing)."""
        if self._watch is not None or self.news is None:
            return
        with self._lock:
            if self._watch is not None or self._closed:
                return
            self._watch = LeaderWatch(self)
        self._watch.start()

    def close(self) -> None:
        """Stop the leader watch and close every channel; later calls raise ``InvalidArgument``."""
        with self._lock:
            self._closed = True
            watch = self._watch
        if watch is not None:
            watch.stop()
        with self._lock:
            channels = [*self._channels.values(), *self._watch_channels.values()]
            self._channels, self._stubs, self._watch_channels, self._watch_stubs = {}, {}, {}, {}
        for channel in channels:
            channel.close()
