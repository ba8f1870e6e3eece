"""Every error dtr raises on purpose, under one root.

Errors are translated at the edges: etcd and gRPC exceptions never escape the
modules that wrap them (``dtr.store``, the servicer, the worker client). Callers
catch these types, never ``grpc.RpcError`` or ``etcd3`` exceptions. Each error's
message says what went wrong and what to do about it.
"""

from __future__ import annotations

from typing import ClassVar


class DtrError(Exception):
    """Root of every error dtr raises on purpose.

    ``kind``, where set, travels with the gRPC status as the trailing metadata
    ``dtr-error`` (``dtr.proto.ERROR_KIND_METADATA_KEY``): it tells apart
    errors that share a status code (FAILED_PRECONDITION is both "not the
    leader" and "wrong job"), so the worker client re-raises the exact type.
    """

    kind: ClassVar[str | None] = None


class InvalidArgument(DtrError, ValueError):
    """A caller passed a value that can never work; the message names the field."""


class NotFound(DtrError):
    """The named object (worker, dataset, barrier, checkpoint) does not exist."""


class AlreadyExists(DtrError):
    """An object exists with different, conflicting attributes."""


class UnknownWorker(NotFound):
    """The worker is not a live member: never registered, deregistered or declared dead.

    A worker that gets this re-registers (a new incarnation) and retries.
    """

    kind = "unknown-worker"


class NotLeader(DtrError):
    """A mutating call reached a replica that is not the leader."""

    kind = "not-leader"

    def __init__(self, message: str, leader_address: str | None = None) -> None:
        super().__init__(message)
        self.leader_address = leader_address


class WrongJob(DtrError):
    """A request named a job other than the one this replica serves.

    Refused loudly, without a leader hint, so a worker pointed at the wrong
    cluster fails at once instead of joining (and training in) another job.
    """

    kind = "wrong-job"


class CoordinatorUnavailable(DtrError):
    """No coordinator answered within the operation's deadline."""


class Unauthenticated(DtrError):
    """The coordinator did not accept the caller's credentials (no or a wrong bearer token).

    Final, never retried: another attempt with the same token cannot succeed.
    The message never contains the token.
    """

    kind = "unauthenticated"


class PermissionDenied(DtrError):
    """The caller's token is valid but its role may not make this call (a worker on an admin RPC).

    Final, never retried, like ``Unauthenticated``.
    """

    kind = "permission-denied"


class CoordinatorError(DtrError):
    """A coordinator failed a call in a way no retry fixes (INTERNAL, UNIMPLEMENTED, …)."""


class WorkerSuperseded(DtrError):
    """A newer incarnation of this worker id registered; this process must stop.

    Typically the old half of a restart that did not die: it must not train on
    shards that now belong to its successor.
    """


class StaleRound(WorkerSuperseded):
    """A torchrun rank registered for a rendezvous round that a newer round replaced.

    torchrun stops every rank of a round before it starts the next one, so
    this process is a leftover of the old round: it must exit, not train.
    """

    kind = "stale-round"


class RoundIncomplete(DtrError):
    """Not every rank of this torchrun round registered in time (``Worker()`` waited).

    Every rank must build a ``Worker`` (or the job sets ``DTR_JOIN_ROUND=0``);
    otherwise a rank died before registering, and torchrun restarts the group.
    """


class MembershipChanged(DtrError):
    """The membership generation changed under an operation that depends on it."""


class BarrierTimeout(DtrError):
    """A barrier was not released before the caller's timeout."""


class BarrierMissed(DtrError):
    """The barrier was released without this incarnation, and will never be again.

    The worker was dead, not yet registered, or an older process of its id
    when the others passed it: it did not synchronize with them there, so
    training on as if it had would diverge. Not a ``MembershipChanged`` on
    purpose: calling the barrier again gives the same answer. The remedy is
    to resume from the latest complete checkpoint (``CheckpointManager.
    load_latest``) and continue the loop from that step.
    """


class StaleIncarnation(DtrError):
    """A call came from an older incarnation of a worker id than the one registered.

    The process is the leftover half of a restart; its arrivals, parts and
    commits never count for the newer incarnation.
    """

    kind = "stale-incarnation"


class WrongJobLife(DtrError):
    """A commit record was made for another life of this job name.

    A job name reused after its etcd prefix was wiped, or on another etcd
    cluster, is a new job life; records queued for the old one are set aside
    by the worker, never replayed into the new one.
    """

    kind = "wrong-job-life"


class CheckpointError(DtrError):
    """A checkpoint could not be written, verified, committed or loaded."""


class NoCheckpoint(CheckpointError):
    """There is no complete checkpoint to load."""


# --- etcd access (dtr.store) -------------------------------------------------


class StoreError(DtrError):
    """etcd refused or failed an operation."""


class StoreUnavailable(StoreError):
    """etcd could not be reached or did not answer in time.

    For a write the outcome is unknown: it may have been applied. Callers that
    must know re-read the state (or rely on the write being idempotent).
    """


class StoreAuthFailed(StoreError):
    """etcd refused our identity: a wrong user or password, none given where etcd requires one,
    or a user without permission for the call.

    Final, never retried: the same credentials cannot succeed. (An expired token is not
    this error: ``dtr.store`` re-authenticates once and retries.) The message never
    contains the password.
    """


class LeaseExpired(StoreError):
    """The lease no longer exists in etcd: whatever was bound to it is gone."""


class WatchCompacted(StoreError):
    """A watch asked for history etcd has compacted away; re-read and re-watch."""


# --- etcd processes (dtr.etcd) -----------------------------------------------


class EtcdError(DtrError):
    """Starting, checking or stopping a local etcd process failed."""


class EtcdBinaryNotFound(EtcdError):
    """No usable etcd binary was found on this machine."""


class UnsafeEtcdVersion(EtcdError):
    """This etcd version is known to be unsafe for the requested use."""
