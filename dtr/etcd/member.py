"""One local etcd process: its flags, its files, its signals and its health.

An ``EtcdMember`` owns at most one ``subprocess.Popen`` at a time and only
ever signals that process (through ``Popen``, which refuses to signal a PID it
has already reaped, so a recycled PID is never hit). Its directory holds
etcd's data in ``data/`` and etcd's stdout and stderr in ``etcd.log``, kept
beside the data so etcd does not warn about a foreign file in its data dir.

Cluster-level concerns (ports, retries, the initial cluster string) live in
``dtr.etcd.cluster``.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dtr.errors import EtcdError, InvalidArgument

from .discovery import child_environment
from .ports import LOOPBACK, connect_host, url_host

if TYPE_CHECKING:
    from dtr.security import TlsFiles

_TAIL_LINES = 20
_TAIL_BYTES = 32_768
_LINE_CHARS = 400
_ACTIVE_PEERS = "etcd_network_active_peers{"


@dataclass(frozen=True)
class EtcdTimings:
    """Raft timings for local members: short, so tests see elections quickly.

    etcd itself refuses an election timeout under five heartbeats; we refuse
    it earlier, with a message that names the field.
    """

    heartbeat_interval_ms: int = 50
    election_timeout_ms: int = 500

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ms <= 0:
            raise InvalidArgument("heartbeat_interval_ms must be positive")
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms:
            raise InvalidArgument(
                "election_timeout_ms must be at least 5 x heartbeat_interval_ms "
                f"(got {self.election_timeout_ms} and {self.heartbeat_interval_ms})"
            )


@dataclass(frozen=True)
class EtcdTls:
    """TLS on a member's client port (peers stay plaintext on loopback).

    ``server``: etcd's certificate and key; with ``server.ca`` etcd also
    requires client certificates signed by it (``--client-cert-auth``).
    ``client``: what the ``/health`` and ``/metrics`` probes here trust
    (``ca``) and present (``cert``, ``key``).
    """

    server: TlsFiles
    client: TlsFiles

    def argv(self) -> list[str]:
        """etcd's TLS flags for the client port."""
        if self.server.cert is None or self.server.key is None:
            raise InvalidArgument("EtcdTls.server needs a certificate and its key")
        flags = [f"--cert-file={self.server.cert}", f"--key-file={self.server.key}"]
        if self.server.ca is not None:
            flags += [f"--trusted-ca-file={self.server.ca}", "--client-cert-auth"]
        return flags

    def ssl_context(self) -> ssl.SSLContext:
        """The probes' TLS context."""
        context = ssl.create_default_context(
            cafile=str(self.client.ca) if self.client.ca is not None else None
        )
        if self.client.cert is not None and self.client.key is not None:
            context.load_cert_chain(self.client.cert, self.client.key)
        return context


@dataclass
class EtcdMember:
    """A member's fixed identity (name, ports, directory) and its current process."""

    name: str
    client_port: int
    peer_port: int
    member_dir: Path
    host: str = LOOPBACK  # where the client port listens; peers always use loopback
    tls: EtcdTls | None = None  # TLS on the client port
    extra_args: tuple[str, ...] = ()  # more etcd flags, last on the command line
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def data_dir(self) -> Path:
        """etcd's ``--data-dir``."""
        return self.member_dir / "data"

    @property
    def log_path(self) -> Path:
        """etcd's stdout and stderr, appended to across restarts."""
        return self.member_dir / "etcd.log"

    @property
    def pid(self) -> int | None:
        """The PID of the running process, None when stopped."""
        return self.process.pid if self.process is not None and self.is_running() else None

    @property
    def endpoint(self) -> str:
        """``HOST:PORT`` a local client dials."""
        return f"{url_host(connect_host(self.host))}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    @property
    def scheme(self) -> str:
        """``https`` with TLS on the client port, else ``http``."""
        return "https" if self.tls is not None else "http"

    def _ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.ssl_context() if self.tls is not None else None

    @property
    def peer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.peer_port}"

    def is_running(self) -> bool:
        """Whether our process exists and has not exited (a paused one counts)."""
        return self.process is not None and self.process.poll() is None

    def argv(
        self, binary: str, initial_cluster: str, token: str, timings: EtcdTimings
    ) -> list[str]:
        """The full command line; the same on every (re)start of this member."""
        listen = f"{self.scheme}://{url_host(self.host)}:{self.client_port}"
        return [
            binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={listen}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={token}",
            "--initial-cluster-state=new",
            f"--heartbeat-interval={timings.heartbeat_interval_ms}",
            f"--election-timeout={timings.election_timeout_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
            *(self.tls.argv() if self.tls is not None else ()),
            *self.extra_args,
        ]

    def spawn(self, argv: list[str]) -> None:
        """Start the process, its output appended to ``log_path``.

        A new session keeps a terminal's Ctrl-C away from etcd: whoever started
        it stops it, gracefully, in order.
        """
        if self.is_running():
            raise InvalidArgument(f"etcd member {self.name} is already running")
        try:
            self.member_dir.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_environment(),
                    start_new_session=True,
                )
        except OSError as err:
            raise EtcdError(f"cannot start etcd member {self.name}: {err}") from err

    def send_signal(self, sig: signal.Signals) -> bool:
        """Signal our process if it still runs; False when there was none."""
        if not self.is_running():
            return False
        assert self.process is not None
        self.process.send_signal(sig)
        return True

    def wait_exit(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for our process to exit; True when it has."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL and reap: the process is gone when this returns."""
        if self.send_signal(signal.SIGKILL):
            self.wait_exit(30.0)

    def stop(self, timeout_s: float) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL.

        A paused (SIGSTOPped) member cannot act on SIGTERM, so it is killed
        when the timeout runs out; that is what fault tests rely on.
        """
        if self.send_signal(signal.SIGTERM) and not self.wait_exit(timeout_s):
            self.kill()

    def is_healthy(self, timeout_s: float = 1.0) -> bool:
        """Whether ``GET /health`` answers ``{"health": "true"}`` now."""
        if not self.is_running():
            return False
        return probe_health(self.client_url, timeout_s, self._ssl_context())

    def _metrics(self, timeout_s: float) -> list[str] | None:
        """The lines of ``GET /metrics``; None if the member does not answer."""
        if not self.is_running():
            return None
        try:
            url = f"{self.client_url}/metrics"
            with urllib.request.urlopen(
                url, timeout=timeout_s, context=self._ssl_context()
            ) as reply:
                text: str = reply.read().decode("utf-8", "replace")
                return text.splitlines()
        except OSError:
            return None

    def active_peers(self, timeout_s: float = 0.5) -> int | None:
        """How many peers this member currently considers connected; None if unknown.

        Read from ``etcd_network_active_peers`` on ``/metrics``: the same
        status etcd consults when it picks a peer to hand leadership to.
        """
        lines = self._metrics(timeout_s)
        if lines is None:
            return None
        gauges = [line for line in lines if line.startswith(_ACTIVE_PEERS)]
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in gauges)

    def is_raft_leader(self, timeout_s: float = 0.5) -> bool:
        """Whether this member is the raft leader now (``etcd_server_is_leader`` on /metrics)."""
        lines = self._metrics(timeout_s) or []
        return any(line.strip() == "etcd_server_is_leader 1" for line in lines)

    def startup_error(self, what: str) -> EtcdError:
        """An error for a member that did not come up, carrying its log tail.

        The first line is the whole story (for a CLI's one-line report); the
        tail follows for whoever reads a test failure.
        """
        lines = read_log_lines(self.log_path)
        summary = summarize_log(lines) or "no log output"
        tail = "\n".join(line[:_LINE_CHARS] for line in lines)
        return EtcdError(
            f"etcd member {self.name} {what}: {summary} (log: {self.log_path})\n"
            f"last log lines:\n{tail}"
        )


def probe_health(
    client_url: str, timeout_s: float = 1.0, context: ssl.SSLContext | None = None
) -> bool:
    """One ``/health`` probe (``context``: for https); an error or a non-"true" is unhealthy."""
    try:
        url = f"{client_url}/health"
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            body = json.loads(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):  # URLError, HTTPError (503), timeouts, bad JSON
        return False
    return isinstance(body, dict) and body.get("health") == "true"


def wait_until(predicate: Callable[[], bool], deadline: float, poll_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (True) or ``deadline`` passes (False)."""
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))


def read_log_lines(path: Path, lines: int = _TAIL_LINES) -> list[str]:
    """The last ``lines`` non-blank lines of a log, uncut (JSON stays parseable)."""
    try:
        with path.open("rb") as log:
            log.seek(0, 2)
            log.seek(max(log.tell() - _TAIL_BYTES, 0))
            text = log.read().decode("utf-8", "replace")
    except OSError as err:
        return [f"(cannot read {path}: {err.strerror})"]
    return [line for line in text.splitlines() if line.strip()][-lines:]


def summarize_log(lines: list[str]) -> str:
    """One line saying why etcd failed: the last fatal, else error, else last line.

    etcd's zap logger writes JSON lines whose ``msg`` and ``error`` fields say
    it all; the stack trace inside the same line is noise for a one-line report.
    """
    best: dict[str, str] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("fatal", "panic", "error"):
            rank = "error" if entry["level"] == "error" else "fatal"
            text = str(entry.get("msg", ""))
            best[rank] = f"{text}: {entry['error']}" if entry.get("error") else text
    fallback = lines[-1][:_LINE_CHARS] if lines else ""
    return (best.get("fatal") or best.get("error") or fallback).replace("\n", " ")
