"""The one table from domain errors to gRPC status codes (STYLE rule 4).

The servicer answers every ``DtrError`` with ``status_for(err)``; nothing else
in the coordinator picks a status code. The worker client maps codes back with
its own table, so the two must change together. Codes matter beyond the
message: ``FAILED_PRECONDITION`` makes a client follow the ``dtr-leader`` hint,
``UNAVAILABLE`` makes it retry (dtr/retry.py), ``INTERNAL`` makes it give up,
as do ``UNAUTHENTICATED`` and ``PERMISSION_DENIED`` (answered by the auth
interceptor, ``coordinator/auth.py``, before any servicer runs).
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from dtr.errors import (
    AlreadyExists,
    BarrierTimeout,
    CoordinatorUnavailable,
    DtrError,
    InvalidArgument,
    MembershipChanged,
    NotFound,
    NotLeader,
    PermissionDenied,
    StaleIncarnation,
    StaleRound,
    StoreUnavailable,
    Unauthenticated,
    WrongJob,
    WrongJobLife,
)

STATUS_CODES: Mapping[type[DtrError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    NotLeader: grpc.StatusCode.FAILED_PRECONDITION,
    WrongJob: grpc.StatusCode.FAILED_PRECONDITION,
    WrongJobLife: grpc.StatusCode.FAILED_PRECONDITION,
    StaleIncarnation: grpc.StatusCode.FAILED_PRECONDITION,
    StaleRound: grpc.StatusCode.FAILED_PRECONDITION,
    MembershipChanged: grpc.StatusCode.ABORTED,
    BarrierTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    CoordinatorUnavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_for(err: DtrError) -> grpc.StatusCode:
    """The code of the nearest class in ``err``'s MRO, so subclasses answer like parents.

    Anything unlisted is INTERNAL: a bug or an error no client can act on, never
    a code a client would retry or redirect on by mistake.
    """
    for cls in type(err).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
