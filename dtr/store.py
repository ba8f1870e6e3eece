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

There are no retries here: one logical operation's retry budget belongs to
its caller (``dtr.retry`` on the worker side, the leader loop's renew
deadline on the coordinator side).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

import grpc
from etcd3 import etcdrpc

from dtr.errors import InvalidArgument, LeaseExpired, StoreError, StoreUnavailable
from dtr.keys import prefix_range_end
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

# Reconnect fast: the default gRPC backoff grows to 120 s, which would keep a
# coordinator away from an etcd that came back long ago. Keepalive finds dead
# peers on idle channels; etcd rejects pings more often than every 5 s.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)

# Status codes after which we cannot tell what happened and another endpoint
# may do better.
_TRANSPORT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


# What etcd answers (status UNKNOWN) when a request timed out inside the
# server, for example a linearizable read under heavy disk load: as retryable
# as a transport failure.
_SERVER_TIMEOUTS = ("context deadline exceeded", "request timed out", "leader changed")


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """``"a:1,b:2"`` or ``["http://a:1", …]`` → ``["a:1", "b:2"]``, validated."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed: list[str] = []
    for raw in items:
        item = raw.strip()
        if item.startswith("https://"):
            raise InvalidArgument(f"etcd endpoint {item!r}: TLS towards etcd is not supported yet")
        item = item.removeprefix("http://").rstrip("/")
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(
                f"etcd endpoint must be HOST:PORT or http://HOST:PORT; got {raw!r}"
            )
        parsed.append(item)
    if not parsed:
        raise InvalidArgument("etcd endpoints must name at least one HOST:PORT")
    return parsed


def translate_rpc_error(err: grpc.RpcError, what: str) -> StoreError:
    """Map an etcd gRPC failure to the dtr error a caller can act on."""
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    message = f"etcd {what}: {details} ({code.name if code else 'no status'})"
    if code in _TRANSPORT_CODES or (
        code == grpc.StatusCode.UNKNOWN and any(t in (details or "") for t in _SERVER_TIMEOUTS)
    ):
        return StoreUnavailable(message)
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in (details or ""):
        return LeaseExpired(message)
    return StoreError(message)


class EtcdStore:
    """A thread-safe etcd v3 client over one channel per endpoint.

    Calls go to the current endpoint; a transport failure (the outcome is
    unknown) moves the next call to the next endpoint, so a dead member costs
    one failed call, and a restarted one is reconnected within the 500 ms
    reconnect backoff.
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout_s: float = 5.0) -> None:
        if not timeout_s > 0:
            raise InvalidArgument(f"timeout_s must be positive; got {timeout_s}")
        self.endpoints = parse_endpoints(endpoints)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._current = 0
        self._channels = [grpc.insecure_channel(e, options=CHANNEL_OPTIONS) for e in self.endpoints]
        self._kv = [etcdrpc.KVStub(c) for c in self._channels]
        self._lease = [etcdrpc.LeaseStub(c) for c in self._channels]
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
        self, what: str, stubs: list[Any], method: str, request: Any, timeout_s: float | None
    ) -> Any:
        index = self._pick()
        try:
            return getattr(stubs[index], method)(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as err:
            error = translate_rpc_error(err, what)
            if isinstance(error, StoreUnavailable):
                self._failed(index)
            raise error from None

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
        return int(self._call(f"put {key}", self._kv, "Put", request, timeout_s).header.revision)

    def delete(self, key: str, *, prefix: bool = False, timeout_s: float | None = None) -> int:
        """Delete a key (or every key under a prefix); returns how many were deleted."""
        request = Delete(key, prefix=prefix).to_pb().request_delete_range
        response = self._call(f"delete {key}", self._kv, "DeleteRange", request, timeout_s)
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
        response = self._call("txn", self._kv, "Txn", request, timeout_s)
        ops = success if response.succeeded else failure
        return TxnResult.from_pb(response, ops)

    def compact(self, revision: int, *, timeout_s: float | None = None) -> None:
        """Discard history before ``revision`` (watches from older revisions then fail)."""
        request = etcdrpc.CompactionRequest(revision=revision, physical=True)
        self._call(f"compact {revision}", self._kv, "Compact", request, timeout_s)

    # -- leases --------------------------------------------------------------------
    def grant_lease(self, ttl_s: int, *, timeout_s: float | None = None) -> Lease:
        """A new lease; etcd may round ``ttl_s`` up to its minimum."""
        if ttl_s < 1:
            raise InvalidArgument(f"ttl_s must be at least 1; got {ttl_s}")
        request = etcdrpc.LeaseGrantRequest(TTL=ttl_s)
        response = self._call("lease grant", self._lease, "LeaseGrant", request, timeout_s)
        if response.error:
            raise StoreError(f"etcd lease grant: {response.error}")
        return Lease(lease_id=int(response.ID), ttl_s=int(response.TTL))

    def refresh_lease(self, lease_id: int, *, timeout_s: float | None = None) -> int:
        """Renew a lease once; returns its new TTL. Raises LeaseExpired if it is gone."""
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
        index = self._pick()
        try:
            responses = self._lease[index].LeaseKeepAlive(
                iter([request]), timeout=timeout_s or self.timeout_s
            )
            response = next(responses)
        except grpc.RpcError as err:
            error = translate_rpc_error(err, f"lease keepalive {lease_id:x}")
            if isinstance(error, StoreUnavailable):
                self._failed(index)
            raise error from None
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
            self._call(f"lease revoke {lease_id:x}", self._lease, "LeaseRevoke", request, timeout_s)

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
]
