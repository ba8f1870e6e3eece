"""TLS, mutual TLS and bearer tokens on a real ``dtr coordinator``, against real etcd.

Certificates come from ``dtr certs`` (two runs: the right CA and another
one); an expired client certificate is signed here by the right CA. Every
refusal is bounded by a short retry deadline: a TLS refusal surfaces as
``CoordinatorUnavailable`` (the handshake fails like an unreachable host,
and is retried until the deadline), a token refusal as ``Unauthenticated`` /
``PermissionDenied`` at once (never retried).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dtr.cli.certs_command import Issued, cert_pem, issue, key_pem, write_pem
from dtr.errors import CoordinatorUnavailable, InvalidArgument, PermissionDenied, Unauthenticated
from dtr.etcd import RunningEtcd, pick_free_ports
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.security import ClientSecurity, TlsFiles, client_security
from dtr.worker import Worker
from dtr.worker.client import CoordinatorClient
from helpers import wait_until

pytestmark = pytest.mark.integration

DTR = [sys.executable, "-m", "dtr"]
WORKER_TOKEN = "worker-" + "1" * 32
ADMIN_TOKEN = "admin-" + "2" * 32
REFUSED = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=2.0)
ACCEPTED = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, deadline_s=20.0)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}


def dtr(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DTR, *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout_s,
        check=False,
    )


@dataclass(frozen=True)
class Pki:
    good: Path  # dtr certs: ca.pem, server.pem, client.pem ...
    other: Path  # a second dtr certs run: another CA
    expired: tuple[Path, Path]  # a client cert signed by ``good``'s CA, expired

    def client(self, folder: Path | None = None, *, stem: str = "client") -> TlsFiles:
        folder = folder or self.good
        return TlsFiles(
            ca=self.good / "ca.pem", cert=folder / f"{stem}.pem", key=folder / f"{stem}-key.pem"
        )


def _load_ca(folder: Path) -> Issued:
    cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None)
    return Issued(cert, key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    for name in ("good", "other"):
        result = dtr("certs", "--out", str(root / name), "--hosts", "127.0.0.1,localhost")
        assert result.returncode == 0, result.stderr
    past = datetime.now(UTC) - timedelta(days=2)
    expired = issue(
        _load_ca(root / "good"), "late", hosts=(), client=True, not_before=past, not_after=past
    )
    cert, key = root / "expired.pem", root / "expired-key.pem"
    write_pem(cert, cert_pem(expired.cert), private=False)
    write_pem(key, key_pem(expired.key), private=True)
    return Pki(root / "good", root / "other", (cert, key))


@dataclass(frozen=True)
class Replica:
    address: str
    job: str


@contextmanager
def coordinator(etcd: RunningEtcd, log_dir: Path, *flags: str) -> Iterator[Replica]:
    """``dtr coordinator`` with ``flags`` on a fresh port and job, until the block ends."""
    (port,) = pick_free_ports(1)
    replica = Replica(f"127.0.0.1:{port}", f"sec-{uuid.uuid4().hex[:8]}")
    log = log_dir / f"coordinator-{port}.log"
    argv = [*DTR, "coordinator", "--etcd", ",".join(etcd.endpoints)]
    argv += ["--listen", replica.address, "--job", replica.job, "--lease-ttl-s", "2"]
    argv += ["--renew-deadline-s", "1.5", *flags]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=clean_env())
    try:
        wait_until(
            lambda: process.poll() is not None or "serving on" in log.read_text(),
            30,
            "the coordinator to serve",
        )
        assert process.poll() is None, log.read_text()
        yield replica
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def join(replica: Replica, retry: RetryPolicy = ACCEPTED, **options: object) -> Worker:
    worker_id = f"w-{uuid.uuid4().hex[:8]}"
    return Worker(replica.address, worker_id=worker_id, job=replica.job, retry=retry, **options)  # type: ignore[arg-type]


def health(address: str, security: ClientSecurity) -> str:
    with security.channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


# --- mutual TLS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls(
    etcd: RunningEtcd, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    flags = [
        "--tls-cert",
        str(pki.good / "server.pem"),
        "--tls-key",
        str(pki.good / "server-key.pem"),
    ]
    flags += ["--tls-client-ca", str(pki.good / "ca.pem")]
    with coordinator(etcd, tmp_path_factory.mktemp("mtls"), *flags) as replica:
        yield replica


def test_a_worker_with_the_right_client_certificate_registers_and_gets_shards(
    mtls: Replica, pki: Pki
) -> None:
    with join(mtls, tls=pki.client()) as worker:
        worker.register_dataset("tokens", num_shards=8)
        assert worker.get_shards("tokens", 0) == list(range(8))
    assert health(mtls.address, client_security(pki.client())) == "SERVING"


@pytest.mark.parametrize(
    "case", ["plaintext", "no-client-cert", "other-ca-cert", "untrusted-server"]
)
def test_a_client_without_a_valid_certificate_is_refused(
    mtls: Replica, pki: Pki, case: str
) -> None:
    good_ca = pki.good / "ca.pem"
    tls = {
        "plaintext": None,
        "no-client-cert": TlsFiles(ca=good_ca),
        "other-ca-cert": pki.client(pki.other),
        "untrusted-server": TlsFiles(
            ca=pki.other / "ca.pem", cert=pki.good / "client.pem", key=pki.good / "client-key.pem"
        ),
    }[case]
    started = time.monotonic()
    with pytest.raises(CoordinatorUnavailable):
        join(mtls, REFUSED, tls=tls)
    assert time.monotonic() - started < 15


def test_an_expired_client_certificate_is_refused_by_the_worker_and_by_the_server(
    mtls: Replica, pki: Pki
) -> None:
    cert, key = pki.expired
    with pytest.raises(InvalidArgument, match="expired"):
        join(mtls, REFUSED, tls=TlsFiles(ca=pki.good / "ca.pem", cert=cert, key=key))
    # Past the worker's own check, the server refuses the handshake.
    raw = grpc.ssl_channel_credentials(
        (pki.good / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    with pytest.raises(grpc.RpcError) as info:
        health(mtls.address, ClientSecurity(credentials=raw))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health(mtls.address, client_security(pki.client())) == "SERVING"


# --- bearer tokens (over TLS, as docs/security.md recommends) ----------------------------


@pytest.fixture(scope="module")
def tokens(
    etcd: RunningEtcd, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    folder = tmp_path_factory.mktemp("tokens")
    table = folder / "tokens"
    table.write_text(f"worker {WORKER_TOKEN}\nadmin {ADMIN_TOKEN}\n")
    table.chmod(0o600)
    flags = [
        "--tls-cert",
        str(pki.good / "server.pem"),
        "--tls-key",
        str(pki.good / "server-key.pem"),
    ]
    with coordinator(etcd, folder, *flags, "--token-file", str(table)) as replica:
        yield replica


def server_only(pki: Pki) -> TlsFiles:
    return TlsFiles(ca=pki.good / "ca.pem")


@pytest.mark.parametrize("token", [None, "wrong-" + "9" * 32], ids=["no-token", "wrong-token"])
def test_a_worker_without_a_known_token_is_unauthenticated_at_once(
    tokens: Replica, pki: Pki, token: str | None
) -> None:
    started = time.monotonic()
    with pytest.raises(Unauthenticated) as info:
        join(tokens, ACCEPTED, tls=server_only(pki), token=token)
    assert time.monotonic() - started < ACCEPTED.deadline_s / 2  # final: not retried
    assert "9" * 32 not in str(info.value)


def cluster_status(replica: Replica, security: ClientSecurity) -> pb.ClusterStatusResponse:
    client = CoordinatorClient(
        replica.address, job=replica.job, caller_id="test", policy=ACCEPTED, security=security
    )
    try:
        response: pb.ClusterStatusResponse = client.call(
            "ClusterStatus", pb.ClusterStatusRequest, operation="status", mutating=False
        )
        return response
    finally:
        client.close()


def test_a_worker_token_works_for_workers_but_not_for_cluster_status(
    tokens: Replica, pki: Pki
) -> None:
    with join(tokens, tls=server_only(pki), token=WORKER_TOKEN) as worker:
        worker.register_dataset("tokens", num_shards=4)
        assert worker.get_shards("tokens", 0) == list(range(4))
        with pytest.raises(PermissionDenied, match="admin"):
            cluster_status(tokens, client_security(server_only(pki), WORKER_TOKEN))
        status = cluster_status(tokens, client_security(server_only(pki), ADMIN_TOKEN))
        assert worker.worker_id in {w.id for w in status.workers}


def test_health_stays_open_but_a_stream_without_a_token_is_refused(
    tokens: Replica, pki: Pki
) -> None:
    anonymous = client_security(server_only(pki))
    assert health(tokens.address, anonymous) == "SERVING"
    with anonymous.channel(tokens.address) as channel:
        from dtr.proto import coordinator_pb2_grpc as pb_grpc

        beats = pb_grpc.CoordinatorStub(channel).HeartbeatStream(
            iter([pb.HeartbeatStreamRequest()]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as info:
            list(beats)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- refused at start, in one line -----------------------------------------------------


def start_refusal(*flags: str) -> str:
    result = dtr("coordinator", "--etcd", "127.0.0.1:1", "--listen", "127.0.0.1:0", *flags)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_coordinator_refuses_a_missing_certificate_file(tmp_path: Path, pki: Pki) -> None:
    line = start_refusal(
        "--tls-cert", str(tmp_path / "gone.pem"), "--tls-key", str(pki.good / "server-key.pem")
    )
    assert "--tls-cert" in line and "gone.pem" in line


def test_the_coordinator_refuses_a_key_that_does_not_match(pki: Pki) -> None:
    line = start_refusal(
        "--tls-cert", str(pki.good / "server.pem"), "--tls-key", str(pki.good / "client-key.pem")
    )
    assert "--tls-key" in line and "does not match" in line


@pytest.mark.parametrize(("text", "mode"), [(f"admin {ADMIN_TOKEN}\n", 0o644), ("", 0o600)])
def test_the_coordinator_refuses_a_loose_or_empty_token_file(
    tmp_path: Path, text: str, mode: int
) -> None:
    table = tmp_path / "tokens"
    table.write_text(text)
    table.chmod(mode)
    line = start_refusal("--token-file", str(table))
    assert "--token-file" in line and str(table) in line
    assert ADMIN_TOKEN not in line


def test_dtr_status_speaks_tls_with_an_admin_token_and_a_worker_token_is_one_line(
    tokens: Replica, pki: Pki, tmp_path: Path
) -> None:
    files = {}
    for role, token in (("admin", ADMIN_TOKEN), ("worker", WORKER_TOKEN)):
        files[role] = tmp_path / role
        files[role].write_text(token + "\n")
        files[role].chmod(0o600)
    base = ["status", "--coordinator", tokens.address, "--tls-ca", str(pki.good / "ca.pem")]
    done = dtr(*base, "--token-file", str(files["admin"]), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["job"] == tokens.job
    refused = dtr(*base, "--token-file", str(files["worker"]))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "PERMISSION_DENIED" in refused.stderr
    assert WORKER_TOKEN not in refused.stderr + refused.stdout  # secrets never printed
    plaintext = dtr("status", "--coordinator", tokens.address, "--timeout-s", "2")
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr


# --- torchrun rendezvous over TLS and tokens -----------------------------------------


def rendezvous_params(replica: Replica, **conf: str) -> Any:
    from torch.distributed.elastic.rendezvous.api import RendezvousParameters

    return RendezvousParameters(
        backend="dtr",
        endpoint=replica.address,
        run_id=f"run-{uuid.uuid4().hex[:8]}",
        min_nodes=1,
        max_nodes=1,
        local_addr="127.0.0.1",
        job=replica.job,
        connect_timeout="20",
        **conf,
    )


def test_torchrun_rendezvous_uses_tls_and_a_worker_token(
    tokens: Replica, pki: Pki, tmp_path: Path
) -> None:
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    from dtr.worker.rendezvous import create_rdzv_handler

    token_file = tmp_path / "token"
    token_file.write_text(WORKER_TOKEN + "\n")
    token_file.chmod(0o600)
    ca = str(pki.good / "ca.pem")
    handler = create_rdzv_handler(rendezvous_params(tokens, tls_ca=ca, token_file=str(token_file)))
    info = handler.next_rendezvous()
    assert (info.rank, info.world_size) == (0, 1)
    assert handler.shutdown()

    without_token = create_rdzv_handler(rendezvous_params(tokens, tls_ca=ca))
    started = time.monotonic()
    with pytest.raises(RendezvousError, match=r"(?i)unauthenticated|token") as refused:
        without_token.next_rendezvous()
    assert time.monotonic() - started < 10  # final: not retried for connect_timeout
    assert WORKER_TOKEN not in str(refused.value)


# --- deploy/healthcheck.py against TLS replicas ------------------------------------------


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def test_the_image_health_check_speaks_tls_and_mutual_tls(
    tokens: Replica, mtls: Replica, pki: Pki
) -> None:
    ca = str(pki.good / "ca.pem")
    client = pki.client()
    # Server TLS (and tokens: the health service needs none).
    assert healthcheck("--address", tokens.address, "--tls-ca", ca).returncode == 0
    named = healthcheck("--address", tokens.address, "--tls-ca", ca, "--server-name", "localhost")
    assert named.returncode == 0, named.stderr
    plaintext = healthcheck("--address", tokens.address, "--timeout-s", "1")
    assert plaintext.returncode == 1 and "unhealthy" in plaintext.stderr
    # Mutual TLS: the client pair is required.
    pair = ["--tls-cert", str(client.cert), "--tls-key", str(client.key)]
    assert healthcheck("--address", mtls.address, "--tls-ca", ca, *pair).returncode == 0
    no_pair = healthcheck("--address", mtls.address, "--tls-ca", ca, "--timeout-s", "1")
    assert no_pair.returncode == 1 and "unhealthy" in no_pair.stderr
    half = healthcheck("--address", mtls.address, "--tls-ca", ca, "--tls-cert", str(client.cert))
    assert half.returncode == 2 and "--tls-key" in half.stderr
    missing = healthcheck("--address", tokens.address, "--tls-ca", "/nonexistent/ca.pem")
    assert missing.returncode == 1 and "/nonexistent/ca.pem" in missing.stderr
