"""dtr.etcd_auth without etcd: password files, pairing rules, hidden secrets, token renewal."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtr.errors import InvalidArgument
from dtr.etcd_auth import EtcdAuth, EtcdCredentials, load_etcd_security, read_password_file

NAMES = {"user": "--etcd-user", "password_file": "--etcd-password-file"}


def _secret(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "password"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_password_file_holds_the_password_without_its_final_newline(tmp_path: Path) -> None:
    assert read_password_file(_secret(tmp_path, "pa ss word\n")) == "pa ss word"


@pytest.mark.parametrize(
    ("text", "mode", "needle"),
    [("pw\n", 0o644, "chmod 600"), ("\n", 0o600, "empty"), ("a\nb\n", 0o600, "one line")],
)
def test_a_bad_password_file_is_one_line_naming_the_flag(
    tmp_path: Path, text: str, mode: int, needle: str
) -> None:
    path = _secret(tmp_path, text, mode)
    with pytest.raises(InvalidArgument, match=needle) as info:
        load_etcd_security(user="root", password_file=str(path), names=NAMES)
    assert str(info.value).startswith("--etcd-password-file")


def test_a_user_and_a_password_file_come_together(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--etcd-user and --etcd-password-file"):
        load_etcd_security(user="root", names=NAMES)
    with pytest.raises(InvalidArgument, match="must be given together"):
        load_etcd_security(cert="client.pem")


def test_credentials_never_show_the_password(tmp_path: Path) -> None:
    path = _secret(tmp_path, "hunter2-hunter2\n")
    tls, credentials = load_etcd_security(user="root", password_file=str(path))
    assert tls is None and credentials is not None
    assert "hunter2" not in repr(credentials) and "hunter2" not in repr(EtcdAuth(credentials))


def test_a_token_is_renewed_once_for_concurrent_refusals() -> None:
    auth = EtcdAuth(EtcdCredentials("root", "pw"))
    tokens = iter(["t1", "t2", "t3"])
    first = auth.metadata(lambda _: next(tokens))
    assert first == (("token", "t1"),)
    renewed = auth.renew(first, lambda _: next(tokens))
    assert renewed == (("token", "t2"),)
    # A second caller refused with the old token gets the renewed one, no new login.
    assert auth.renew(first, lambda _: next(tokens)) == renewed
    assert auth.authentications == 2


def test_without_credentials_calls_carry_no_token() -> None:
    auth = EtcdAuth(None)
    assert auth.metadata(lambda _: pytest.fail("no authentication")) is None
