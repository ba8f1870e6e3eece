"""How dtr.store speaks gRPC to etcd: endpoints, channels, and etcd's answers as dtr errors.

Pure functions and constants, split from ``dtr.store`` (which alone uses
them, and re-exports the public ones) to keep each module to one role.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from dtr.errors import InvalidArgument, LeaseExpired, StoreAuthFailed, StoreError, StoreUnavailable
from dtr.etcd_auth import refusal_hint
from dtr.security import TlsFiles, channel_credentials

HTTPS = "https://"
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
# How gRPC reports a refused TLS handshake (as UNAVAILABLE: it is retried
# like an unreachable member until the caller's deadline, then named).
_TLS_FAILURES = ("handshake failed", "TSI_")


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """``"a:1,http://b:2"`` → ``["a:1", "b:2"]``; ``"https://a:1"`` stays as it is. Validated.

    ``http://`` goes (plaintext is the default); ``https://`` stays, since it
    turns TLS on. Mixing both is refused: a store speaks one way to all members.
    """
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed: list[str] = []
    for raw in items:
        item = raw.strip()
        scheme = HTTPS if item.startswith(HTTPS) else ""
        address = item.removeprefix(HTTPS).removeprefix("http://").rstrip("/")
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(
                f"etcd endpoint must be HOST:PORT, http://HOST:PORT or https://HOST:PORT; "
                f"got {raw!r}"
            )
        parsed.append(scheme + address)
    if not parsed:
        raise InvalidArgument("etcd endpoints must name at least one HOST:PORT")
    if len({e.startswith(HTTPS) for e in parsed}) > 1:
        raise InvalidArgument("etcd endpoints mix https:// and plaintext; use https:// for all")
    return parsed


def translate_rpc_error(err: grpc.RpcError, what: str) -> StoreError:
    """Map an etcd gRPC failure to the dtr error a caller can act on."""
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    message = f"etcd {what}: {details} ({code.name if code else 'no status'})"
    if code in _TRANSPORT_CODES or (
        code == grpc.StatusCode.UNKNOWN and any(t in (details or "") for t in _SERVER_TIMEOUTS)
    ):
        if any(t in (details or "") for t in _TLS_FAILURES):
            message += ": the TLS handshake with etcd failed (check the etcd CA and client cert)"
        return StoreUnavailable(message)
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in (details or ""):
        return LeaseExpired(message)
    hint = refusal_hint(code, details or "")
    if hint is not None:
        return StoreAuthFailed(f"{message}: {hint}")
    return StoreError(message)


def open_channels(endpoints: list[str], files: TlsFiles | None, *, tls: bool) -> list[grpc.Channel]:
    """One channel per endpoint: plaintext, or TLS with ``files`` (None: the system's CAs)."""
    if not tls:
        return [grpc.insecure_channel(e, options=CHANNEL_OPTIONS) for e in endpoints]
    credentials = channel_credentials(files or TlsFiles())
    return [grpc.secure_channel(e, credentials, options=CHANNEL_OPTIONS) for e in endpoints]
