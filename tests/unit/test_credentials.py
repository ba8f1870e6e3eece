"""dtr.security and the token policy: bad credentials are refused early, secrets stay hidden.

Certificates are made with the same code as ``dtr certs`` (real keys, real
X.509); nothing here starts a server — tests/integration/test_security.py does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from dtr.cli.certs_command import Issued, cert_pem, issue, key_pem, make_ca, parse_hosts, write_pem
from dtr.cli.coordinator_command import flag_message
from dtr.coordinator.auth import ADMIN_METHODS, decide
from dtr.coordinator.config import CoordinatorConfig
from dtr.coordinator.status_codes import status_for
from dtr.errors import InvalidArgument, PermissionDenied, Unauthenticated
from dtr.proto import ERROR_KIND_METADATA_KEY, SERVICE_NAME
from dtr.retry import is_retryable
from dtr.security import (
    TlsFiles,
    bearer_token_of,
    client_security,
    load_tls,
    read_token_file,
    read_token_table,
)
from dtr.worker.rpc_errors import error_from_rpc
from helpers import StatusError

WORKER_TOKEN = "w" * 32
ADMIN_TOKEN = "a" * 32
ROOT = Path(__file__).resolve().parents[2]


def write_pair(folder: Path, stem: str, issued: Issued) -> tuple[Path, Path]:
    cert, key = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    write_pem(cert, cert_pem(issued.cert), private=False)
    write_pem(key, key_pem(issued.key), private=True)
    return cert, key


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca(days=1)


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --- TLS files -------------------------------------------------------------------------


def test_a_matching_certificate_and_key_load(tmp_path: Path, ca: Issued) -> None:
    cert, key = write_pair(tmp_path, "server", issue(ca, "s", hosts=["127.0.0.1"], client=False))
    ca_path, _ = write_pair(tmp_path, "ca", ca)
    pem = load_tls(TlsFiles(ca=ca_path, cert=cert, key=key))
    assert pem.cert is not None and pem.key is not None and pem.ca is not None


def test_a_key_of_another_certificate_is_refused_naming_both_files(
    tmp_path: Path, ca: Issued
) -> None:
    cert, _ = write_pair(tmp_path, "server", issue(ca, "s", hosts=["h"], client=False))
    _, other_key = write_pair(tmp_path, "other", issue(ca, "o", hosts=["h"], client=False))
    with pytest.raises(InvalidArgument, match="does not match the certificate") as info:
        load_tls(TlsFiles(cert=cert, key=other_key), {"key": "tls_key", "cert": "tls_cert"})
    assert str(other_key) in str(info.value) and str(cert) in str(info.value)
    assert flag_message(str(info.value)).startswith("--tls-key: ")


def test_a_missing_certificate_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(InvalidArgument, match=r"tls_cert: cannot read .*nope\.pem"):
        CoordinatorConfig(etcd_endpoints=("127.0.0.1:1",), tls_cert=str(missing), tls_key="k")


def test_a_key_others_can_read_is_refused(tmp_path: Path, ca: Issued) -> None:
    cert, key = write_pair(tmp_path, "server", issue(ca, "s", hosts=["h"], client=False))
    key.chmod(0o644)
    with pytest.raises(InvalidArgument, match="chmod 600"):
        load_tls(TlsFiles(cert=cert, key=key))


def test_an_expired_own_certificate_is_refused(tmp_path: Path, ca: Issued) -> None:
    past = datetime.now(UTC) - timedelta(days=3)
    old = issue(ca, "s", hosts=["h"], client=False, not_before=past, not_after=past)
    cert, key = write_pair(tmp_path, "server", old)
    with pytest.raises(InvalidArgument, match="expired"):
        load_tls(TlsFiles(cert=cert, key=key))


def test_garbage_instead_of_a_certificate_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(InvalidArgument, match="is not a PEM certificate"):
        load_tls(TlsFiles(ca=bogus))


def test_a_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="together"):
        TlsFiles(cert=Path("c.pem"))
    with pytest.raises(InvalidArgument, match="together"):
        TlsFiles.from_environment({"DTR_TLS_CERT": "c.pem"})
    assert TlsFiles.from_environment({}) is None
    assert TlsFiles.from_environment({"DTR_TLS_CA": "ca.pem"}) == TlsFiles(ca=Path("ca.pem"))


def test_client_ca_without_a_server_certificate_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="tls_client_ca needs tls_cert"):
        CoordinatorConfig(etcd_endpoints=("127.0.0.1:1",), tls_client_ca="ca.pem")


def test_dtr_certs_hosts_are_checked() -> None:
    assert parse_hosts("127.0.0.1, localhost,localhost") == ("127.0.0.1", "localhost")
    assert parse_hosts("::1") == ("::1",)
    with pytest.raises(InvalidArgument):
        parse_hosts(" , ")
    with pytest.raises(InvalidArgument):
        parse_hosts("http://x")


# --- tokens ----------------------------------------------------------------------------


def test_a_token_table_grants_roles_and_hides_its_tokens(tmp_path: Path) -> None:
    path = private_file(
        tmp_path / "tokens", f"# rotated monthly\nworker {WORKER_TOKEN}\n\nadmin {ADMIN_TOKEN}\n"
    )
    table = read_token_table(path)
    assert table.role_of(WORKER_TOKEN) == "worker"
    assert table.role_of(ADMIN_TOKEN) == "admin"
    assert table.role_of("x" * 32) is None
    assert WORKER_TOKEN not in repr(table) and ADMIN_TOKEN not in repr(table)
    assert "worker=1" in repr(table)


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        (f"worker {WORKER_TOKEN}\n", 0o640, "accessible by group or others"),
        (f"worker {WORKER_TOKEN}\n", 0o604, "accessible by group or others"),
        ("", 0o600, "is empty"),
        ("# only a comment\n", 0o600, "holds no 'ROLE TOKEN' line"),
        (f"root {WORKER_TOKEN}\n", 0o600, "line 1: expected 'ROLE TOKEN'"),
        ("worker short\n", 0o600, "at least 16"),
        (f"worker {WORKER_TOKEN}\nadmin {WORKER_TOKEN}\n", 0o600, "line 2: a token is listed"),
    ],
    ids=["group-readable", "other-readable", "empty", "comments-only", "bad-role", "short", "dup"],
)
def test_a_bad_token_file_is_refused_without_showing_a_token(
    tmp_path: Path, text: str, mode: int, message: str
) -> None:
    path = private_file(tmp_path / "tokens", text, mode)
    with pytest.raises(InvalidArgument, match=message) as info:
        read_token_table(path, "token_file")
    assert WORKER_TOKEN not in str(info.value) and str(path) in str(info.value)


def test_a_missing_token_file_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        CoordinatorConfig(etcd_endpoints=("127.0.0.1:1",), token_file=str(tmp_path / "none"))
    assert flag_message(str(info.value)).startswith("--token-file: cannot read")


def test_a_client_token_file_holds_exactly_one_token(tmp_path: Path) -> None:
    assert read_token_file(private_file(tmp_path / "t", f"\n{WORKER_TOKEN}\n")) == WORKER_TOKEN
    with pytest.raises(InvalidArgument, match="exactly one token"):
        read_token_file(private_file(tmp_path / "two", f"{WORKER_TOKEN}\n{ADMIN_TOKEN}\n"))
    with pytest.raises(InvalidArgument, match="chmod 600"):
        read_token_file(private_file(tmp_path / "loose", WORKER_TOKEN, 0o644))


def test_client_security_hides_its_token() -> None:
    security = client_security(None, WORKER_TOKEN)
    assert WORKER_TOKEN not in repr(security) and "<hidden>" in repr(security)
    with pytest.raises(InvalidArgument):
        client_security(None, "short")


def test_the_bearer_token_is_read_from_the_authorization_metadata() -> None:
    assert bearer_token_of((("authorization", f"Bearer {ADMIN_TOKEN}"),)) == ADMIN_TOKEN
    assert bearer_token_of((("authorization", f"Basic {ADMIN_TOKEN}"),)) is None
    assert bearer_token_of((("x-other", "Bearer t"),)) is None
    assert bearer_token_of(None) is None


# --- the policy ------------------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> object:
    path = private_file(tmp_path / "tokens", f"worker {WORKER_TOKEN}\nadmin {ADMIN_TOKEN}\n")
    return read_token_table(path)


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_the_policy_per_role_and_method(tokens: object) -> None:
    from dtr.security import TokenTable

    assert isinstance(tokens, TokenTable)
    status = f"/{SERVICE_NAME}/ClusterStatus"
    shards = f"/{SERVICE_NAME}/GetShards"
    assert decide(tokens, "/grpc.health.v1.Health/Check", ()) is None
    assert isinstance(decide(tokens, shards, ()), Unauthenticated)
    assert isinstance(decide(tokens, shards, _bearer("z" * 32)), Unauthenticated)
    assert decide(tokens, shards, _bearer(WORKER_TOKEN)) is None
    assert isinstance(decide(tokens, status, _bearer(WORKER_TOKEN)), PermissionDenied)
    assert decide(tokens, status, _bearer(ADMIN_TOKEN)) is None
    assert decide(tokens, shards, _bearer(ADMIN_TOKEN)) is None
    refusal = decide(tokens, shards, _bearer("z" * 32))
    assert refusal is not None and "z" * 32 not in str(refusal)


def test_the_worker_library_never_calls_an_admin_rpc() -> None:
    names = [method.rsplit("/", 1)[-1] for method in ADMIN_METHODS]
    for path in sorted((ROOT / "worker").rglob("*.py")):
        text = path.read_text()
        assert not [name for name in names if f'"{name}"' in text or f".{name}(" in text], path


@pytest.mark.parametrize("error_type", [Unauthenticated, PermissionDenied])
def test_auth_refusals_round_trip_and_are_never_retried(error_type: type) -> None:
    original = error_type("refused")
    code = status_for(original)
    assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    answer = StatusError(code, "refused", ((ERROR_KIND_METADATA_KEY, original.kind),))
    assert not is_retryable(answer)
    assert type(error_from_rpc(answer, "register")) is error_type
    assert type(error_from_rpc(StatusError(code, "refused"), "register")) is error_type
