"""One coordinator replica as a child process, and the means to hurt it.

``CoordinatorProcess`` runs ``python -m dtr coordinator`` in its own session
(a terminal's Ctrl-C reaches only whoever launched it), appends its output to
a log file, and reads its state from the standard gRPC health service it
serves: overall status for "ready", ``dtr.v1.Leader`` for "leads". It only
ever signals its own process, through ``Popen``, which refuses to signal a
process it has already reaped, so a recycled PID is never hit.

Clusters of these (and etcd) are ``dtr.chaos.cluster``'s job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dtr.errors import DtrError, InvalidArgument
from dtr.etcd.member import read_log_lines
from dtr.keys import validate_name
from dtr.proto import LEADER_HEALTH_SERVICE, coordinator_pb2, coordinator_pb2_grpc

LOOPBACK = "127.0.0.1"
PROBE_TIMEOUT_S = 0.5
# Reconnect fast to a replica that was restarted on its old port.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


class ClusterError(DtrError):
    """The local cluster did not reach the state asked for in time, or a replica died."""


def _child_environment() -> dict[str, str]:
    """Our environment without ``DTR_*`` settings (``DTR_DEBUG`` aside).

    They would not override the flags we pass, but would set every flag we do
    not: a ``DTR_METRICS_PORT`` shared by three replicas, say.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_") or k == "DTR_DEBUG"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class CoordinatorProcess:
    """One coordinator replica as a child process, and the means to hurt it."""

    def __init__(
        self,
        replica_id: str,
        port: int,
        options: Sequence[str],
        log_path: Path,
        *,
        advertise: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a replica listening on ``127.0.0.1:port``; ``start()`` runs it.

        ``options`` are the ``dtr coordinator`` flags besides ``--listen``,
        ``--advertise`` and ``--replica-id``; the command line is the same on
        every (re)start. ``advertise`` (``HOST:PORT``) is the address the
        replica publishes instead of its own, for example a ``TcpProxy`` in
        front of it; probes here still dial the replica itself. ``environment``
        is added to the child's (the chaos harness's ``DTR_UNSAFE_MUTANT``),
        on every (re)start.
        """
        self.replica_id = validate_name("replica_id", replica_id)
        self.port = port
        self.advertise = advertise
        self.log_path = log_path
        self._options = list(options)
        self._environment = dict(environment or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: where the replica listens, and what the probes here dial."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def advertised_address(self) -> str:
        """What the replica publishes (leader hints, ``ClusterStatus``) and workers dial."""
        return self.advertise if self.advertise is not None else self.address

    @property
    def argv(self) -> list[str]:
        advertise = ["--advertise", self.advertise] if self.advertise is not None else []
        return [
            *(sys.executable, "-m", "dtr", "coordinator"),
            *("--listen", self.address, *advertise),
            *("--replica-id", self.replica_id, *self._options),
        ]

    @property
    def pid(self) -> int | None:
        """The PID of the latest process, kept after it exits (so callers can check it
        is gone); None before the first start."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The latest process's exit code; None while it runs or before the first start."""
        return self._process.poll() if self._process is not None else None

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Spawn the replica in a new session, its output appended to ``log_path``."""
        if self.is_alive():
            raise InvalidArgument(f"coordinator {self.replica_id} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**_child_environment(), **self._environment},
                start_new_session=True,
            )
        self._paused = False

    def is_alive(self) -> bool:
        """Whether the latest process exists and has not exited (a paused one counts)."""
        return self._process is not None and self._process.poll() is None

    def is_paused(self) -> bool:
        return self._paused and self.is_alive()

    def _signal(self, sig: signal.Signals) -> bool:
        if self._process is None or not self.is_alive():
            return False
        self._process.send_signal(sig)
        return True

    def kill(self) -> None:
        """SIGKILL and reap: a crash, with no lease revoked; gone when this returns."""
        if self._signal(signal.SIGKILL) and self._process is not None:
            self._process.wait(timeout=30)
        self._paused = False

    def terminate(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (a leader revokes its lease), then SIGKILL after ``timeout_s``."""
        self.request_stop()
        self.wait_stopped(timeout_s)

    def request_stop(self) -> None:
        """SIGTERM without waiting; a paused replica is continued so it can act on it."""
        if self._signal(signal.SIGTERM) and self._paused:
            self._signal(signal.SIGCONT)
        self._paused = False

    def wait_stopped(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the process to exit, then SIGKILL it."""
        if self._process is None:
            return
        try:
            self._process.wait(timeout=max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            self.kill()

    def pause(self) -> None:
        """SIGSTOP: alive to the kernel, silent to etcd and clients (a GC pause, a VM stall)."""
        if not self._signal(signal.SIGSTOP):
            raise ClusterError(f"coordinator {self.replica_id} is not running")
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused replica."""
        if not self._signal(signal.SIGCONT):
            raise ClusterError(f"coordinator {self.replica_id} is not running")
        self._paused = False

    def restart(self, timeout_s: float = 10.0) -> None:
        """Start again on the same port and id; a running replica is terminated first."""
        if self.is_alive():
            self.terminate(timeout_s)
        self.start()

    # --- what it says ---------------------------------------------------------

    def log_tail(self, n: int = 20) -> str:
        """The last ``n`` non-blank lines of the replica's log (all its runs appended)."""
        return "\n".join(read_log_lines(self.log_path, n))

    def _get_channel(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                self._channel = grpc.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
            return self._channel

    def health(self, service: str = "", timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
        """The health status name (``"SERVING"``, ``"NOT_SERVING"``…), None if no answer."""
        if not self.is_alive():
            return None
        stub = health_pb2_grpc.HealthStub(self._get_channel())
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def is_serving(self) -> bool:
        """Whether the replica reports itself healthy (overall status SERVING) now."""
        return self.health() == "SERVING"

    def is_leader(self) -> bool:
        """Whether the replica reports ``dtr.v1.Leader`` SERVING now."""
        return self.health(LEADER_HEALTH_SERVICE) == "SERVING"

    def cluster_status(self, timeout_s: float = 5.0) -> coordinator_pb2.ClusterStatusResponse:
        """This replica's ``ClusterStatus`` answer; ClusterError when it gives none."""
        stub = coordinator_pb2_grpc.CoordinatorStub(self._get_channel())
        request = coordinator_pb2.ClusterStatusRequest(
            header=coordinator_pb2.RequestHeader(caller_id="dtr-chaos")
        )
        try:
            reply: coordinator_pb2.ClusterStatusResponse = stub.ClusterStatus(
                request, timeout=timeout_s
            )
        except grpc.RpcError as err:
            raise ClusterError(
                f"coordinator {self.replica_id}: ClusterStatus failed: {err}"
            ) from None
        return reply

    def describe(self) -> str:
        """One phrase for error messages: the replica, its state, its last log line."""
        if self._process is None:
            return f"{self.replica_id} ({self.address}): never started"
        if self.is_alive():
            state = "paused" if self._paused else "running"
            return f"{self.replica_id} ({self.address}): {state}, pid {self.pid}"
        last = read_log_lines(self.log_path, 1)
        why = f": {last[0][:300]}" if last else ""
        return f"{self.replica_id} ({self.address}): exited with code {self.returncode}{why}"

    def close(self) -> None:
        """Close the probe channel (the process is untouched)."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def __repr__(self) -> str:
        return f"CoordinatorProcess({self.replica_id!r}, {self.address!r}, pid={self.pid})"
