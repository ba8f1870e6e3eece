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
    key: str
    prefix: bool = False

    def to_pb(self) -> Any:
        request = etcdrpc.RangeRequest(key=self.key.encode())
        if self.prefix:
            request.range_end = prefix_range_end(self.key).encode()
        return etcdrpc.RequestOp(request_range=request)


Op = Put | Delete | Get
# What each operation of a transaction returned: the keys a Get read, the
# count a Delete removed, None for a Put.
OpResult = tuple[KeyValue, ...] | int | None


@dataclass(frozen=True)
class TxnResult:
    """Whether the compares held, the revision after the transaction, per-op results."""

    succeeded: bool
    revision: int
    results: tuple[OpResult, ...]

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
