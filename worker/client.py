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

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from dtr import tracing
from dtr.errors import InvalidArgument
from dtr.keys import validate_name
from dtr.proto import LEADER_METADATA_KEY
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.retry import RetryPolicy, call_with_retry, is_not_leader, status_code, trailing_metadata
from dtr.security import (
    ENV_TOKEN_FILE,
    ClientSecurity,
    TlsFiles,
    client_security,
    read_token_file,
)

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
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-_]*):(?P<port>\d+)$")
_FORGET_LEADER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def parse_coordinators(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"h1:p1,h2:p2"`` or a list of ``HOST:PORT`` as a tuple, checked, duplicates dropped."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    addresses: list[str] = []
    for raw in parts:
        if not isinstance(raw, str):
            raise InvalidArgument(f"coordinators: expected HOST:PORT strings; got {raw!r}")
        address = raw.strip()
        match = _HOST_PORT.fullmatch(address)
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


def resolved_addresses(address: str) -> frozenset[str]:
    """``HOST:PORT`` as the set of ``IP:PORT`` it resolves to (empty if it does not)."""
    match = _HOST_PORT.fullmatch(address)
    if match is None:
        return frozenset()
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return frozenset()
    return frozenset(f"{info[4][0]}:{port}" for info in infos)


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
    ) -> None:
        """Validate everything and dial nothing yet (channels connect on first use).

        ``security`` (TLS credentials and a token, ``dtr.security.client_security``)
        applies to every channel, hinted leaders' included; None is plaintext.
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
        """Learn from an answer: the leader, and the newest term and generation."""
        hint = header.leader_address
        allowed = bool(hint) and not header.is_leader and self.followable(hint)
        with self._lock:
            self.last_answer_at = time.monotonic()
            self.term = max(self.term, header.term)
            self.generation = max(self.generation, header.generation)
            if accepted_write or header.is_leader:
                self._leader = address
            elif allowed and self._leader is None:
                self._leader = hint

    def note_failure(self, address: str, err: BaseException) -> None:
        """Re-aim after a failed attempt: follow an allowed hint, or move to the next replica."""
        hint = trailing_metadata(err).get(LEADER_METADATA_KEY) if is_not_leader(err) else None
        allowed = bool(hint) and self.followable(hint or "")
        with self._lock:
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

        def attempt() -> Any:
            address = self.target()
            request = build()
            request.header.CopyFrom(self.header(request_id))
            timeout = max(0.05, min(per_attempt, deadline - time.monotonic()))
            rpc = getattr(self.stub(address), method)
            started, code = time.perf_counter(), "OK"
            try:
                with tracing.client_span(method) as metadata:
                    response = rpc(request, timeout=timeout, metadata=metadata or None)
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
            return call_with_retry(attempt, operation=operation, policy=policy, logger=_log)
        except grpc.RpcError as err:
            raise error_from_rpc(err, operation) from err

    def close(self) -> None:
        """Close every channel; later calls raise ``InvalidArgument``."""
        with self._lock:
            self._closed = True
            channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for channel in channels:
            channel.close()
