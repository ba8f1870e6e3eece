"""The asyncio client: leader-following calls over one set of ``grpc.aio`` channels.

Hundreds of workers of one process (``dtr.worker.aio.AsyncWorker``, the chaos
harness's simulated workers) share one ``AsyncCoordinatorClient``: one
channel per coordinator, so a process holds three connections, not three per
worker. Every call follows the leader exactly as the threaded worker does,
because the routing *is* the threaded worker's: a ``CoordinatorClient``
(``client.py``) is kept only for its ``target`` / ``note_answer`` /
``note_failure`` rules (cached leader, ``dtr-leader`` hints, rotation after
a failure); its own blocking channels are never dialled.

Retries are ``dtr.retry.retry_async``: the one policy and predicate of
``dtr/retry.py``, on tenacity's ``AsyncRetrying``, so a backoff sleeps on the
event loop instead of blocking every other worker. Errors leave as
``dtr.errors`` types through ``rpc_errors.py``.

Not yet here (the threaded client has them): TLS and bearer tokens, and the
pushed leader news (``leader_watch.py``): a retry sleeps out its backoff.

What must not live here: anything about one worker (ids, incarnations);
a call names its caller and may pass an ``on_answer`` hook.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from dtr.errors import InvalidArgument
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.retry import RetryPolicy, retry_async

from .client import CHANNEL_OPTIONS, CoordinatorClient
from .rpc_errors import error_from_rpc

_T = TypeVar("_T")

#: Called after every answered attempt: (method, time.monotonic() when the
#: attempt started, the answer's header, whether the call was mutating).
AnswerHook = Callable[[str, float, pb.ResponseHeader, bool], None]


@dataclass(frozen=True)
class _Call:
    """One logical call: what every attempt of it sends, and until when."""

    method: str
    build: Callable[[], Any]
    header: pb.RequestHeader
    mutating: bool
    deadline: float  # time.monotonic()
    attempt_timeout_s: float
    on_answer: AnswerHook | None


class AsyncCoordinatorClient:
    """Leader-following unary calls over shared ``grpc.aio`` channels (one event loop)."""

    def __init__(
        self,
        coordinators: str | Sequence[str],
        *,
        job: str,
        policy: RetryPolicy | None = None,
        attempt_timeout_s: float = 5.0,
        caller_id: str = "dtr-aio",
    ) -> None:
        """Validate like the real client; nothing is dialled until the first call.

        ``caller_id`` names the client itself; each call names its own caller
        (the worker it is about).
        """
        self.routing = CoordinatorClient(
            coordinators,
            job=job,
            caller_id=caller_id,
            policy=policy,
            attempt_timeout_s=attempt_timeout_s,
            leader_watch=False,
        )
        self.job = self.routing.job
        self.policy = self.routing.policy
        self.attempt_timeout_s = attempt_timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pb_grpc.CoordinatorAsyncStub] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def stub(self, address: str) -> pb_grpc.CoordinatorAsyncStub:
        """The stub for ``address``, dialling it on first use (hinted addresses too)."""
        if self._closed:
            raise InvalidArgument("the coordinator client is closed")
        stub = self._stubs.get(address)
        if stub is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
            stub = self._stubs[address] = pb_grpc.CoordinatorStub(channel)
        return stub

    async def call(
        self,
        method: str,
        build: Callable[[], Any],
        *,
        caller: str,
        operation: str,
        mutating: bool,
        policy: RetryPolicy | None = None,
        attempt_timeout_s: float | None = None,
        on_answer: AnswerHook | None = None,
    ) -> Any:
        """Send ``build()`` (a request without header) until it succeeds or fails for good.

        The same contract as ``CoordinatorClient.call``: ``dtr.errors`` types
        only, ``CoordinatorUnavailable`` once the policy's deadline ran out,
        ``InvalidArgument`` once the client is closed (calls in flight then
        included: closing cancels them, and a cancellation nobody asked of the
        caller's task must not reach it as one).
        """
        if self._closed:
            raise InvalidArgument(f"{operation}: the coordinator client is closed")
        policy = policy or self.policy
        call = _Call(
            method=method,
            build=build,
            header=pb.RequestHeader(
                job=self.job, caller_id=caller, client_request_id=uuid.uuid4().hex
            ),
            mutating=mutating,
            deadline=time.monotonic() + policy.deadline_s,
            attempt_timeout_s=attempt_timeout_s or self.attempt_timeout_s,
            on_answer=on_answer,
        )
        try:
            return await retry_async(
                functools.partial(self._attempt, call), operation=operation, policy=policy
            )
        except grpc.RpcError as err:
            if self.closed:  # the property: mypy narrowed the attribute above
                raise InvalidArgument(f"{operation}: the coordinator client was closed") from err
            raise error_from_rpc(err, operation) from err
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.closed and task is not None and not task.cancelling():
                raise InvalidArgument(f"{operation}: the coordinator client was closed") from None
            raise

    async def _attempt(self, call: _Call) -> Any:
        """One attempt at the best guess of the leader; learns from the answer or the error."""
        address = self.routing.target()
        request = call.build()
        request.header.CopyFrom(call.header)
        started = time.monotonic()
        timeout = max(0.05, min(call.attempt_timeout_s, call.deadline - started))
        try:
            response = await getattr(self.stub(address), call.method)(request, timeout=timeout)
        except grpc.RpcError as err:
            self.routing.note_failure(address, err)
            raise
        self.routing.note_answer(address, response.header, accepted_write=call.mutating)
        if call.on_answer is not None:
            call.on_answer(call.method, started, response.header, call.mutating)
        return response

    async def close(self) -> None:
        """Close every channel; calls in flight and later raise ``InvalidArgument``."""
        self._closed = True
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for channel in channels:
            await channel.close()
        self.routing.close()
