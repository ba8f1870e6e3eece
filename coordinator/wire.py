"""Registering the Coordinator service so that undecodable requests are INVALID_ARGUMENT.

gRPC decodes a request before any handler runs; when protobuf's ``FromString``
raises, grpc answers ``UNKNOWN`` ("Unexpected DecodeError"), which a client
treats as a server fault and may retry. The bytes are the caller's mistake,
so the answer must be ``INVALID_ARGUMENT`` naming the method (DESIGN §8).

``add_coordinator_servicer`` builds the same handlers as the generated
``add_CoordinatorServicer_to_server`` (it runs the generated function against
a recorder, so the method table stays the generated one), then wraps each
``request_deserializer`` so it never raises: undecodable bytes become a
``Malformed`` value, and the wrapped behaviour answers it with
INVALID_ARGUMENT before the servicer sees it. On a stream, the servicer's
loop refuses the first undecodable message (``refuse_malformed``), which
ends the call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from dtr.proto import coordinator_pb2_grpc as pb_grpc

SERVICE = "dtr.v1.Coordinator"


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes did not decode; carries protobuf's reason."""

    reason: str


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer`` that returns ``Malformed`` instead of raising ``DecodeError``."""

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as err:
            return Malformed(str(err) or "truncated or invalid message")

    return deserialize


def _message(method: str, bad: Malformed) -> str:
    return f"{method}: the request is not a valid protobuf message ({bad.reason})"


async def refuse_malformed(method: str, request: Any, context: Any) -> None:
    """Abort the call with INVALID_ARGUMENT if ``request`` did not decode.

    Streaming handlers call this for each message themselves (the servicer's
    ``HeartbeatStream``): wrapping their request and answer streams in
    generators of our own cost two more generator hops per beat, about 4%
    of the leader's CPU per streamed heartbeat (benchmarks/coordinator.py).
    """
    if isinstance(request, Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, request))


def _unary_request(method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    """A unary-request behaviour (unary or server-streaming answer) that refuses ``Malformed``."""

    async def handle(request: Any, context: Any) -> Any:
        await refuse_malformed(method, request, context)
        return await behavior(request, context)

    return handle


def _guarded(
    method: str, handler: grpc.RpcMethodHandler[Any, Any]
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with a tolerant deserializer and a behaviour that refuses ``Malformed``."""
    if handler.request_deserializer is None:  # generated handlers always have one
        raise TypeError(f"{method}: no request deserializer to guard")
    fields: dict[str, Any] = {"request_deserializer": _tolerant(handler.request_deserializer)}
    if handler.unary_unary is not None:
        fields["unary_unary"] = _unary_request(method, handler.unary_unary)
    elif handler.stream_stream is not None and handler.request_streaming:
        pass  # the servicer's stream loop calls refuse_malformed per message
    else:  # the service has no unary-stream or stream-unary method; refuse to guess
        raise TypeError(f"{method}: unsupported handler shape for the tolerant wrapper")
    return handler._replace(**fields)  # type: ignore[attr-defined, no-any-return]


class _Recorder:
    """Stands in for a server while the generated function registers its handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        del handlers  # the table comes through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        if service == SERVICE:
            self.handlers.update(handlers)


def coordinator_handlers(servicer: Any) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The generated method table for ``servicer``, every method guarded."""
    recorder = _Recorder()
    pb_grpc.add_CoordinatorServicer_to_server(servicer, cast(Any, recorder))  # a recorder
    if not recorder.handlers:
        raise RuntimeError("the generated registration registered no Coordinator method")
    return {name: _guarded(name, handler) for name, handler in recorder.handlers.items()}


def add_coordinator_servicer(servicer: Any, server: Any) -> None:
    """Register ``servicer`` on ``server`` (a grpc.aio server) with guarded deserializers."""
    handlers = coordinator_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
