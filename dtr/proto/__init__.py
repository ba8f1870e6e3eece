"""The wire protocol: ``coordinator.proto`` and its generated modules (DESIGN §3).

What lives here: the ``dtr.v1.Coordinator`` service definition, the committed
modules protoc generates from it (``coordinator_pb2`` messages,
``coordinator_pb2_grpc`` stub and servicer, with ``.pyi`` stubs for mypy), the
generator (``python -m dtr.proto.generate``, i.e. ``make proto``), and the few
protocol names both sides must spell the same way, below.

What must not: hand edits to ``*_pb2*`` files (the unit tests regenerate them
and fail on any difference), and imports of grpc or protobuf in this file, so
that reading a constant stays cheap for code that never speaks gRPC (the CLI's
argument parsing, ``import dtr``). Import the generated modules explicitly
where they are needed; code outside the servicer and the worker client should
not need them at all, since those edges translate messages and status codes
into dtr types (STYLE rule 4).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ERROR_KIND_METADATA_KEY",
    "LEADER_HEALTH_SERVICE",
    "LEADER_METADATA_KEY",
    "NOT_LEADER",
    "PROTO_PACKAGE",
    "SERVICE_NAME",
]

#: The protobuf package of the protocol; a breaking change gets a new one (v2).
PROTO_PACKAGE: Final = "dtr.v1"

#: The full name of the coordinator service, as gRPC and reflection see it.
SERVICE_NAME: Final = "dtr.v1.Coordinator"

#: The trailing-metadata key a non-leader replica sets, with the leader's
#: ``HOST:PORT`` as value, when it refuses a mutating call with
#: FAILED_PRECONDITION (the NOT-LEADER convention in ``coordinator.proto``).
#: Absent when the replica knows no leader. gRPC metadata keys are lowercase.
LEADER_METADATA_KEY: Final = "dtr-leader"

#: The trailing-metadata key that says which dtr error a non-OK status is,
#: where the status code alone is ambiguous. FAILED_PRECONDITION means both
#: "not the leader, retry elsewhere" and "wrong job, do not retry"; a
#: not-leader answer always carries ``dtr-error: not-leader``, with or without
#: a leader hint, so a client's retry predicate can tell them apart.
ERROR_KIND_METADATA_KEY: Final = "dtr-error"
NOT_LEADER: Final = "not-leader"

#: The gRPC health-check service name reported SERVING only by the leader, so
#: a load balancer or ``grpc_health_probe`` can find the leader without dtr code.
#: The overall status ("") is SERVING on every healthy replica.
LEADER_HEALTH_SERVICE: Final = "dtr.v1.Leader"
