"""Every knob of a coordinator replica, validated in one place.

Timeouts are one frozen dataclass with ``_s`` suffixes (STYLE rule 7) that
refuses combinations which cannot work — a renew deadline that is not shorter
than the lease TTL would let a deposed leader keep writing after its lease
expired — so a bad config fails at start-up with a message naming the field,
never at 3 a.m. during a failover.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from pathlib import Path

from dtr import mutants
from dtr.errors import InvalidArgument
from dtr.etcd_auth import EtcdCredentials, load_etcd_security
from dtr.keys import validate_name
from dtr.logs import LOG_FORMATS
from dtr.security import TlsFiles, load_tls, read_token_table
from dtr.store import parse_endpoints

from .commit_batches import MAX_COMMITS_PER_TXN as MAX_BATCH
from .registrations import MAX_REGISTER_BATCH

ETCD_MIN_TTL_S = 2  # etcd refuses or rounds up anything shorter
#: One etcd read or write unless configured: a slow etcd (fsync stalls, a busy
#: member) answers within about a second, with room to spare here; a dead
#: member fails fast (connection refused) whatever the timeout.
DEFAULT_ETCD_TIMEOUT_S = 1.5
#: How the TLS messages of dtr.security name each file: the config's fields
#: (which the CLI rewrites to flags).
TLS_FIELD_NAMES = {"cert": "tls_cert", "key": "tls_key", "ca": "tls_client_ca"}
#: The same for the files and user the replica reaches etcd with (dtr.etcd_auth).
ETCD_FIELD_NAMES = {
    "ca": "etcd_ca",
    "cert": "etcd_cert",
    "key": "etcd_key",
    "user": "etcd_user",
    "password_file": "etcd_password_file",
}


def _parse_host_port(name: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidArgument(f"{name} must be HOST:PORT; got {value!r}")
    return host, int(port)


def _path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None


def _first(*values: float | None) -> float:
    """The first value that is not None (the last one never is)."""
    return next(v for v in values if v is not None)


def _require(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low < value <= high):
        raise InvalidArgument(f"{name} must be a number in ({low}, {high}]; got {value!r}")


@dataclass(frozen=True)
class CoordinatorConfig:
    """One replica's configuration (``dtr coordinator --help`` documents each field).

    - ``lease_ttl_s``: the election lease; a dead leader is replaced about
      this long after its last renewal.
    - ``renew_deadline_s``: a leader that has not renewed its lease for this
      long stops accepting writes at once, before the lease can expire.
    - ``heartbeat_timeout_s``: a worker silent this long is declared dead.
    - ``etcd_read_timeout_s`` / ``etcd_write_timeout_s``: one etcd read / one
      write (a transaction, a lease grant or revoke). 1.5 s by default, not a
      fast etcd's latency: a slow etcd is not a dead one (DESIGN §4), and a
      write that times out has an unknown outcome the leader must re-read
      and re-plan. ``etcd_keepalive_timeout_s``: one lease keep-alive;
      default ``renew_deadline_s - keepalive_interval_s``, so a keep-alive
      stuck on a dead member is given up (and the next one goes to the next
      endpoint) early enough to renew within the deadline. Keep-alives are
      sent every ``keepalive_interval_s`` whether or not earlier ones have
      answered. ``etcd_timeout_s`` is the deprecated single setting: when
      given, it is the default of the read and write timeouts.
    - ``keep_checkpoints``: how many complete checkpoint steps keep their
      records; older and abandoned steps are deleted by the leader.
    - ``keep_barriers``: how many released barriers stay in etcd for late
      retries; the leader deletes older ones (and failed ones) after every
      quarter of this many releases (coordinator/barrier_retention.py).
    - ``commit_batch_max``: checkpoint commits per etcd transaction, 1-40
      (``coordinator/commit_batches.py``); 1 writes each alone, for comparisons.
    - ``register_batch_max``: worker registrations per etcd transaction, 1-100
      (``coordinator/registrations.py``); 1 writes each alone, for comparisons.
    - ``rendezvous_idle_ttl_s``: a torchrun rendezvous's keys expire this
      long after its last call, so a reused ``--rdzv-id`` starts a fresh round
      (``coordinator/rendezvous.py``).
    - ``tls_cert`` / ``tls_key``: serve TLS with this certificate and key;
      ``tls_client_ca``: also require client certificates signed by this CA
      (mutual TLS). ``token_file``: require bearer tokens (lines ``ROLE
      TOKEN``, docs/security.md). Every file is read and checked here, so a
      bad one stops the replica at start with one line naming it.
    - ``etcd_ca``: reach etcd over TLS, trusting this CA (``https://``
      endpoints alone: the system's CAs); ``etcd_cert`` / ``etcd_key``: a
      client certificate for etcd's ``--client-cert-auth``; ``etcd_user`` /
      ``etcd_password_file``: authenticate as this etcd user (file mode 0600).
    - ``unsafe_disable_fencing``: test-only, a deliberately broken replica
      (no fence on writes, never steps down on its own) that the chaos
      checkers must catch; ``dtr coordinator`` does not list the flag.
    """

    etcd_endpoints: tuple[str, ...]
    listen: str = "127.0.0.1:50051"
    advertise: str | None = None
    job: str = "default"
    replica_id: str | None = None
    lease_ttl_s: int = 3
    renew_deadline_s: float = 2.0
    heartbeat_timeout_s: float = 30.0
    heartbeat_interval_s: float = 1.0
    etcd_timeout_s: float | None = None
    etcd_read_timeout_s: float | None = None
    etcd_write_timeout_s: float | None = None
    etcd_keepalive_timeout_s: float | None = None
    startup_timeout_s: float = 30.0
    shutdown_grace_s: float = 2.0
    keep_checkpoints: int = 3
    keep_barriers: int = 256
    commit_batch_max: int = MAX_BATCH
    register_batch_max: int = MAX_REGISTER_BATCH
    rendezvous_idle_ttl_s: int = 60
    metrics_port: int | None = None
    log_format: str = "text"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    token_file: str | None = None
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    etcd_user: str | None = None
    etcd_password_file: str | None = None
    unsafe_disable_fencing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "etcd_endpoints", tuple(parse_endpoints(self.etcd_endpoints)))
        _parse_host_port("listen", self.listen)
        if self.advertise is not None:
            _, port = _parse_host_port("advertise", self.advertise)
            if port == 0:
                raise InvalidArgument(f"advertise must name a real port; got {self.advertise!r}")
        validate_name("job", self.job)
        if self.replica_id is not None:
            validate_name("replica_id", self.replica_id)
        if isinstance(self.lease_ttl_s, bool) or not isinstance(self.lease_ttl_s, int):
            raise InvalidArgument(f"lease_ttl_s must be a whole number; got {self.lease_ttl_s!r}")
        if not ETCD_MIN_TTL_S <= self.lease_ttl_s <= 3600:
            raise InvalidArgument(
                f"lease_ttl_s must be in [{ETCD_MIN_TTL_S}, 3600] (etcd's minimum TTL is "
                f"{ETCD_MIN_TTL_S} s); got {self.lease_ttl_s}"
            )
        _require("renew_deadline_s", self.renew_deadline_s, 0.0, 3600.0)
        if self.renew_deadline_s >= self.lease_ttl_s:
            raise InvalidArgument(
                f"renew_deadline_s ({self.renew_deadline_s}) must be shorter than lease_ttl_s "
                f"({self.lease_ttl_s}): a leader must stop writing before its lease can expire"
            )
        _require("heartbeat_timeout_s", self.heartbeat_timeout_s, 0.0, 86400.0)
        _require("heartbeat_interval_s", self.heartbeat_interval_s, 0.0, 3600.0)
        if self.heartbeat_interval_s >= self.heartbeat_timeout_s:
            raise InvalidArgument(
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be shorter than "
                f"heartbeat_timeout_s ({self.heartbeat_timeout_s})"
            )
        self._check_etcd_timeouts()
        _require("startup_timeout_s", self.startup_timeout_s, 0.0, 3600.0)
        _require("shutdown_grace_s", self.shutdown_grace_s, -1.0, 600.0)
        if isinstance(self.keep_checkpoints, bool) or not isinstance(self.keep_checkpoints, int):
            raise InvalidArgument(
                f"keep_checkpoints must be an integer; got {self.keep_checkpoints!r}"
            )
        if not 1 <= self.keep_checkpoints <= 1000:
            raise InvalidArgument(
                f"keep_checkpoints must be in [1, 1000]; got {self.keep_checkpoints}"
            )
        batch = self.commit_batch_max
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise InvalidArgument(
                f"commit_batch_max must be an integer in [1, {MAX_BATCH}]; got {batch!r}"
            )
        batch = self.register_batch_max
        if (
            isinstance(batch, bool)
            or not isinstance(batch, int)
            or not 1 <= batch <= MAX_REGISTER_BATCH
        ):
            raise InvalidArgument(
                f"register_batch_max must be an integer in [1, {MAX_REGISTER_BATCH}]; got {batch!r}"
            )
        if isinstance(self.keep_barriers, bool) or not isinstance(self.keep_barriers, int):
            raise InvalidArgument(f"keep_barriers must be an integer; got {self.keep_barriers!r}")
        if not 4 <= self.keep_barriers <= 100_000:
            raise InvalidArgument(f"keep_barriers must be in [4, 100000]; got {self.keep_barriers}")
        ttl = self.rendezvous_idle_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 10 <= ttl <= 86400:
            raise InvalidArgument(
                f"rendezvous_idle_ttl_s must be an integer in [10, 86400]; got {ttl!r}"
            )
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise InvalidArgument(f"metrics_port must be in [1, 65535]; got {self.metrics_port}")
        if self.log_format not in LOG_FORMATS:
            raise InvalidArgument(f"log_format must be 'text' or 'json'; got {self.log_format!r}")
        self._check_security()
        self.etcd_security()

    def _check_etcd_timeouts(self) -> None:
        """Each etcd timeout in range; a keep-alive must be able to renew within the deadline."""
        for name in ("etcd_timeout_s", "etcd_read_timeout_s", "etcd_write_timeout_s"):
            value = getattr(self, name)
            if value is not None:
                _require(name, value, 0.0, 60.0)
        if self.etcd_keepalive_timeout_s is not None:
            _require(
                "etcd_keepalive_timeout_s",
                self.etcd_keepalive_timeout_s,
                0.0,
                self.renew_deadline_s,
            )

    @property
    def read_timeout_s(self) -> float:
        """One etcd read: ``etcd_read_timeout_s``, else ``etcd_timeout_s``, else 1.5 s."""
        return _first(self.etcd_read_timeout_s, self.etcd_timeout_s, DEFAULT_ETCD_TIMEOUT_S)

    @property
    def write_timeout_s(self) -> float:
        """One etcd write: ``etcd_write_timeout_s``, else ``etcd_timeout_s``, else 1.5 s."""
        return _first(self.etcd_write_timeout_s, self.etcd_timeout_s, DEFAULT_ETCD_TIMEOUT_S)

    @property
    def keepalive_timeout_s(self) -> float:
        """One lease keep-alive: what is left of the renew deadline after one interval.

        A keep-alive answered after it was given up would have renewed the
        lease as of its sending; waiting longer than this for one only delays
        the retry on the next endpoint past the deadline.
        """
        if self.etcd_keepalive_timeout_s is not None:
            return self.etcd_keepalive_timeout_s
        if mutants.active(mutants.SHORT_KEEPALIVE):  # MUTANT short-keepalive: the pre-fix 0.2 s
            return mutants.SHORT_KEEPALIVE_TIMEOUT_S
        return self.renew_deadline_s - self.keepalive_interval_s

    def _check_security(self) -> None:
        """Read and check every credential file now (they are read again when serving)."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidArgument("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        tls = self.server_tls()
        if tls is not None:
            load_tls(tls, TLS_FIELD_NAMES)
        if self.token_file is not None:
            read_token_table(self.token_file, "token_file")

    def server_tls(self) -> TlsFiles | None:
        """The TLS files to serve with; None for plaintext (the default, for loopback)."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return TlsFiles(
            ca=_path(self.tls_client_ca), cert=Path(self.tls_cert), key=Path(self.tls_key)
        )

    def etcd_security(self) -> tuple[TlsFiles | None, EtcdCredentials | None]:
        """TLS files and credentials towards etcd, read and checked (None: not used)."""
        return load_etcd_security(
            ca=self.etcd_ca,
            cert=self.etcd_cert,
            key=self.etcd_key,
            user=self.etcd_user,
            password_file=self.etcd_password_file,
            names=ETCD_FIELD_NAMES,
        )

    @property
    def keepalive_interval_s(self) -> float:
        """Renew the lease often enough that two misses still fit in the deadline."""
        return min(self.lease_ttl_s / 3.0, self.renew_deadline_s / 3.0)

    def advertised_address(self, bound_port: int) -> str:
        """What workers should dial: ``advertise``, else the listen host and the bound port."""
        if self.advertise is not None:
            return self.advertise
        host, _ = _parse_host_port("listen", self.listen)
        if host in ("0.0.0.0", "::", "[::]"):
            host = socket.gethostname()
        return f"{host}:{bound_port}"

    def resolved_replica_id(self, bound_port: int) -> str:
        """``replica_id``, else one derived from the host name and port (stable across restarts)."""
        if self.replica_id is not None:
            return self.replica_id
        host = socket.gethostname().split(".")[0] or "replica"
        return validate_name("replica_id", f"{host}-{bound_port}")
