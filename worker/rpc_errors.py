"""gRPC errors back into ``dtr.errors`` types: the worker's half of STYLE rule 4.

The coordinator answers every domain error with one status code from
``coordinator/status_codes.py`` and, where codes are shared, a ``dtr-error``
kind in the trailing metadata. This module reverses both, so a training
script only ever sees ``DtrError`` subclasses, never ``grpc.RpcError``. The
two tables must change together; tests/unit/test_rpc_errors.py pins them.

A retryable error that is still failing when its operation's deadline passes
means no coordinator could be reached in time: ``CoordinatorUnavailable``,
whatever the last attempt's code was.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from dtr.errors import (
    AlreadyExists,
    BarrierTimeout,
    CoordinatorError,
    CoordinatorUnavailable,
    DtrError,
    InvalidArgument,
    MembershipChanged,
    NotFound,
    NotLeader,
    PermissionDenied,
    StaleIncarnation,
    StaleRound,
    Unauthenticated,
    UnknownWorker,
    WrongJob,
    WrongJobLife,
)
from dtr.proto import ERROR_KIND_METADATA_KEY, LEADER_METADATA_KEY
from dtr.retry import is_retryable, status_code, trailing_metadata

#: ``dtr-error`` kinds, checked before the status code.
ERROR_FOR_KIND: Mapping[str, type[DtrError]] = {
    cls.kind: cls
    for cls in (
        NotLeader,
        WrongJob,
        UnknownWorker,
        Unauthenticated,
        PermissionDenied,
        StaleIncarnation,
        StaleRound,
        WrongJobLife,
    )
    if cls.kind
}

#: Status codes of non-retryable answers. Anything unlisted (INTERNAL,
#: UNIMPLEMENTED, UNKNOWN, DATA_LOSS, …) is a ``CoordinatorError``.
ERROR_FOR_CODE: Mapping[grpc.StatusCode, type[DtrError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: WrongJob,
    grpc.StatusCode.ABORTED: MembershipChanged,
    grpc.StatusCode.UNAVAILABLE: CoordinatorUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: BarrierTimeout,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CoordinatorUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def _details(err: BaseException) -> str:
    read = getattr(err, "details", None)
    details = read() if callable(read) else None
    return str(details) if details else str(err) or type(err).__name__


def error_from_rpc(err: BaseException, operation: str) -> DtrError:
    """The ``DtrError`` to raise for ``err``, the final failure of ``operation``.

    Retryable failures (the deadline ran out on them) become
    ``CoordinatorUnavailable``; others map by kind, then by code. The message
    keeps the coordinator's own text, which names the field at fault.
    """
    if isinstance(err, DtrError) and not isinstance(err, NotLeader):
        return err
    code = status_code(err)
    details = _details(err)
    if is_retryable(err):
        label = code.name if code else type(err).__name__
        return CoordinatorUnavailable(
            f"{operation}: no coordinator answered in time (last error {label}: {details}); "
            "check that the coordinators are running and reachable from this machine"
        )
    metadata = trailing_metadata(err)
    error_type = ERROR_FOR_KIND.get(metadata.get(ERROR_KIND_METADATA_KEY, ""))
    if error_type is None and code is not None:
        error_type = ERROR_FOR_CODE.get(code)
    if error_type is None:
        label = code.name if code else type(err).__name__
        return CoordinatorError(
            f"{operation}: the coordinator failed the call ({label}: {details})"
        )
    if error_type is NotLeader:
        return NotLeader(f"{operation}: {details}", metadata.get(LEADER_METADATA_KEY))
    return error_type(f"{operation}: {details}")
