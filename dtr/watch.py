"""Watches on an etcd key range that survive broken streams and etcd restarts.

A ``Watch`` owns one background thread. It opens a watch stream from the
revision after the last one it delivered, hands each batch of events to the
callback in revision order, and when the stream breaks (etcd restarted, a
member died, the network blipped) it opens a new one on the next endpoint
from that same revision, so nothing is lost or delivered twice. The only
terminal errors are compaction (etcd no longer has the history the watch
needs: the owner must re-read the state and watch again) and a refused
identity. A stream etcd refuses for its auth token (etcd cancels it with
"permission denied", whether the token expired or the user lacks
permission) is reopened once with a renewed token; refused again, the watch
ends with ``StoreAuthFailed``.

Only ``dtr.store`` creates watches; this module knows no key layout.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2

from dtr.errors import StoreAuthFailed, StoreError, StoreUnavailable, WatchCompacted
from dtr.etcd_auth import Metadata, is_refused_watch, is_stale_token
from dtr.store_types import KeyValue, key_value_from_pb

if TYPE_CHECKING:
    from dtr.store import EtcdStore

_log = logging.getLogger(__name__)

_BACKOFF_INITIAL_S = 0.05
_BACKOFF_MAX_S = 0.5
_JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``kv`` is the new value (for a delete: the key and the delete revision)."""

    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True)
class WatchBatch:
    """Events of one etcd revision range, or the error that ended the watch."""

    events: tuple[WatchEvent, ...]
    error: StoreError | None = None


WatchCallback = Callable[[WatchBatch], None]


class Watch:
    """A resumable watch on ``[key, range_end)``; see the module docstring."""

    def __init__(
        self,
        store: EtcdStore,
        key: str,
        range_end: str,
        callback: WatchCallback,
        start_revision: int,
    ) -> None:
        self._store = store
        self._key = key
        self._range_end = range_end
        self._callback = callback
        self.next_revision = start_revision
        self.streams_opened = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._requests: queue.Queue[Any] | None = None
        self._created = threading.Event()
        self._metadata: Metadata | None = None
        self._thread = threading.Thread(target=self._run, name=f"dtr-watch {key}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_created(self, timeout_s: float) -> bool:
        """True once etcd acknowledged a watch stream (so later writes will be seen)."""
        return self._created.wait(timeout_s)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

    def cancel(self) -> None:
        """Stop the watch and its thread. Idempotent; safe from inside the callback."""
        self._stop.set()
        self._close_stream()
        if self._thread is not threading.current_thread() and self._thread.is_alive():
            self._thread.join(_JOIN_TIMEOUT_S)

    # -- the thread ----------------------------------------------------------------
    def _run(self) -> None:
        backoff_s = _BACKOFF_INITIAL_S
        renew = False
        while not self._stop.is_set():
            try:
                index, channel = self._store.watch_channel()
            except StoreError:
                return  # the store was closed
            renewing, renew = renew, False
            try:
                if self._follow(index, channel, renew=renewing):
                    backoff_s = _BACKOFF_INITIAL_S
            except grpc.RpcError as err:
                if self._stop.is_set():
                    return
                renew = self._store.has_credentials and is_stale_token(err) and not renewing
                self._stream_broke(index, _code_name(err))
            except StoreUnavailable as err:  # authenticating for the stream failed in transit
                self._stream_broke(index, str(err))
            except StoreAuthFailed as err:
                if self._store.has_credentials and not renewing:
                    renew = True
                    continue  # most likely an expired token: renew it once, at once
                self._deliver(WatchBatch(events=(), error=err))
                return
            except StoreError as err:
                self._deliver(WatchBatch(events=(), error=err))
                return
            self._stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)

    def _follow(self, index: int, channel: grpc.Channel, *, renew: bool) -> bool:
        """Open a stream with the current (``renew``: a renewed) token and follow it."""
        if renew:
            self._metadata = self._store.renew_token(index, self._metadata)
        else:
            self._metadata = self._store.call_metadata(index)
        return self._stream_once(channel, self._metadata)

    def _stream_broke(self, index: int, why: str) -> None:
        if not self._stop.is_set():
            self._store.report_failure(index)
            _log.info(
                "watch %s: stream broke (%s); resuming at revision %d",
                self._key,
                why,
                self.next_revision,
            )

    def _stream_once(self, channel: grpc.Channel, metadata: Metadata | None) -> bool:
        """Follow one stream until it ends; True if it delivered anything."""
        requests: queue.Queue[Any] = queue.Queue()
        create = etcdrpc.WatchCreateRequest(
            key=self._key.encode(),
            range_end=self._range_end.encode(),
            start_revision=self.next_revision,
            progress_notify=True,
        )
        requests.put(etcdrpc.WatchRequest(create_request=create))
        call = etcdrpc.WatchStub(channel).Watch(_until_none(requests), metadata=metadata)
        with self._lock:
            self._call, self._requests = call, requests
        if self._stop.is_set():
            self._close_stream()
        self.streams_opened += 1
        delivered = False
        for response in call:
            delivered = self._handle(response) or delivered
        return delivered

    def _handle(self, response: Any) -> bool:
        if response.compact_revision:
            raise WatchCompacted(
                f"watch {self._key}: revision {self.next_revision} was compacted "
                f"(compact revision {response.compact_revision}); re-read and watch again"
            )
        if response.canceled and is_refused_watch(response.cancel_reason):
            raise StoreAuthFailed(f"watch {self._key} refused by etcd: {response.cancel_reason}")
        if response.canceled:
            raise StoreError(f"watch {self._key} canceled by etcd: {response.cancel_reason}")
        if response.created:
            self._created.set()
        if not response.events:
            # A progress notification: everything up to the header revision was sent.
            if not response.created:
                self.next_revision = max(self.next_revision, response.header.revision + 1)
            return False
        events = tuple(
            WatchEvent(
                kind="delete" if e.type == kv_pb2.Event.DELETE else "put",
                kv=key_value_from_pb(e.kv),
            )
            for e in response.events
        )
        self.next_revision = events[-1].kv.mod_revision + 1
        self._deliver(WatchBatch(events=events))
        return True

    def _deliver(self, batch: WatchBatch) -> None:
        if self._stop.is_set():
            return
        try:
            self._callback(batch)
        except Exception:
            _log.exception("watch %s: callback failed; the watch goes on", self._key)

    def _close_stream(self) -> None:
        with self._lock:
            call, requests = self._call, self._requests
        if requests is not None:
            requests.put(None)
        if call is not None:
            call.cancel()


def _until_none(requests: queue.Queue[Any]) -> Iterator[Any]:
    """Yield queued watch requests until a None says the stream is done."""
    while (item := requests.get()) is not None:
        yield item


def _code_name(err: grpc.RpcError) -> str:
    code = err.code() if callable(getattr(err, "code", None)) else None
    return code.name if code is not None else type(err).__name__
