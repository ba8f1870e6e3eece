"""The pure parts of dtr.store: endpoint parsing, error translation, txn values."""

from __future__ import annotations

import grpc
import pytest

from dtr.errors import (
    InvalidArgument,
    LeaseExpired,
    StoreAuthFailed,
    StoreError,
    StoreUnavailable,
)
from dtr.store import parse_endpoints, translate_rpc_error
from dtr.store_types import Compare, Delete, Get, Put


class _StatusError(grpc.RpcError):
    """An RpcError value as grpc raises it (not a stand-in for etcd)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_endpoints_accept_comma_lists_urls_and_sequences() -> None:
    assert parse_endpoints("127.0.0.1:2379, http://127.0.0.1:22379/") == [
        "127.0.0.1:2379",
        "127.0.0.1:22379",
    ]
    assert parse_endpoints(["etcd-0.etcd:2379"]) == ["etcd-0.etcd:2379"]
    assert parse_endpoints("https://a:1,https://b:2/") == ["https://a:1", "https://b:2"]


@pytest.mark.parametrize(
    "bad", ["", "localhost", ":2379", "h:0", "h:70000", "h:port", [], "https://a:1,b:2"]
)
def test_malformed_endpoints_are_refused(bad: str | list[str]) -> None:
    with pytest.raises(InvalidArgument, match="endpoint"):
        parse_endpoints(bad)


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, "connection refused", StoreUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline", StoreUnavailable),
        (grpc.StatusCode.CANCELLED, "cancelled", StoreUnavailable),
        (grpc.StatusCode.UNKNOWN, "context deadline exceeded", StoreUnavailable),
        (grpc.StatusCode.UNKNOWN, "etcdserver: request timed out", StoreUnavailable),
        (grpc.StatusCode.UNKNOWN, "etcdserver: corrupt cluster", StoreError),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", LeaseExpired),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large", StoreError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "mvcc: database space exceeded", StoreError),
        (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", StoreAuthFailed),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: authentication failed, invalid user ID or password",
            StoreAuthFailed,
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty", StoreAuthFailed),
        (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token", StoreAuthFailed),
    ],
)
def test_rpc_errors_become_typed_store_errors(
    code: grpc.StatusCode, details: str, expected: type[StoreError]
) -> None:
    error = translate_rpc_error(_StatusError(code, details), "get /k")
    assert type(error) is expected
    assert "get /k" in str(error) and details in str(error) and code.name in str(error)


def test_compares_and_ops_build_etcd_messages() -> None:
    fence = Compare.created_at("/leader", 41).to_pb()
    assert (fence.key, fence.create_revision, fence.target, fence.result) == (b"/leader", 41, 1, 0)
    assert Compare.absent("/k").to_pb().create_revision == 0
    assert Compare.value_is("/k", b"v").to_pb().value == b"v"
    assert Put("/k", b"v", lease_id=7).to_pb().request_put.lease == 7
    assert Delete("/p/", prefix=True).to_pb().request_delete_range.range_end == b"/p0"
    assert Get("/k").to_pb().request_range.range_end == b""
