"""``DtrStore``: the c10d ``Store`` torchrun's agents share, kept by the dtr leader.

torch elastic hands its agents one ``torch.distributed.Store`` per rendezvous
round (wrapped in a ``PrefixStore``) for the master address, the role infos,
the rank assignments and the exit barrier. With ``--rdzv-backend=c10d`` that
store lives in one agent, and dies with it; here it lives in etcd behind the
coordinators (``RendezvousStore*`` RPCs), so it survives any agent and a
leader failover, and every call goes through ``CoordinatorClient.call``
(leader following, retries, TLS, token).

What torch's agent uses is here: ``set``, ``get``, ``multi_set``,
``multi_get``, ``add``, ``wait``, ``check``. What it does not use is refused
loudly (``compare_set``, ``delete_key``, ``num_keys``) rather than half-done.
Errors leave as torch's types, because torch's code catches those:
``DistStoreError`` for a key that did not appear in time (``store_util``
treats it as a timeout), ``DistNetworkError`` when no coordinator answered,
``ValueError`` (``InvalidArgument``) for a key or value the coordinators
would refuse, ``DistError`` for anything else dtr refused.

A zero timeout means "no timeout", as in c10d (``Store::kNoTimeout``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, NoReturn

import torch.distributed as dist

# torch re-exports Store without listing it, which mypy --strict does not accept.
from torch.distributed import Store  # type: ignore[attr-defined]

from dtr.errors import CoordinatorUnavailable, DtrError, InvalidArgument
from dtr.keys import (
    MAX_RENDEZVOUS_VALUE_BYTES,
    MAX_STORE_ENTRIES,
    MAX_STORE_KEY_CHARS,
    validate_name,
)
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy

from .client import CoordinatorClient

#: The longest wait one RendezvousStoreGet asks for; longer waits call again.
STORE_POLL_S = 10.0
#: How much longer than its wait the client gives one read to answer, so the
#: server's "not yet" arrives as an answer rather than as a deadline.
_READ_GRACE_S = 2.0
DEFAULT_STORE_TIMEOUT = timedelta(seconds=60)
_LIMIT = f"{MAX_RENDEZVOUS_VALUE_BYTES:,} bytes (etcd's request limit)"


def as_value_bytes(key: str, value: str | bytes | bytearray | memoryview) -> bytes:
    """A store value as bytes (torch passes ``str`` and ``bytes``), refused above the limit."""
    data = value.encode() if isinstance(value, str) else bytes(value)
    if len(data) > MAX_RENDEZVOUS_VALUE_BYTES:
        raise InvalidArgument(
            f"rendezvous store value of {key!r} is {len(data):,} bytes; the limit is {_LIMIT}"
        )
    return data


def checked_key(key: object) -> str:
    """``key`` if the coordinators accept it as a store key, else ``InvalidArgument`` naming it."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_STORE_KEY_CHARS:
        shown = key if not isinstance(key, str) or len(key) <= 80 else f"{key[:80]}..."
        length = f" ({len(key)} characters)" if isinstance(key, str) else ""
        raise InvalidArgument(
            f"rendezvous store key {shown!r}{length}: keys must be strings of "
            f"1-{MAX_STORE_KEY_CHARS} characters"
        )
    return key


def write_batches(entries: dict[str, bytes]) -> Iterator[list[tuple[str, bytes]]]:
    """``entries`` in calls the coordinators accept: at most 64 keys and 1 MiB of values each."""
    batch: list[tuple[str, bytes]] = []
    size = 0
    for key, value in entries.items():
        if batch and (
            len(batch) == MAX_STORE_ENTRIES or size + len(value) > MAX_RENDEZVOUS_VALUE_BYTES
        ):
            yield batch
            batch, size = [], 0
        batch.append((key, value))
        size += len(value)
    if batch:
        yield batch


def _seconds(timeout: timedelta) -> float | None:
    """Seconds of a store timeout; None for c10d's "no timeout" (zero)."""
    seconds = timeout.total_seconds()
    return None if seconds == 0 else max(seconds, 0.0)


class DtrStore(Store):
    """A c10d store in etcd, one per rendezvous id; see the module docstring.

    Thread-safe as the client is: torch's agent and its keep-alive thread may
    share it. ``policy`` bounds calls that do not wait for keys (``set``,
    ``add``) when no coordinator answers; the client's policy by default.
    """

    def __init__(
        self,
        client: CoordinatorClient,
        rendezvous_id: str,
        *,
        timeout: timedelta = DEFAULT_STORE_TIMEOUT,
        policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self._client = client
        self.rendezvous_id = validate_name("rdzv_id", rendezvous_id)
        self._policy = policy or client.policy
        self.set_timeout(timeout)

    # -- writes -------------------------------------------------------------------
    def set(self, key: str, value: str | bytes) -> None:
        """Set one key (overwrites)."""
        self._set_entries({checked_key(key): as_value_bytes(key, value)})

    def multi_set(self, keys: Sequence[str], values: Sequence[str | bytes]) -> None:
        """Set many keys: one transaction per 64 keys, so not atomic beyond that."""
        if len(keys) != len(values):
            raise InvalidArgument(
                f"multi_set: {len(keys)} keys but {len(values)} values; give one value per key"
            )
        entries = {checked_key(k): as_value_bytes(k, v) for k, v in zip(keys, values, strict=True)}
        self._set_entries(entries)

    def add(self, key: str, value: int) -> int:
        """Add ``value`` to an integer key (missing counts as 0); exactly once, retries included."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"add: the amount must be an integer; got {value!r}")
        response: pb.RendezvousStoreAddResponse = self._call(
            "RendezvousStoreAdd",
            lambda: pb.RendezvousStoreAddRequest(
                rendezvous_id=self.rendezvous_id, key=checked_key(key), delta=value
            ),
            operation=f"rendezvous store add {key!r}",
            mutating=True,
        )
        return int(response.value)

    def _set_entries(self, entries: dict[str, bytes]) -> None:
        for batch in write_batches(entries):
            self._set_batch(batch)

    def _set_batch(self, batch: list[tuple[str, bytes]]) -> None:
        request = pb.RendezvousStoreSetRequest(
            rendezvous_id=self.rendezvous_id,
            entries=[pb.RendezvousStoreEntry(key=k, value=v) for k, v in batch],
        )
        self._call(
            "RendezvousStoreSet",
            lambda: request,  # each attempt overwrites the header only
            operation=f"rendezvous store set {[k for k, _ in batch][:3]!r}",
            mutating=True,
        )

    # -- reads --------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """The key's value, waiting up to the store's timeout for it to be set."""
        return self._read([checked_key(key)], self._timeout(), "get")[0]

    def multi_get(self, keys: list[str]) -> list[bytes]:
        """The keys' values in order, waiting up to the store's timeout for all of them."""
        return self._read([checked_key(k) for k in keys], self._timeout(), "multi_get")

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        """Return once every key is set; ``DistStoreError`` at the timeout (default: store's)."""
        chosen = self._timeout() if timeout is None else timeout
        self._read([checked_key(k) for k in keys], chosen, "wait")

    def check(self, keys: list[str]) -> bool:
        """Whether every key is set now (no waiting)."""
        checked = list(dict.fromkeys(checked_key(k) for k in keys))
        return all(self._get(chunk, 0.0, self._policy).found for chunk in _chunks(checked))

    def _timeout(self) -> timedelta:
        timeout: timedelta = self.timeout  # type: ignore[attr-defined]  # missing from torch's stub
        return timeout

    def _read(self, keys: list[str], timeout: timedelta, op: str) -> list[bytes]:
        """Values of ``keys`` (duplicates allowed), polling in calls of at most 10 s."""
        timeout_s = _seconds(timeout)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        found: dict[str, bytes] = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            found.update(self._await_chunk(chunk, deadline, timeout, op))
        return [found[k] for k in keys]

    def _await_chunk(
        self, keys: list[str], deadline: float | None, timeout: timedelta, op: str
    ) -> dict[str, bytes]:
        while True:
            remaining = STORE_POLL_S if deadline is None else deadline - time.monotonic()
            wait_s = max(0.0, min(remaining, STORE_POLL_S))
            policy = self._policy.with_deadline(max(remaining, 0.0) + _READ_GRACE_S)
            response = self._get(keys, wait_s, policy)
            if response.found:
                return dict(zip(keys, response.values, strict=True))
            if deadline is not None and time.monotonic() >= deadline:
                missing = list(response.missing_keys) or keys
                raise dist.DistStoreError(
                    f"rendezvous store {self.rendezvous_id!r} ({op}): keys {missing!r} were not "
                    f"set within the timeout of {timeout.total_seconds():g} s"
                )

    def _get(self, keys: list[str], wait_s: float, policy: RetryPolicy) -> Any:
        return self._call(
            "RendezvousStoreGet",
            lambda: pb.RendezvousStoreGetRequest(
                rendezvous_id=self.rendezvous_id, keys=keys, wait_s=wait_s
            ),
            operation=f"rendezvous store read {keys[:3]!r}",
            mutating=False,
            policy=policy,
            attempt_timeout_s=wait_s + _READ_GRACE_S,
        )

    # -- refused ------------------------------------------------------------------
    def compare_set(self, key: str, expected_value: str, desired_value: str) -> bytes:
        self._unsupported("compare_set")

    def delete_key(self, key: str) -> bool:
        self._unsupported("delete_key")

    def num_keys(self) -> int:
        self._unsupported("num_keys")

    def _unsupported(self, op: str) -> NoReturn:
        raise NotImplementedError(
            f"dtr's rendezvous store does not support {op} (torch's elastic agent does not "
            "use it); use another store for code that needs it"
        )

    # -- calls --------------------------------------------------------------------
    def _call(
        self,
        method: str,
        build: Callable[[], Any],
        *,
        operation: str,
        mutating: bool,
        policy: RetryPolicy | None = None,
        attempt_timeout_s: float | None = None,
    ) -> Any:
        """One RPC with dtr's errors turned into the ones torch's store users catch."""
        try:
            return self._client.call(
                method,
                build,
                operation=operation,
                mutating=mutating,
                policy=policy or self._policy,
                attempt_timeout_s=attempt_timeout_s,
            )
        except CoordinatorUnavailable as err:
            raise dist.DistNetworkError(
                f"{err} [--rdzv-endpoint {','.join(self._client.addresses)}, "
                f"job {self._client.job!r}]"
            ) from err
        except InvalidArgument:
            raise
        except DtrError as err:
            raise dist.DistError(f"{operation}: {err}") from err

    def __repr__(self) -> str:
        return f"DtrStore({self.rendezvous_id!r}, job={self._client.job!r})"


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(keys), MAX_STORE_ENTRIES):
        yield keys[start : start + MAX_STORE_ENTRIES]
