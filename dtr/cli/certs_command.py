"""``dtr certs``: a development CA with a server and a client certificate, for TLS and mTLS.

Enough to turn TLS on in a test cluster in one command (docs/security.md):

    dtr certs --out certs --hosts 127.0.0.1,localhost,coordinator

writes ``ca.pem`` / ``ca-key.pem`` (the CA, kept so more certificates can be
signed by hand), ``server.pem`` / ``server-key.pem`` (SANs from ``--hosts``:
every address workers dial, leader hints included) and ``client.pem`` /
``client-key.pem`` (for ``--tls-client-ca``). Keys are EC P-256, written with
mode 0600 from the start (never readable by others, not even for a moment).
Existing files are not overwritten unless ``--force``.

Not for production: a real deployment's certificates come from its own CA
(cert-manager, Vault...). ``cryptography`` is imported inside the functions.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dtr.errors import InvalidArgument

from .options import ENV_NOTE, Commands, EnvOption, Parser, add_debug, add_options, positive_int

FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
CLIENT_COMMON_NAME = "dtr-client"

_CERTS_OPTIONS = (
    EnvOption("--out", "DTR_CERTS_OUT", None, str, "DIR", "where to write", required=True),
    EnvOption(
        "--hosts",
        "DTR_CERTS_HOSTS",
        "127.0.0.1,localhost",
        str,
        "HOST[,HOST...]",
        "names and IP addresses the server certificate is valid for",
    ),
    EnvOption("--days", "DTR_CERTS_DAYS", 365, positive_int, "N", "validity of every certificate"),
)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as ``cryptography`` objects."""

    cert: Any
    key: Any


def add_certs_command(commands: Commands[Parser]) -> None:
    parser = commands.add_parser(
        "certs",
        help="make a development CA and server/client certificates for TLS",
        description="Write a development CA, a server certificate for --hosts and a client "
        "certificate (for mutual TLS) into --out. Not for production.",
        epilog=ENV_NOTE,
    )
    add_debug(parser, default=argparse.SUPPRESS)
    add_options(parser, _CERTS_OPTIONS)
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.set_defaults(run=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    """Check everything, then write the six files and say where they are."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise InvalidArgument("needs the 'cryptography' package: pip install it") from None
    hosts = parse_hosts(args.hosts)
    out = Path(args.out)
    if not args.force:
        existing = [name for name in FILES if (out / name).exists()]
        if existing:
            raise InvalidArgument(f"--out: {out} already holds {existing[0]} (use --force)")
    ca = make_ca(days=args.days)
    server = issue(ca, "dtr-coordinator", hosts=hosts, client=False, days=args.days)
    client = issue(ca, CLIENT_COMMON_NAME, hosts=(), client=True, days=args.days)
    out.mkdir(parents=True, exist_ok=True)
    for stem, issued in (("ca", ca), ("server", server), ("client", client)):
        write_pem(out / f"{stem}.pem", cert_pem(issued.cert), private=False)
        write_pem(out / f"{stem}-key.pem", key_pem(issued.key), private=True)
    print(f"wrote {', '.join(FILES)} to {out} (server valid for {', '.join(hosts)})")
    return 0


def parse_hosts(text: str) -> tuple[str, ...]:
    """``"a,b"`` → ``("a", "b")``; each a DNS name or an IP address."""
    hosts = tuple(dict.fromkeys(h.strip() for h in text.split(",") if h.strip()))
    if not hosts:
        raise InvalidArgument("--hosts: give at least one host name or IP address")
    for host in hosts:
        if any(c.isspace() or c in "/:@" for c in host) and not _is_ip(host):
            raise InvalidArgument(f"--hosts: not a host name or IP address: {host!r}")
    return hosts


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(days: int, common_name: str = "dtr development CA") -> Issued:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _new_key()
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return Issued(builder.sign(key, hashes.SHA256()), key)


def _key_usage(*, ca: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def issue(
    ca: Issued,
    common_name: str,
    *,
    hosts: Sequence[str],
    client: bool,
    days: int = 365,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """A certificate signed by ``ca``: a server's (SANs ``hosts``) or a client's.

    ``not_before`` / ``not_after`` override the validity (tests make expired ones).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _new_key()
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts:
        names = [
            x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = cert.public_bytes(serialization.Encoding.PEM)
    return data


def key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


def write_pem(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data``; a private file is created 0600 (and re-chmodded if it existed)."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)
        file.write(data)
