#!/usr/bin/env python3
"""Health check of one dtr coordinator replica, for Docker's HEALTHCHECK and compose.

It asks the replica's standard gRPC health service (coordinator/main.py)
and exits 0 when the answer is SERVING, else 1 with one line on stderr.
``grpc_health_probe`` would do the same, but it is one more binary to fetch;
this uses the grpcio-health-checking that dtr already depends on.

- The address defaults to 127.0.0.1 and the port of ``$DTR_LISTEN`` (the
  replica's own listen address when it names a concrete host), so the check
  follows the replica wherever its port is configured.
- ``--service ""`` (the default) is SERVING on every running replica, leader
  or follower; ``--service dtr.v1.Leader`` is SERVING only on the leader,
  which finds it: ``docker compose exec coordinator-0 python
  /usr/local/lib/dtr/healthcheck.py --service dtr.v1.Leader``.

Kubernetes does not need this file: its native ``grpc`` probes ask the same
service (deploy/kubernetes/base/coordinator.yaml). Plaintext only for now;
the TLS flags (docs/security.md) will need a ``--tls-ca`` here too.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_LISTEN = "127.0.0.1:50051"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def default_address(listen: str) -> str:
    """Where to dial a replica that listens on ``listen`` (a wildcard means loopback)."""
    host, _, port = listen.rpartition(":")
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    return f"{host}:{port}"


def check(address: str, service: str, timeout_s: float) -> str | None:
    """None when ``service`` is SERVING at ``address``, else why not (one line)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            return f"{address}: {err.code().name}: {err.details()}"
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        return f"{address}: service {service!r} is {status}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Exit 0 when a dtr coordinator's gRPC health service says SERVING."
    )
    parser.add_argument(
        "--address",
        default=default_address(os.environ.get("DTR_LISTEN") or DEFAULT_LISTEN),
        help="HOST:PORT to ask (default: 127.0.0.1 and the port of $DTR_LISTEN)",
    )
    parser.add_argument(
        "--service", default="", help="'' (any running replica) or dtr.v1.Leader (the leader)"
    )
    parser.add_argument("--timeout-s", type=float, default=2.0, help="deadline of the call")
    args = parser.parse_args(argv)
    problem = check(args.address, args.service, args.timeout_s)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
