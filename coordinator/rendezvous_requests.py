"""Validation of the torchrun rendezvous requests (the rest are in ``validation.py``).

Same rules as every request (DESIGN §8): one function per request, cleaned
plain values out, ``InvalidArgument`` naming the field in. The size limits
are ``dtr.keys``' so the worker side refuses an oversized state before
sending it, with the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dtr.errors import InvalidArgument
from dtr.keys import MAX_RENDEZVOUS_VALUE_BYTES, MAX_STORE_ENTRIES, MAX_STORE_KEY_CHARS
from dtr.proto import coordinator_pb2 as pb

from .validation import _finite, _invalid, _name

#: A store read's wait may be asked for up to an hour; each call waits at most
#: ``rendezvous.MAX_STORE_WAIT_S`` of it.
MAX_STORE_WAIT_ASKED_S = 3600.0
_LIMIT = f"{MAX_RENDEZVOUS_VALUE_BYTES:,} bytes (etcd's request limit is 1.5 MiB)"


@dataclass(frozen=True)
class StateWrite:
    rendezvous_id: str
    state: bytes
    token: int | None  # None: there must be no state yet


@dataclass(frozen=True)
class StoreWrite:
    rendezvous_id: str
    entries: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class StoreQuery:
    rendezvous_id: str
    keys: tuple[str, ...]
    wait_s: float


@dataclass(frozen=True)
class StoreAddition:
    rendezvous_id: str
    key: str
    delta: int
    request_id: str


def get_state(req: pb.GetRendezvousStateRequest) -> str:
    return _name("rendezvous_id", req.rendezvous_id)


def set_state(req: pb.SetRendezvousStateRequest) -> StateWrite:
    return StateWrite(
        rendezvous_id=_name("rendezvous_id", req.rendezvous_id),
        state=_value("state", req.state),
        token=req.token if req.HasField("token") else None,
    )


def store_set(req: pb.RendezvousStoreSetRequest) -> StoreWrite:
    keys = _keys("entries", [e.key for e in req.entries])
    entries = tuple(
        (key, _value(f"entries[{i}].value", e.value))
        for i, (key, e) in enumerate(zip(keys, req.entries, strict=True))
    )
    total = sum(len(v) for _, v in entries)
    if total > MAX_RENDEZVOUS_VALUE_BYTES:
        raise InvalidArgument(f"entries: values total {total:,} bytes; the limit is {_LIMIT}")
    return StoreWrite(_name("rendezvous_id", req.rendezvous_id), entries)


def store_get(req: pb.RendezvousStoreGetRequest) -> StoreQuery:
    return StoreQuery(
        rendezvous_id=_name("rendezvous_id", req.rendezvous_id),
        keys=_keys("keys", req.keys),
        wait_s=_finite("wait_s", req.wait_s, 0.0, MAX_STORE_WAIT_ASKED_S),
    )


def store_add(req: pb.RendezvousStoreAddRequest) -> StoreAddition:
    if not req.header.client_request_id:
        raise InvalidArgument(
            "header.client_request_id: is required for RendezvousStoreAdd "
            "(it keeps a retried add from adding twice)"
        )
    return StoreAddition(
        rendezvous_id=_name("rendezvous_id", req.rendezvous_id),
        key=_keys("key", [req.key])[0],
        delta=req.delta,
        request_id=_name("header.client_request_id", req.header.client_request_id),
    )


def _value(path: str, value: bytes) -> bytes:
    if len(value) > MAX_RENDEZVOUS_VALUE_BYTES:
        raise InvalidArgument(f"{path}: is {len(value):,} bytes; the limit is {_LIMIT}")
    return value


def _keys(path: str, keys: Iterable[str]) -> tuple[str, ...]:
    cleaned = tuple(keys)
    if not 1 <= len(cleaned) <= MAX_STORE_ENTRIES:
        raise _invalid(path, f"must hold 1-{MAX_STORE_ENTRIES} keys", len(cleaned))
    for key in cleaned:
        if not 1 <= len(key) <= MAX_STORE_KEY_CHARS:
            raise _invalid(path, f"keys must be 1-{MAX_STORE_KEY_CHARS} characters", key)
    if len(set(cleaned)) != len(cleaned):
        raise _invalid(path, "keys must be distinct", sorted(cleaned))
    return cleaned
