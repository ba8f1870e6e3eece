"""Plain values for talking to etcd: keys, compares, operations, results.

They are frozen dataclasses with no I/O, so the leader's decision functions
can build a transaction (compares + operations) as a value, unit-test it
without etcd, and hand it to ``EtcdStore.txn``. Only ``to_pb`` / ``from_pb``
know about etcd's protobuf messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from etcd3 import etcdrpc

from dtr.errors import StoreError
from dtr.keys import prefix_range_end

_TARGETS = {
    "version": etcdrpc.Compare.VERSION,
    "create": etcdrpc.Compare.CREATE,
    "mod": etcdrpc.Compare.MOD,
    "value": etcdrpc.Compare.VALUE,
    "lease": etcdrpc.Compare.LEASE,
}
_RESULTS = {
    "==": etcdrpc.Compare.EQUAL,
    "!=": etcdrpc.Compare.NOT_EQUAL,
    "<": etcdrpc.Compare.LESS,
    ">": etcdrpc.Compare.GREATER,
}
_FIELDS = {
    "version": "version",
    "create": "create_revision",
    "mod": "mod_revision",
    "value": "value",
    "lease": "lease",
}

CompareTarget = Literal["version", "create", "mod", "value", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd stores it; ``create_revision`` is what fences a leader."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease_id: int


def key_value_from_pb(kv: Any) -> KeyValue:
    return KeyValue(
        key=kv.key.decode(),
        value=bytes(kv.value),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
        version=int(kv.version),
        lease_id=int(kv.lease),
    )


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: ``<target>(key) <op> operand``."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: int | bytes

    @classmethod
    def created_at(cls, key: str, revision: int) -> Compare:
        """The key exists and was created at ``revision`` — the leader's fence."""
        return cls(key, "create", "==", revision)

    @classmethod
    def absent(cls, key: str) -> Compare:
        """The key does not exist (etcd reports create revision 0)."""
        return cls(key, "create", "==", 0)

    @classmethod
    def present(cls, key: str) -> Compare:
        return cls(key, "create", ">", 0)

    @classmethod
    def modified_at(cls, key: str, revision: int) -> Compare:
        """Nobody wrote the key since ``revision``: a compare-and-set fence."""
        return cls(key, "mod", "==", revision)

    @classmethod
    def value_is(cls, key: str, value: bytes) -> Compare:
        return cls(key, "value", "==", value)

    def to_pb(self) -> Any:
        message = etcdrpc.Compare(
            key=self.key.encode(), target=_TARGETS[self.target], result=_RESULTS[self.op]
        )
        setattr(message, _FIELDS[self.target], self.operand)
        return message


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease_id: int = 0

    def to_pb(self) -> Any:
        put = etcdrpc.PutRequest(key=self.key.encode(), value=self.value, lease=self.lease_id)
        return etcdrpc.RequestOp(request_put=put)


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False

    def to_pb(self) -> Any:
        request = etcdrpc.DeleteRangeRequest(key=self.key.encode())
        if self.prefix:
            request.range_end = prefix_range_end(self.key).encode()
        return etcdrpc.RequestOp(request_delete_range=request)


@dataclass(frozen=True)
class Get:
    """Read one key, or (``prefix``) every key under it in key order.

    ``start``: begin the prefix range at this key instead (paging: the key
    after the last one a page returned); ``limit``: at most this many keys
    (0: all), so a listing of an unbounded prefix is read page by page.
    """

    key: str
    prefix: bool = False
    start: str | None = None
    limit: int = 0

    def to_pb(self) -> Any:
        request = etcdrpc.RangeRequest(key=(self.start or self.key).encode(), limit=self.limit)
        if self.prefix:
            request.range_end = prefix_range_end(self.key).encode()
        return etcdrpc.RequestOp(request_range=request)


Op = Put | Delete | Get

#: etcd's ``--max-txn-ops`` default: the most compares, or success ops, or
#: failure ops one transaction may carry. A larger one is refused outright
#: ("too many operations in txn request"), so a plan that grows with the
#: number of workers must be split below it (DESIGN §5 invariant 7).
ETCD_MAX_TXN_OPS = 128
#: etcd's ``--max-request-bytes`` default (1.5 MiB).
ETCD_MAX_REQUEST_BYTES = 1536 * 1024
#: What one *plan* may use of each, leaving room for what the writer adds to
#: every transaction (the leader fence, a read of the leader key, a writer
#: stamp) and for protobuf framing.
PLAN_MAX_OPS = 120
PLAN_MAX_BYTES = 1024 * 1024


class TxnTooLarge(StoreError):
    """A transaction etcd would refuse: a bug in the plan that built it, never retried.

    A ``StoreError`` but not ``StoreUnavailable``: callers log it like any
    refusal from etcd (retention passes, the leader loop), and a request
    that hits it is answered INTERNAL instead of being retried forever.
    """


def txn_size(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> int:
    """An upper bound on the request's bytes: keys, values and 32 bytes of framing each."""

    def one(item: Compare | Op) -> int:
        value = item.operand if isinstance(item, Compare) else getattr(item, "value", b"")
        body = len(value) if isinstance(value, bytes) else 10
        return len(item.key.encode()) * 2 + body + 32  # a range's end repeats the key

    return sum(one(item) for part in (compares, success, failure) for item in part)


def check_txn_limits(
    compares: Sequence[Compare],
    success: Sequence[Op],
    failure: Sequence[Op] = (),
    *,
    max_ops: int = ETCD_MAX_TXN_OPS,
    max_bytes: int = ETCD_MAX_REQUEST_BYTES,
) -> None:
    """Raise ``TxnTooLarge`` for a transaction etcd would refuse (checked before sending).

    Sending it would only earn the same refusal again on every retry; failing
    here names the plan's size instead.
    """
    ops = max(len(compares), len(success), len(failure))
    if ops > max_ops:
        raise TxnTooLarge(
            f"transaction of {len(compares)} compares, {len(success)} success and "
            f"{len(failure)} failure operations exceeds {max_ops}"
        )
    size = txn_size(compares, success, failure)
    if size > max_bytes:
        raise TxnTooLarge(f"transaction of about {size} bytes exceeds {max_bytes}")


# What each operation of a transaction returned: the keys a Get read, the
# count a Delete removed, None for a Put.
OpResult = tuple[KeyValue, ...] | int | None


@dataclass(frozen=True)
class TxnResult:
    """Whether the compares held, the revision after the transaction, per-op results."""

    succeeded: bool
    revision: int
    results: tuple[OpResult, ...]
    #: The etcd cluster that answered (a job life is per cluster; 0: not known).
    cluster_id: int = 0

    @classmethod
    def from_pb(cls, response: Any, ops: Sequence[Op]) -> TxnResult:
        results: list[OpResult] = []
        for op, op_response in zip(ops, response.responses, strict=True):
            if isinstance(op, Get):
                kvs = op_response.response_range.kvs
                results.append(tuple(key_value_from_pb(kv) for kv in kvs))
            elif isinstance(op, Delete):
                results.append(int(op_response.response_delete_range.deleted))
            else:
                results.append(None)
        return cls(
            succeeded=bool(response.succeeded),
            revision=int(response.header.revision),
            results=tuple(results),
            cluster_id=int(response.header.cluster_id),
        )


@dataclass(frozen=True)
class Snapshot:
    """Keys read together, at one revision (watch from ``revision + 1`` to follow them)."""

    kvs: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True)
class Lease:
    lease_id: int
    ttl_s: int
