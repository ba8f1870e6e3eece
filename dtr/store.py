"""etcd access in one place: reads, fenced transactions, leases and watches.

Nothing else in dtr talks to etcd, and no ``grpc`` or ``etcd3`` exception
leaves this module: callers see ``dtr.errors`` only. A write has three
outcomes, as in Patroni: it applied (``TxnResult.succeeded``), it lost a
compare (``succeeded`` false), or we cannot tell (``StoreUnavailable``: it may
have applied; re-read or rely on idempotence).

Why not ``etcd3.Etcd3Client``: python3-etcd3 0.13.0 has two defects that bite
a replicated coordinator. (1) After one UNAVAILABLE or DEADLINE_EXCEEDED it
marks the endpoint failed for ``time_retry`` (300 s by default) and refuses
to use it, so a single-endpoint client never recovers from an etcd restart or
leader change; with ``time_retry=0`` it never fails over to another endpoint
at all. (2) Closing a client that ever had a watch raises ``NameError: six``,
and its watcher dies for good on the first stream error. So this module keeps
the package for its generated etcd v3 stubs (``etcd3.etcdrpc``) and does the
rest itself: one gRPC channel per endpoint with fast reconnect backoff, a
rotation to the next endpoint after a transport failure, and watches that
resume from their last delivered revision on a new stream.

TLS (``https://`` endpoints, or a ``TlsFiles``) and etcd users
(``EtcdCredentials``) are optional; the token that a user and password buy is
``dtr.etcd_auth``'s business, and its one retry (a token etcd no longer
accepts: authenticate again, call again) is the only retry here. Otherwise
there are no retries: one logical operation's retry budget belongs to
its caller (``dtr.retry`` on the worker side, the leader loop's renew
deadline on the coordinator side).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from etcd3 import etcdrpc

from dtr.errors import InvalidArgument, LeaseExpired, StoreError, StoreUnavailable
from dtr.etcd_auth import EtcdAuth, EtcdCredentials, Metadata, is_stale_token
from dtr.etcd_rpc import (
    CHANNEL_OPTIONS,
    HTTPS,
    open_channels,
    parse_endpoints,
    translate_rpc_error,
)
from dtr.keys import prefix_range_end
from dtr.security import TlsFiles
from dtr.store_types import (
    Compare,
    Delete,
    Get,
    KeyValue,
    Lease,
    Op,
    Put,
    Snapshot,
    TxnResult,
    key_value_from_pb,
)
from dtr.watch import Watch, WatchCallback

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
#: ``Authenticate`` runs bcrypt on the server (tens of milliseconds at etcd's
#: default cost) and goes through raft: it gets at least this long.
AUTHENTICATE_MIN_TIMEOUT_S = 2.0


class EtcdStore:
    """A thread-safe etcd v3 client over one channel per endpoint.

    Calls go to the current endpoint; a transport failure (the outcome is
    unknown) moves the next call to the next endpoint, so a dead member costs
    one failed call, and a restarted one is reconnected within the 500 ms
    reconnect backoff.

    TLS is on with ``https://`` endpoints or ``tls`` (its CA verifies etcd,
    None: the system's; its cert and key answer ``--client-cert-auth``).
    With ``credentials`` every call carries an auth token (``dtr.etcd_auth``);
    a refused identity is ``StoreAuthFailed``, final.

    ``timeout_s`` bounds a read; ``write_timeout_s`` (default: ``timeout_s``)
    bounds a write, a lease grant or a revoke. They are separate because a
    write that times out has an unknown outcome the caller must re-read and
    re-plan, so a slow etcd should rather be waited for than timed out (a
    slow etcd is not a dead one, DESIGN §4). A call's own ``timeout_s``
    overrides both; lease keep-alives take theirs from the elector.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout_s: float = 5.0,
        write_timeout_s: float | None = None,
        tls: TlsFiles | None = None,
        credentials: EtcdCredentials | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise InvalidArgument(f"timeout_s must be positive; got {timeout_s}")
        if write_timeout_s is not None and not write_timeout_s > 0:
            raise InvalidArgument(f"write_timeout_s must be positive; got {write_timeout_s}")
        urls = parse_endpoints(endpoints)
        self.endpoints = [url.removeprefix(HTTPS) for url in urls]
        self.uses_tls = tls is not None or urls[0].startswith(HTTPS)
        self.timeout_s = timeout_s
        self.write_timeout_s = write_timeout_s if write_timeout_s is not None else timeout_s
        self._auth = EtcdAuth(credentials)
        if credentials is not None and not self.uses_tls:
            _log.warning("etcd password and tokens cross the network in clear text; use TLS")
        self._lock = threading.Lock()
        self._current = 0
        self._channels = open_channels(self.endpoints, tls, tls=self.uses_tls)
        self._kv = [etcdrpc.KVStub(c) for c in self._channels]
        self._lease = [etcdrpc.LeaseStub(c) for c in self._channels]
        self._auth_stubs = [etcdrpc.AuthStub(c) for c in self._channels]
        self._watches: list[Watch] = []
        self._closed = False

    # -- plumbing ----------------------------------------------------------------
    def _pick(self) -> int:
        with self._lock:
            if self._closed:
                raise StoreUnavailable("etcd store is closed")
            return self._current

    def _failed(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self.endpoints)

    def _call(
        self,
        what: str,
        stubs: list[Any],
        method: str,
        request: Any,
        timeout_s: float | None,
        *,
        write: bool = False,
    ) -> Any:
        index = self._pick()
        timeout = timeout_s or (self.write_timeout_s if write else self.timeout_s)

        def invoke(metadata: Metadata | None) -> Any:
            return getattr(stubs[index], method)(request, timeout=timeout, metadata=metadata)

        return self._invoke(what, index, invoke)

    def _invoke(self, what: str, index: int, invoke: Callable[[Metadata | None], _T]) -> _T:
        """``invoke`` with the current token; a stale token is renewed once. Errors translated."""
        try:
            metadata = self.call_metadata(index)
            try:
                return invoke(metadata)
            except grpc.RpcError as err:
                if self._auth.credentials is None or not is_stale_token(err):
                    raise
            return invoke(self.renew_token(index, metadata))
        except grpc.RpcError as err:
            raise self._translated(err, what, index) from None

    def _translated(self, err: grpc.RpcError, what: str, index: int) -> StoreError:
        error = translate_rpc_error(err, what)
        if isinstance(error, StoreUnavailable):
            self._failed(index)
        return error

    def _authenticator(self, index: int) -> Callable[[EtcdCredentials], str]:
        """How to trade credentials for a token on channel ``index``; "" if auth is off."""

        def authenticate(credentials: EtcdCredentials) -> str:
            request = etcdrpc.AuthenticateRequest(
                name=credentials.user, password=credentials.password
            )
            timeout = max(self.timeout_s, AUTHENTICATE_MIN_TIMEOUT_S)
            try:
                return str(self._auth_stubs[index].Authenticate(request, timeout=timeout).token)
            except grpc.RpcError as err:
                details = err.details() if callable(getattr(err, "details", None)) else ""
                if "authentication is not enabled" in (details or ""):
                    _log.warning("etcd has authentication off: calls carry no token")
                    return ""
                raise self._translated(
                    err, f"authenticate as {credentials.user!r}", index
                ) from None

        return authenticate

    def call_metadata(self, index: int) -> Metadata | None:
        """The metadata of a call on channel ``index``: the auth token, if any (for watches)."""
        return self._auth.metadata(self._authenticator(index))

    def renew_token(self, index: int, refused: Metadata | None) -> Metadata | None:
        """Re-authenticate after etcd refused ``refused`` (unless another call already did)."""
        return self._auth.renew(refused, self._authenticator(index))

    @property
    def has_credentials(self) -> bool:
        """Whether calls authenticate as an etcd user (a refused token is then renewable)."""
        return self._auth.credentials is not None

    @property
    def authentications(self) -> int:
        """How many tokens this store has obtained (1 + renewals; for tests and logs)."""
        return self._auth.authentications

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call goes to (for logs and `dtr status`)."""
        with self._lock:
            return self.endpoints[self._current]

    def watch_channel(self) -> tuple[int, grpc.Channel]:
        """The channel a new watch stream should use, and its index (for ``report_failure``)."""
        index = self._pick()
        return index, self._channels[index]

    def report_failure(self, index: int) -> None:
        """A stream on channel ``index`` broke: send the next calls elsewhere."""
        self._failed(index)

    # -- keys ----------------------------------------------------------------------
    def get(self, key: str, *, timeout_s: float | None = None) -> KeyValue | None:
        """The key's current value (a linearizable read), or None."""
        request = etcdrpc.RangeRequest(key=key.encode())
        response = self._call(f"get {key}", self._kv, "Range", request, timeout_s)
        return key_value_from_pb(response.kvs[0]) if response.kvs else None

    def get_prefix(self, prefix: str, *, timeout_s: float | None = None) -> Snapshot:
        """Every key under ``prefix`` in key order, and the revision they were read at."""
        request = etcdrpc.RangeRequest(
            key=prefix.encode(), range_end=prefix_range_end(prefix).encode()
        )
        response = self._call(f"get prefix {prefix}", self._kv, "Range", request, timeout_s)
        kvs = tuple(key_value_from_pb(kv) for kv in response.kvs)
        return Snapshot(kvs=kvs, revision=response.header.revision)

    def revision(self, *, timeout_s: float | None = None) -> int:
        """The store's current revision."""
        request = etcdrpc.RangeRequest(key=b"\0", count_only=True)
        return int(self._call("revision", self._kv, "Range", request, timeout_s).header.revision)

    def put(
        self, key: str, value: bytes, *, lease_id: int = 0, timeout_s: float | None = None
    ) -> int:
        """Write unconditionally; returns the revision of the write."""
        request = etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease_id)
        return int(
            self._call(
                f"put {key}", self._kv, "Put", request, timeout_s, write=True
            ).header.revision
        )

    def delete(self, key: str, *, prefix: bool = False, timeout_s: float | None = None) -> int:
        """Delete a key (or every key under a prefix); returns how many were deleted."""
        request = Delete(key, prefix=prefix).to_pb().request_delete_range
        response = self._call(
            f"delete {key}", self._kv, "DeleteRange", request, timeout_s, write=True
        )
        return int(response.deleted)

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout_s: float | None = None,
    ) -> TxnResult:
        """One atomic etcd transaction: ``success`` if every compare holds, else ``failure``."""
        request = etcdrpc.TxnRequest(
            compare=[c.to_pb() for c in compares],
            success=[op.to_pb() for op in success],
            failure=[op.to_pb() for op in failure],
        )
        response = self._call("txn", self._kv, "Txn", request, timeout_s, write=True)
        ops = success if response.succeeded else failure
        return TxnResult.from_pb(response, ops)

    def compact(self, revision: int, *, timeout_s: float | None = None) -> None:
        """Discard history before ``revision`` (watches from older revisions then fail)."""
        request = etcdrpc.CompactionRequest(revision=revision, physical=True)
        self._call(f"compact {revision}", self._kv, "Compact", request, timeout_s, write=True)

    # -- leases --------------------------------------------------------------------
    def grant_lease(self, ttl_s: int, *, timeout_s: float | None = None) -> Lease:
        """A new lease; etcd may round ``ttl_s`` up to its minimum."""
        if ttl_s < 1:
            raise InvalidArgument(f"ttl_s must be at least 1; got {ttl_s}")
        request = etcdrpc.LeaseGrantRequest(TTL=ttl_s)
        response = self._call(
            "lease grant", self._lease, "LeaseGrant", request, timeout_s, write=True
        )
        if response.error:
            raise StoreError(f"etcd lease grant: {response.error}")
        return Lease(lease_id=int(response.ID), ttl_s=int(response.TTL))

    def refresh_lease(self, lease_id: int, *, timeout_s: float | None = None) -> int:
        """Renew a lease once; returns its new TTL. Raises LeaseExpired if it is gone."""
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
        index = self._pick()
        timeout = timeout_s or self.timeout_s

        def invoke(metadata: Metadata | None) -> Any:
            responses = self._lease[index].LeaseKeepAlive(
                iter([request]), timeout=timeout, metadata=metadata
            )
            return next(responses)

        try:
            response = self._invoke(f"lease keepalive {lease_id:x}", index, invoke)
        except StopIteration:
            self._failed(index)
            raise StoreUnavailable(f"etcd lease keepalive {lease_id:x}: no answer") from None
        if response.TTL <= 0:
            raise LeaseExpired(f"etcd lease {lease_id:x} has expired")
        return int(response.TTL)

    def revoke_lease(self, lease_id: int, *, timeout_s: float | None = None) -> None:
        """Revoke a lease and delete its keys; a lease already gone is not an error."""
        request = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        with contextlib.suppress(LeaseExpired):
            self._call(
                f"lease revoke {lease_id:x}",
                self._lease,
                "LeaseRevoke",
                request,
                timeout_s,
                write=True,
            )

    def lease_ttl(self, lease_id: int, *, timeout_s: float | None = None) -> int | None:
        """Seconds left on a lease, or None if it no longer exists."""
        request = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        response = self._call(
            f"lease ttl {lease_id:x}", self._lease, "LeaseTimeToLive", request, timeout_s
        )
        return None if response.TTL < 0 else int(response.TTL)

    # -- watches -------------------------------------------------------------------
    def watch_prefix(
        self, prefix: str, callback: WatchCallback, *, start_revision: int | None = None
    ) -> Watch:
        """Call ``callback`` with every change under ``prefix`` from ``start_revision`` on.

        The watch survives stream failures and etcd restarts: it reopens a
        stream from the revision after the last one it delivered, so no event
        is lost or delivered twice. If etcd compacted that revision away, the
        callback receives a ``WatchCompacted`` error and the watch stops: the
        caller re-reads and watches again.
        """
        if start_revision is None:
            start_revision = self.revision() + 1
        elif start_revision < 1:
            raise InvalidArgument(f"start_revision must be at least 1; got {start_revision}")
        watch = Watch(self, prefix, prefix_range_end(prefix), callback, start_revision)
        with self._lock:
            self._watches.append(watch)
        watch.start()
        return watch

    def close(self) -> None:
        """Cancel every watch and close every channel. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches, self._watches = self._watches, []
        for watch in watches:
            watch.cancel()
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "CHANNEL_OPTIONS",
    "Compare",
    "Delete",
    "EtcdStore",
    "Get",
    "KeyValue",
    "Lease",
    "Op",
    "Put",
    "Snapshot",
    "TxnResult",
    "Watch",
    "parse_endpoints",
    "translate_rpc_error",
]
