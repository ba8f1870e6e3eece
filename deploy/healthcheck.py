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

- With TLS on the replica (``--tls-cert``), give ``--tls-ca`` (the CA that
  signed the server certificate) and, when dialling 127.0.0.1 while the
  certificate names a host, ``--server-name``; with mutual TLS
  (``--tls-client-ca``) also ``--tls-cert`` / ``--tls-key``. Each reads a
  ``DTR_HEALTHCHECK_*`` variable too, so an image's HEALTHCHECK line stays
  the same. The health service needs no token (docs/security.md).

Kubernetes needs this file only with TLS on: its native ``grpc`` probes ask
the same service (deploy/kubernetes/base/coordinator.yaml) but speak
plaintext only; an ``exec`` probe running this script does not.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

DEFAULT_LISTEN = "127.0.0.1:50051"
_TLS_FLAGS = {
    "--tls-ca": "speak TLS, trusting this CA file (the one that signed the server's certificate)",
    "--tls-cert": "client certificate, for a replica with --tls-client-ca (mutual TLS)",
    "--tls-key": "the client certificate's key",
    "--server-name": "the host name the server's certificate names (when dialling an IP)",
}
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def default_address(listen: str) -> str:
    """Where to dial a replica that listens on ``listen`` (a wildcard means loopback)."""
    host, _, port = listen.rpartition(":")
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    return f"{host}:{port}"


class Tls(NamedTuple):
    """What the check needs to speak TLS: the CA, a client pair for mutual TLS, a name."""

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None


def _channel(address: str, tls: Tls | None) -> Any:
    import grpc

    if tls is None:
        return grpc.insecure_channel(address)
    pair = [Path(f).read_bytes() for f in (tls.key, tls.cert) if f]
    credentials = grpc.ssl_channel_credentials(Path(tls.ca).read_bytes(), *pair)
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def check(address: str, service: str, timeout_s: float, tls: Tls | None = None) -> str | None:
    """None when ``service`` is SERVING at ``address``, else why not (one line)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(address, tls) as channel:
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
    for flag, what in _TLS_FLAGS.items():
        variable = "DTR_HEALTHCHECK_" + flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(
            flag, default=os.environ.get(variable) or None, help=f"{what} [env {variable}]"
        )
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("give --tls-cert and --tls-key together (mutual TLS), or neither")
    if args.tls_cert is not None and args.tls_ca is None:
        parser.error("--tls-cert needs --tls-ca (the CA of the server's certificate)")
    tls = None
    if args.tls_ca is not None:
        tls = Tls(args.tls_ca, args.tls_cert, args.tls_key, args.server_name)
    try:
        problem = check(args.address, args.service, args.timeout_s, tls)
    except OSError as err:  # an unreadable certificate file
        problem = f"{err.filename}: {err.strerror}"
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
