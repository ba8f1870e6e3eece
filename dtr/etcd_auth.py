"""Who we are towards etcd: TLS files, and a user and password traded for an auth token.

etcd's v3 authentication works by token: ``Auth.Authenticate(user, password)``
answers a token that every later call carries in the gRPC metadata ``token``.
Tokens do not last: a simple token (etcd's default) dies after
``--auth-token-ttl`` seconds (300) without use and with the restart of the
member that holds it; a JWT at its expiry. So ``EtcdAuth`` keeps the current
token, and when etcd answers "invalid auth token" the store re-authenticates
once and retries (``is_stale_token``). That retry cannot apply a write twice:
etcd checks the token before it proposes the request to raft.

Only ``dtr.store`` and ``dtr.watch`` use this module; it makes no call itself
(the store passes in how to authenticate, on which channel). The password
lives in ``EtcdCredentials`` alone, whose repr hides it; no message here
contains it, and etcd's answers never echo it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from dtr.errors import InvalidArgument
from dtr.security import TlsFiles, _check_private, load_tls, read_file

TOKEN_METADATA_KEY = "token"
#: gRPC metadata of one etcd call: the token, or None without authentication.
Metadata = tuple[tuple[str, str], ...]
#: What etcd answers for a token it no longer knows (expired, or its member
#: restarted), for an auth store changed since the token was issued, and for
#: a call without a token once authentication was turned on.
_STALE_TOKEN = ("invalid auth token", "auth store is old", "user name is empty")
#: What etcd answers for credentials it refuses, and what to do about it.
_REFUSALS = (
    ("authentication failed", "wrong etcd user name or password"),
    ("user name is empty", "etcd requires authentication: give an etcd user and password file"),
    ("invalid auth token", "etcd no longer accepts our auth token"),
    ("permission denied", "the etcd user lacks permission (grant it a role, e.g. root)"),
    ("user name not found", "no such etcd user"),
)
#: etcd answers a watch it refuses for its token with this cancel reason.
_WATCH_REFUSED = "permission denied"
#: How the messages name each input; a caller passes its own (fields, flags).
DEFAULT_NAMES = {
    "ca": "etcd ca",
    "cert": "etcd cert",
    "key": "etcd key",
    "user": "etcd user",
    "password_file": "etcd password file",
}


@dataclass(frozen=True, repr=False)
class EtcdCredentials:
    """An etcd user and its password; the repr shows the user only."""

    user: str
    password: str

    def __post_init__(self) -> None:
        if not self.user or not self.user.isprintable() or self.user != self.user.strip():
            raise InvalidArgument("etcd user must be a non-empty name without surrounding spaces")
        if not self.password:
            raise InvalidArgument("etcd password must not be empty")

    def __repr__(self) -> str:
        return f"EtcdCredentials(user={self.user!r}, password=<hidden>)"


def read_password_file(path: str | Path, name: str = DEFAULT_NAMES["password_file"]) -> str:
    """The password in ``path``: the whole file but its final newline; the file must be 0600."""
    file = Path(path)
    _check_private(name, file)
    try:
        text = read_file(name, file).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{name}: {path} is not UTF-8 text") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if "\n" in password or "\r" in password:
        raise InvalidArgument(f"{name}: {path} must hold the password alone on one line")
    return password


def load_etcd_security(
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[TlsFiles | None, EtcdCredentials | None]:
    """Check and load what a client needs to reach etcd, each bad input one line naming it.

    TLS files are None when neither ``ca`` nor ``cert`` is given (``https://``
    endpoints then use the system's CAs); credentials None without ``user``.
    """
    label = {**DEFAULT_NAMES, **(names or {})}
    if (cert is None) != (key is None):
        raise InvalidArgument(f"{label['cert']} and {label['key']} must be given together")
    if (user is None) != (password_file is None):
        raise InvalidArgument(
            f"{label['user']} and {label['password_file']} must be given together"
        )
    tls = None
    if ca is not None or cert is not None:
        tls = TlsFiles(ca=_path(ca), cert=_path(cert), key=_path(key))
        load_tls(tls, {k: label[k] for k in ("ca", "cert", "key")})
    credentials = None
    if user is not None and password_file is not None:
        password = read_password_file(password_file, label["password_file"])
        try:
            credentials = EtcdCredentials(user, password)
        except InvalidArgument as err:
            raise InvalidArgument(f"{label['user']}: {err}") from None
    return tls, credentials


def _path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None


# --- etcd's answers ------------------------------------------------------------------


def is_stale_token(err: grpc.RpcError) -> bool:
    """Whether etcd refused a call for its token alone (re-authenticating fixes it)."""
    details = err.details() if callable(getattr(err, "details", None)) else ""
    return any(text in (details or "") for text in _STALE_TOKEN)


def is_refused_watch(cancel_reason: str) -> bool:
    """Whether etcd canceled a watch for its token or permissions (it does not say which)."""
    return _WATCH_REFUSED in cancel_reason or any(t in cancel_reason for t in _STALE_TOKEN)


def refusal_hint(code: grpc.StatusCode | None, details: str) -> str | None:
    """What to do about an answer that refuses our identity; None if it does not."""
    for text, hint in _REFUSALS:
        if text in details:
            return hint
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return "etcd refused our credentials"
    return None


# --- the token ---------------------------------------------------------------------


class EtcdAuth:
    """The credentials and the current token of one store; thread-safe.

    ``authenticate`` (given by the store for each use) makes the
    ``Authenticate`` call and returns the token; "" means etcd has
    authentication turned off, and calls then carry no token.
    """

    def __init__(self, credentials: EtcdCredentials | None) -> None:
        self.credentials = credentials
        self.authentications = 0
        self._token: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EtcdAuth({self.credentials!r}, authentications={self.authentications})"

    def metadata(self, authenticate: Callable[[EtcdCredentials], str]) -> Metadata | None:
        """The metadata for a call: the current token, authenticating first if there is none."""
        if self.credentials is None:
            return None
        with self._lock:
            if self._token is None:
                self._token = authenticate(self.credentials)
                self.authentications += 1
            return _metadata(self._token)

    def renew(
        self, refused: Metadata | None, authenticate: Callable[[EtcdCredentials], str]
    ) -> Metadata | None:
        """A new token after etcd refused ``refused``, unless another call renewed it already."""
        if self.credentials is None:
            return None
        with self._lock:
            if self._token is None or _metadata(self._token) == refused:
                self._token = None  # a failed attempt leaves no stale token behind
                self._token = authenticate(self.credentials)
                self.authentications += 1
            return _metadata(self._token)


def _metadata(token: str) -> Metadata | None:
    return ((TOKEN_METADATA_KEY, token),) if token else None
