"""Credentials for the coordinators' gRPC port: TLS files and bearer tokens, checked early.

The coordinator, the worker library and the CLI all load their credentials
here, so every side refuses the same bad input the same way: at start, with
one ``InvalidArgument`` line that names the file (a missing certificate, a key
that does not belong to its certificate, a token file others can read, an
empty token file) — never a TLS handshake that fails later, on every call.

What must not happen here: a secret in a message, a log line or a repr. Token
values live only in ``TokenTable`` and ``BearerToken``, whose reprs hide them;
error messages name files and line numbers, never contents.

``cryptography`` is imported only to compare a key with its certificate, so
``import dtr.security`` stays cheap; grpc is needed for the credential objects.
"""

from __future__ import annotations

import hmac
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from dtr.errors import InvalidArgument

#: The roles a token file grants. ``admin`` may call everything, ``worker``
#: everything but the admin RPCs (``dtr.coordinator.auth.ADMIN_METHODS``).
ROLES = ("worker", "admin")
AUTHORIZATION_METADATA_KEY = "authorization"
BEARER_PREFIX = "Bearer "
#: Shorter tokens are refused: guessable, and a typo'd path is often short.
MIN_TOKEN_CHARS = 16
ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY = "DTR_TLS_CA", "DTR_TLS_CERT", "DTR_TLS_KEY"
ENV_TOKEN_FILE = "DTR_TOKEN_FILE"


def read_file(name: str, path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``path``; a missing, unreadable or empty file is one line naming ``name``."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InvalidArgument(f"{name}: cannot read {path}: {err.strerror or err}") from None
    if not data.strip():
        raise InvalidArgument(f"{name}: {path} is empty")
    return data


def _check_private(name: str, path: Path) -> None:
    """Refuse a secret file that group or others may read or write, as ssh does."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise InvalidArgument(f"{name}: cannot read {path}: {err.strerror or err}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidArgument(
            f"{name}: {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`"
        )


# --- TLS ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for one side of a TLS connection (paths only: safe to print).

    Server: ``cert`` and ``key`` are its own (required); ``ca``, when set,
    verifies client certificates, which are then required (mutual TLS).
    Client: ``ca`` verifies the server (None: the system's roots); ``cert``
    and ``key``, together, are its client certificate for mutual TLS.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if (self.cert is None) != (self.key is None):
            raise InvalidArgument("tls: give a certificate and its key together, or neither")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> TlsFiles | None:
        """``DTR_TLS_CA`` / ``DTR_TLS_CERT`` / ``DTR_TLS_KEY``; None when none is set."""
        ca, cert, key = (environ.get(v) or None for v in (ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY))
        if ca is None and cert is None and key is None:
            return None
        if (cert is None) != (key is None):
            raise InvalidArgument(f"set {ENV_TLS_CERT} and {ENV_TLS_KEY} together, or neither")
        return cls(ca=_path(ca), cert=_path(cert), key=_path(key))


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


@dataclass(frozen=True)
class _Pem:
    """Loaded and checked PEM bytes (not kept beyond building credentials)."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None


def load_tls(files: TlsFiles, names: Mapping[str, str] | None = None) -> _Pem:
    """Read every file and check that the key belongs to the certificate.

    ``names`` maps ``ca``/``cert``/``key`` to what the user typed (a flag, a
    field or a variable) so the message names it as well as the file.
    """
    label = {"ca": "tls ca", "cert": "tls cert", "key": "tls key", **(names or {})}
    ca = read_file(label["ca"], files.ca) if files.ca is not None else None
    cert = read_file(label["cert"], files.cert) if files.cert is not None else None
    key = None
    if files.key is not None and files.cert is not None and cert is not None:
        _check_private(label["key"], files.key)
        key = read_file(label["key"], files.key)
        leaf = _certificates(cert, f"{label['cert']}: {files.cert}")[0]
        check_key_pair(leaf, key, f"{label['key']}: {files.key}", str(files.cert))
        _check_current(leaf, f"{label['cert']}: {files.cert}")
    if ca is not None and files.ca is not None:
        _certificates(ca, f"{label['ca']}: {files.ca}")
    return _Pem(ca=ca, cert=cert, key=key)


def _certificates(pem: bytes, where: str) -> list[Any]:
    """The certificates in ``pem``; InvalidArgument starting with ``where`` if it holds none."""
    x509 = _cryptography_x509()
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise InvalidArgument(f"{where} is not a PEM certificate")
    return list(certs)


def check_key_pair(leaf: Any, key_pem: bytes, where: str, cert_path: str) -> None:
    """Refuse a key that is not the certificate's: a handshake would fail on every call.

    ``leaf`` is a ``cryptography`` certificate; the public keys are compared
    in their DER form, which works for RSA, EC and Ed25519 alike.
    """
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{where} is not an unencrypted PEM private key") from None
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*der) != leaf.public_key().public_bytes(*der):
        raise InvalidArgument(f"{where} does not match the certificate in {cert_path}")


def _check_current(leaf: Any, where: str) -> None:
    """Refuse our own certificate outside its validity: every peer would reject it."""
    now = datetime.now(UTC)
    if leaf.not_valid_after_utc <= now:
        raise InvalidArgument(f"{where} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise InvalidArgument(
            f"{where} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


def _cryptography_x509() -> Any:
    try:
        from cryptography import x509
    except ImportError:
        raise InvalidArgument(
            "TLS needs the 'cryptography' package: pip install 'cryptography>=42'"
        ) from None
    return x509


def server_credentials(files: TlsFiles, names: Mapping[str, str] | None = None) -> Any:
    """``grpc.ServerCredentials``; a client CA turns on required client certificates (mTLS)."""
    if files.cert is None:
        raise InvalidArgument("tls: a server needs a certificate and its key")
    pem = load_tls(files, names)
    assert pem.cert is not None and pem.key is not None
    return grpc.ssl_server_credentials(
        [(pem.key, pem.cert)],
        root_certificates=pem.ca,
        require_client_auth=pem.ca is not None,
    )


def channel_credentials(files: TlsFiles, names: Mapping[str, str] | None = None) -> Any:
    """``grpc.ChannelCredentials`` for a client: the CA to trust, the client certificate."""
    pem = load_tls(files, names)
    return grpc.ssl_channel_credentials(
        root_certificates=pem.ca, private_key=pem.key, certificate_chain=pem.cert
    )


# --- bearer tokens -----------------------------------------------------------------


def _check_token(name: str, token: str) -> str:
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise InvalidArgument(
            f"{name}: a token must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
            "without spaces (e.g. `openssl rand -hex 32`)"
        )
    if any(c.isspace() for c in token):
        raise InvalidArgument(f"{name}: a token must not contain spaces")
    return token


def read_token_file(path: str | os.PathLike[str], name: str = ENV_TOKEN_FILE) -> str:
    """A client's token: the file's only non-blank line; the file must be private (0600)."""
    file = Path(path)
    _check_private(name, file)
    lines = [ln.strip() for ln in read_file(name, file).decode("utf-8", "replace").splitlines()]
    tokens = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(tokens) != 1:
        raise InvalidArgument(f"{name}: {path} must hold exactly one token line")
    return _check_token(f"{name} {path}", tokens[0])


@dataclass(frozen=True, repr=False)
class TokenTable:
    """The tokens a coordinator accepts and the role each grants; the repr hides them."""

    entries: tuple[tuple[str, bytes], ...]

    def role_of(self, presented: str) -> str | None:
        """The role of ``presented``, comparing in constant time against every token."""
        candidate = presented.encode()
        role = None
        for entry_role, token in self.entries:  # no early exit: timing does not tell which
            if hmac.compare_digest(candidate, token) and role is None:
                role = entry_role
        return role

    def __repr__(self) -> str:
        counts = {r: sum(1 for e, _ in self.entries if e == r) for r in ROLES}
        return "TokenTable(" + ", ".join(f"{r}={n} token(s)" for r, n in counts.items()) + ")"


def read_token_table(path: str | os.PathLike[str], name: str = "token file") -> TokenTable:
    """A coordinator's tokens: lines ``ROLE TOKEN`` (``#`` comments, blank lines skipped).

    Several tokens per role are allowed, so a token can be rotated without a
    moment when no token works. The file must be private (0600) and non-empty.
    """
    file = Path(path)
    _check_private(name, file)
    text = read_file(name, file).decode("utf-8", "replace")
    entries: list[tuple[str, bytes]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2 or fields[0] not in ROLES:
            raise InvalidArgument(
                f"{name}: {path} line {number}: expected 'ROLE TOKEN' with ROLE one of "
                f"{', '.join(ROLES)}"
            )
        token = _check_token(f"{name} {path} line {number}", fields[1]).encode()
        if any(hmac.compare_digest(token, known) for _, known in entries):
            raise InvalidArgument(f"{name}: {path} line {number}: a token is listed twice")
        entries.append((fields[0], token))
    if not entries:
        raise InvalidArgument(f"{name}: {path} holds no 'ROLE TOKEN' line")
    return TokenTable(tuple(entries))


def bearer_token_of(metadata: Any) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry in ``metadata``, else None."""
    for key, value in metadata or ():
        if key == AUTHORIZATION_METADATA_KEY and isinstance(value, str):
            if value.startswith(BEARER_PREFIX):
                return value[len(BEARER_PREFIX) :].strip() or None
            return None
    return None


# --- the client side ---------------------------------------------------------------


class _CallDetails(grpc.ClientCallDetails):
    """``client_call_details`` with other metadata (grpc's own type is read-only)."""

    def __init__(
        self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel, streams included.

    One interceptor rather than ``metadata=`` on each call site: a call that
    forgot it would fail only in clusters with tokens turned on.
    """

    def __init__(self, token: str) -> None:
        self._entry: tuple[str, str | bytes] = (AUTHORIZATION_METADATA_KEY, BEARER_PREFIX + token)

    def __repr__(self) -> str:
        return "BearerInterceptor(token=<hidden>)"

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        kept = tuple((k, v) for k, v in (details.metadata or ()) if k != self._entry[0])
        return _CallDetails(details, (*kept, self._entry))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


@dataclass(frozen=True, repr=False)
class ClientSecurity:
    """What a client dials with: TLS credentials (None: plaintext) and a bearer token.

    Loaded once (files read and checked), then used for every channel.
    """

    credentials: Any = None
    token: str | None = None

    def __repr__(self) -> str:
        tls = "tls" if self.credentials is not None else "plaintext"
        return f"ClientSecurity({tls}, token={'<hidden>' if self.token else None})"

    def channel(self, address: str, options: Any = ()) -> grpc.Channel:
        """A channel to ``address`` that carries these credentials on every call."""
        if self.credentials is not None:
            channel = grpc.secure_channel(address, self.credentials, options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        if self.token is None:
            return channel
        return grpc.intercept_channel(channel, BearerInterceptor(self.token))


def client_security(tls: TlsFiles | None = None, token: str | None = None) -> ClientSecurity:
    """Check and load the client's credentials now, so a bad file fails before any call."""
    credentials = channel_credentials(tls) if tls is not None else None
    if token is not None:
        _check_token("token", token)
    return ClientSecurity(credentials=credentials, token=token)
