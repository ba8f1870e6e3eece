"""Bearer-token checks on a replica's gRPC port: who may call what, decided in one place.

``TokenInterceptor`` runs before any servicer: a call without a token the
replica knows is answered UNAUTHENTICATED, a worker token on an admin RPC
PERMISSION_DENIED, both with the ``dtr-error`` kind so the worker client
re-raises ``Unauthenticated`` / ``PermissionDenied`` (never retried).

What stays open: the standard health service (``grpc.health.v1``), because
Kubernetes probes and load balancers carry no token. It reveals only
SERVING / NOT_SERVING. Reflection needs a token like any other call.

Messages never echo the token presented.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc

from dtr.errors import DtrError, PermissionDenied, Unauthenticated
from dtr.proto import ERROR_KIND_METADATA_KEY, SERVICE_NAME
from dtr.security import TokenTable, bearer_token_of

from .status_codes import status_for

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
if TYPE_CHECKING:  # generic in the stubs only
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]

#: RPCs only an ``admin`` token may call. Workers never call these (the
#: worker library does not, and tests/unit/test_credentials.py checks it).
ADMIN_METHODS = frozenset({f"/{SERVICE_NAME}/ClusterStatus"})
#: Services reachable without a token (probes carry none).
OPEN_SERVICE_PREFIXES = ("/grpc.health.v1.Health/",)


def decide(tokens: TokenTable, method: str, metadata: Any) -> DtrError | None:
    """The refusal for a call to ``method`` with ``metadata``, or None to let it through.

    A pure function of its inputs, so the policy is unit-tested without a server.
    """
    if method.startswith(OPEN_SERVICE_PREFIXES):
        return None
    presented = bearer_token_of(metadata)
    if presented is None:
        return Unauthenticated(
            "missing bearer token: send 'authorization: Bearer <token>' "
            "(Worker(token=...) or DTR_TOKEN_FILE)"
        )
    role = tokens.role_of(presented)
    if role is None:
        return Unauthenticated("the bearer token is not accepted by this coordinator")
    if method in ADMIN_METHODS and role != "admin":
        name = method.rsplit("/", 1)[-1]
        return PermissionDenied(f"{name} needs an admin token; this is a {role} token")
    return None


def _refusal(handler: _Handler, err: DtrError) -> _Handler:
    """A handler of the same streaming shape as ``handler`` that only aborts with ``err``."""

    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        del request
        if err.kind:
            context.set_trailing_metadata(((ERROR_KIND_METADATA_KEY, err.kind),))
        await context.abort(status_for(err), str(err))

    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **options)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **options)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **options)
    return grpc.unary_unary_rpc_method_handler(deny, **options)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call's bearer token against the replica's ``TokenTable``."""

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens

    def __repr__(self) -> str:
        return f"TokenInterceptor({self._tokens!r})"

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: let gRPC answer UNIMPLEMENTED
            return handler
        refusal = decide(
            self._tokens, handler_call_details.method, handler_call_details.invocation_metadata
        )
        return handler if refusal is None else _refusal(handler, refusal)
