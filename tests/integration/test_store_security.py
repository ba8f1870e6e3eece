"""dtr.store towards an etcd with TLS, client certificates and user/password auth.

One real etcd serves its client port over TLS and requires client
certificates (``--client-cert-auth``); authentication is turned on through
etcd's own gRPC Auth API (user ``root`` with role ``root``, then
``AuthEnable``). Simple tokens live only in the member's memory, so
restarting it invalidates every token issued, the same refusal an expired
token gets, and the tests watch the store renew its token without waiting
out a TTL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etcd3 import etcdrpc
from test_store import Collector

from dtr.chaos.coordinator_process import CoordinatorProcess
from dtr.cli.certs_command import cert_pem, issue, key_pem, make_ca, write_pem
from dtr.errors import StoreAuthFailed, StoreUnavailable
from dtr.etcd import EtcdCluster, EtcdTls, pick_free_ports
from dtr.etcd_auth import EtcdCredentials
from dtr.security import TlsFiles
from dtr.store import Compare, EtcdStore, Get, Put
from helpers import wait_until

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-etcd-Passw0rd"


@dataclass(frozen=True)
class Certs:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing etcd uses

    def client_tls(self) -> TlsFiles:
        return TlsFiles(ca=self.ca, cert=self.client, key=self.client_key)


@dataclass(frozen=True)
class SecureEtcd:
    cluster: EtcdCluster
    certs: Certs
    password_file: Path

    @property
    def urls(self) -> list[str]:
        return self.cluster.client_urls

    def store(self, **options: object) -> EtcdStore:
        kwargs: dict[str, object] = {
            "tls": self.certs.client_tls(),
            "credentials": EtcdCredentials("root", PASSWORD),
            "timeout_s": 5.0,
            **options,
        }
        return EtcdStore(self.urls, **kwargs)  # type: ignore[arg-type]


def _write_certs(out: Path) -> Certs:
    ca = make_ca(days=1)
    server = issue(ca, "etcd", hosts=("127.0.0.1", "localhost"), client=False, days=1)
    client = issue(ca, "dtr-test-client", hosts=(), client=True, days=1)
    for stem, issued in (("ca", ca), ("server", server), ("client", client)):
        write_pem(out / f"{stem}.pem", cert_pem(issued.cert), private=False)
        write_pem(out / f"{stem}-key.pem", key_pem(issued.key), private=True)
    write_pem(out / "other-ca.pem", cert_pem(make_ca(days=1).cert), private=False)
    return Certs(
        ca=out / "ca.pem",
        server=out / "server.pem",
        server_key=out / "server-key.pem",
        client=out / "client.pem",
        client_key=out / "client-key.pem",
        other_ca=out / "other-ca.pem",
    )


def _enable_auth(endpoint: str, certs: Certs) -> None:
    """Add user root (role root) and turn authentication on, through etcd's Auth API."""
    credentials = grpc.ssl_channel_credentials(
        certs.ca.read_bytes(), certs.client_key.read_bytes(), certs.client.read_bytes()
    )
    with grpc.secure_channel(endpoint, credentials) as channel:
        auth = etcdrpc.AuthStub(channel)
        auth.UserAdd(etcdrpc.AuthUserAddRequest(name="root", password=PASSWORD), timeout=10)
        auth.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
        auth.AuthEnable(etcdrpc.AuthEnableRequest(), timeout=10)


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    root = tmp_path_factory.mktemp("etcd-tls")
    certs = _write_certs(root)
    tls = EtcdTls(
        server=TlsFiles(ca=certs.ca, cert=certs.server, key=certs.server_key),
        client=certs.client_tls(),
    )
    flags = ("--auth-token=simple", "--bcrypt-cost=4")
    cluster = EtcdCluster.start(1, tls=tls, extra_args=flags)
    try:
        _enable_auth(cluster.endpoints[0], certs)
        password_file = root / "etcd-password"
        write_pem(password_file, f"{PASSWORD}\n".encode(), private=True)
        yield SecureEtcd(cluster, certs, password_file)
    finally:
        cluster.stop()


def test_a_store_with_ca_client_cert_and_password_does_txns_leases_and_watches(
    secure_etcd: SecureEtcd, etcd_prefix_name: str
) -> None:
    prefix = etcd_prefix_name
    collector = Collector()
    with secure_etcd.store() as store:
        assert store.uses_tls and store.has_credentials
        watch = store.watch_prefix(prefix, collector)
        assert watch.wait_created(10.0)
        term = store.put(f"{prefix}leader", b"me")
        won = store.txn([Compare.created_at(f"{prefix}leader", term)], [Put(f"{prefix}s", b"1")])
        lost = store.txn(
            [Compare.created_at(f"{prefix}leader", term + 99)], [], [Get(f"{prefix}s")]
        )
        assert won.succeeded and not lost.succeeded
        lease = store.grant_lease(5)
        store.put(f"{prefix}member", b"m", lease_id=lease.lease_id)
        assert store.refresh_lease(lease.lease_id) > 0
        store.revoke_lease(lease.lease_id)
        assert store.get(f"{prefix}member") is None
        keys = collector.wait_for(4)
        assert keys == [f"{prefix}{k}" for k in ("leader", "s", "member", "member")]
        assert collector.errors == []


def test_a_wrong_password_is_refused_with_store_auth_failed(secure_etcd: SecureEtcd) -> None:
    wrong = EtcdCredentials("root", "not-the-password")
    with secure_etcd.store(credentials=wrong) as store, pytest.raises(StoreAuthFailed) as info:
        store.revision()
    message = str(info.value)
    assert "wrong etcd user name or password" in message and "root" in message
    assert "not-the-password" not in message and "not-the-password" not in repr(wrong)


def test_a_client_certificate_without_a_user_is_refused(secure_etcd: SecureEtcd) -> None:
    # With --client-cert-auth etcd takes the certificate's CN as the user: no such user.
    with secure_etcd.store(credentials=None) as store, pytest.raises(StoreAuthFailed):
        store.get("/anything")


def test_no_client_certificate_wrong_ca_or_plaintext_are_refused(
    secure_etcd: SecureEtcd,
) -> None:
    certs = secure_etcd.certs
    refused = [
        secure_etcd.store(tls=TlsFiles(ca=certs.ca), timeout_s=2.0),
        secure_etcd.store(
            tls=TlsFiles(ca=certs.other_ca, cert=certs.client, key=certs.client_key),
            timeout_s=2.0,
        ),
        EtcdStore(secure_etcd.cluster.endpoints, timeout_s=2.0),
    ]
    messages = []
    for store in refused:
        with store, pytest.raises(StoreUnavailable) as info:
            store.revision()
        messages.append(str(info.value))
    assert "TLS handshake with etcd failed" in messages[1], messages


def _forget_tokens(secure_etcd: SecureEtcd) -> None:
    """Restart the member: simple tokens live in its memory, so every issued one is now invalid.

    The same refusal an expired token gets, brought about on purpose instead
    of by waiting out a TTL (a probe would keep the token alive).
    """
    secure_etcd.cluster.stop_member(0)
    secure_etcd.cluster.start_member(0, timeout_s=30.0)


def test_a_token_etcd_no_longer_accepts_is_renewed_for_calls_and_for_watches(
    secure_etcd: SecureEtcd, etcd_prefix_name: str
) -> None:
    prefix = etcd_prefix_name
    collector = Collector()
    with secure_etcd.store() as store, secure_etcd.store() as writer:
        revision = store.put(f"{prefix}a", b"1")
        assert store.authentications == 1
        _forget_tokens(secure_etcd)
        watch = store.watch_prefix(prefix, collector, start_revision=revision + 1)
        assert watch.wait_created(10.0)
        assert store.authentications == 2  # the stream was refused once, then renewed
        writer.put(f"{prefix}b", b"2")
        assert collector.wait_for(1) == [f"{prefix}b"] and collector.errors == []
        _forget_tokens(secure_etcd)
        kv = store.get(f"{prefix}a")
        assert kv is not None and kv.value == b"1"
        assert store.authentications == 3


@pytest.fixture
def etcd_prefix_name(request: pytest.FixtureRequest) -> str:
    return f"/dtr-test/{request.node.name[:60]}-{os.getpid()}-{time.monotonic_ns()}/"


# --- the coordinator ---------------------------------------------------------------------


def _coordinator_flags(secure_etcd: SecureEtcd) -> list[str]:
    certs = secure_etcd.certs
    return [
        *("--etcd", ",".join(secure_etcd.urls), "--etcd-ca", str(certs.ca)),
        *("--etcd-cert", str(certs.client), "--etcd-key", str(certs.client_key)),
        *("--etcd-user", "root", "--etcd-password-file", str(secure_etcd.password_file)),
    ]


def test_a_coordinator_with_etcd_tls_and_auth_flags_becomes_leader(
    secure_etcd: SecureEtcd, tmp_path: Path
) -> None:
    (port,) = pick_free_ports(1)
    flags = [*_coordinator_flags(secure_etcd), "--job", "secure-etcd"]
    replica = CoordinatorProcess("secure-0", port, flags, tmp_path / "coordinator.log")
    replica.start()
    try:
        wait_until(replica.is_leader, 30.0, f"leadership; log:\n{replica.log_tail()}")
        status = _dtr_status(_etcd_status_flags(secure_etcd, "secure-etcd"))
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["leader"]["id"] == "secure-0"
    finally:
        replica.terminate()
        replica.close()
    assert PASSWORD not in (tmp_path / "coordinator.log").read_text()


def _etcd_status_flags(secure_etcd: SecureEtcd, job: str) -> list[str]:
    """``dtr status --etcd`` with the coordinator's etcd TLS and user flags (same names)."""
    flags = _coordinator_flags(secure_etcd)
    etcd = flags[flags.index("--etcd") + 1]
    wanted = ("--etcd-ca", "--etcd-cert", "--etcd-key", "--etcd-user", "--etcd-password-file")
    pairs = [(flag, flags[flags.index(flag) + 1]) for flag in wanted if flag in flags]
    return ["--etcd", etcd, "--job", job, "--json", *(x for pair in pairs for x in pair)]


def _dtr_status(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}
    return subprocess.run(
        [sys.executable, "-m", "dtr", "status", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _dtr_coordinator(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}
    return subprocess.run(
        [sys.executable, "-m", "dtr", "coordinator", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_a_coordinator_with_a_wrong_etcd_password_exits_with_one_line(
    secure_etcd: SecureEtcd, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-password"
    write_pem(wrong, b"nope-nope\n", private=True)
    flags = _coordinator_flags(secure_etcd)
    flags[flags.index("--etcd-password-file") + 1] = str(wrong)
    result = _dtr_coordinator(flags)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "wrong etcd user name or password" in result.stderr.splitlines()[-1]
    assert "nope-nope" not in result.stderr + result.stdout


def test_a_coordinator_refuses_a_password_file_others_can_read(
    secure_etcd: SecureEtcd, tmp_path: Path
) -> None:
    loose = tmp_path / "loose-password"
    loose.write_text(PASSWORD)
    loose.chmod(0o644)
    flags = _coordinator_flags(secure_etcd)
    flags[flags.index("--etcd-password-file") + 1] = str(loose)
    result = _dtr_coordinator(flags)
    lines = result.stderr.splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "--etcd-password-file" in lines[0] and "chmod 600" in lines[0]
