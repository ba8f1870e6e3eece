"""Prometheus metrics of one worker, served only with ``metrics_port`` (or its variable).

Every ``Worker`` owns a ``WorkerMetrics`` with its own registry (never the
process-global default): tests and some launchers run many workers in one
process, and each must export its own numbers. The instruments always
exist and are cheap to update; ``serve()`` exposes them on
``http://127.0.0.1:PORT/metrics`` (``DTR_METRICS_HOST`` picks another
address). Names follow Prometheus conventions: ``dtr_worker_*``, seconds
for time, bytes for sizes.

Gauges that mirror state the worker already keeps (heartbeat age, queue
depth, generation) are computed at scrape time, so the hot paths do not
update them. What must not live here: gRPC or storage code; the modules
that do the work call in.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from dtr.errors import BarrierTimeout, CoordinatorUnavailable, InvalidArgument, MembershipChanged

ENV_METRICS_PORT = "DTR_WORKER_METRICS_PORT"
ENV_METRICS_HOST = "DTR_METRICS_HOST"
_RPC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_WAIT_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_BARRIER_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (MembershipChanged, "membership_changed"),
    (BarrierTimeout, "timeout"),
    (CoordinatorUnavailable, "unavailable"),
)


def _histogram(registry: CollectorRegistry, name: str, doc: str, *labels: str) -> Histogram:
    buckets = _RPC_BUCKETS_S if "rpc" in name or "heartbeat" in name else _WAIT_BUCKETS_S
    return Histogram(name, doc, labels, buckets=buckets, registry=registry)


class WorkerMetrics:
    """One worker's instruments; see the module docstring."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self._server: Any = None
        #: Where ``/metrics`` is served; None while not serving.
        self.url: str | None = None
        self._depth: Callable[[], float] = lambda: 0.0
        self._rpc_children: dict[tuple[str, str], Any] = {}
        self.rpc_seconds = _histogram(
            r,
            "dtr_worker_rpc_seconds",
            "Time of one RPC attempt, by method and code.",
            "method",
            "code",
        )
        self.heartbeat_rtt_seconds = _histogram(
            r, "dtr_worker_heartbeat_rtt_seconds", "From sending a beat to its acknowledgement."
        )
        self.heartbeat_age_seconds = Gauge(
            "dtr_worker_heartbeat_age_seconds",
            "Time since the last acknowledged beat (NaN before the first).",
            registry=r,
        )
        self.barrier_wait_seconds = _histogram(
            r,
            "dtr_worker_barrier_wait_seconds",
            "How long barrier() blocked, by outcome.",
            "outcome",
        )
        self.checkpoint_stall_seconds = _histogram(
            r,
            "dtr_worker_checkpoint_stall_seconds",
            "How long save_async blocked training (the snapshot, waiting for staging memory).",
        )
        self.checkpoint_write_seconds = _histogram(
            r, "dtr_worker_checkpoint_write_seconds", "Time to write one part to storage."
        )
        self.checkpoint_bytes = Counter(
            "dtr_worker_checkpoint_bytes",
            "Bytes of checkpoint parts written to storage.",
            registry=r,
        )
        # prometheus_client appends "_total" to a counter's name on exposition.
        self.checkpoint_save_failures = Counter(
            "dtr_worker_checkpoint_save_failures",
            "Checkpoint saves that failed (write or queueing); each is also logged at ERROR.",
            registry=r,
        )
        self.commit_records_set_aside = Counter(
            "dtr_worker_commit_records_set_aside",
            "Queued commit records set aside because they belong to another job life.",
            registry=r,
        )
        self.commit_queue_depth = Gauge(
            "dtr_worker_commit_queue_depth",
            "Checkpoint commits queued on disk, not yet acknowledged by the leader.",
            registry=r,
        )
        self.step = Gauge("dtr_worker_step", "The step last given to report_progress.", registry=r)
        self.samples_per_second = Gauge(
            "dtr_worker_samples_per_second", "The throughput last reported.", registry=r
        )
        self.generation = Gauge(
            "dtr_worker_generation", "The newest membership generation heard of.", registry=r
        )

    def rpc(self, method: str, code: str) -> Any:
        """The latency histogram of one (method, code), cached: ``labels()`` is slow per call."""
        child = self._rpc_children.get((method, code))
        if child is None:
            child = self._rpc_children[(method, code)] = self.rpc_seconds.labels(method, code)
        return child

    def watch(
        self,
        last_ack_at: Callable[[], float],
        generation: Callable[[], int],
        step: Callable[[], float],
        samples_per_s: Callable[[], float],
    ) -> None:
        """Read the heartbeat age, generation, step and throughput from the worker at scrape time.

        Not set on each change: ``report_progress`` runs every training step,
        and a gauge update there would cost every step a lock for a value
        that is read once per scrape.
        """

        def age_s() -> float:
            at = last_ack_at()
            return time.monotonic() - at if at else math.nan

        self.heartbeat_age_seconds.set_function(_never_raising(age_s))
        self.generation.set_function(_never_raising(generation))
        self.step.set_function(_never_raising(step))
        self.samples_per_second.set_function(_never_raising(samples_per_s))

    def watch_commit_queue(self, depth: Callable[[], int] | None) -> None:
        """Report ``depth()`` as the queue depth at scrape time.

        None (the queue is closing) keeps the last reading: what stays on disk.
        """
        if depth is not None:
            self._depth = _never_raising(depth)
        else:
            last = self._depth()
            self._depth = lambda: last
        self.commit_queue_depth.set_function(self._depth)

    def wrote_part(self, seconds: float, size_bytes: int) -> None:
        """One checkpoint part written to storage."""
        self.checkpoint_write_seconds.observe(seconds)
        self.checkpoint_bytes.inc(size_bytes)

    @contextmanager
    def barrier_wait(self) -> Iterator[None]:
        """Time one ``barrier()`` call, labelled by how it ended."""
        started, outcome = time.perf_counter(), "released"
        try:
            yield
        except BaseException as err:
            outcome = next((o for kind, o in _BARRIER_OUTCOMES if isinstance(err, kind)), "error")
            raise
        finally:
            self.barrier_wait_seconds.labels(outcome).observe(time.perf_counter() - started)

    def serve(self, port: int, host: str | None = None) -> str:
        """Expose ``/metrics`` (a daemon thread of prometheus_client); returns the URL."""
        host = host or os.environ.get(ENV_METRICS_HOST) or "127.0.0.1"
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise InvalidArgument(
                f"metrics_port: cannot serve metrics on {host}:{port}: {err.strerror}"
            ) from None
        self.url = f"http://{host}:{port}/metrics"
        return self.url

    def close(self) -> None:
        """Stop serving (idempotent); the instruments stay usable."""
        server, self._server, self.url = self._server, None, None
        if server is not None:
            server.shutdown()
            server.server_close()


def _never_raising(read: Callable[[], float]) -> Callable[[], float]:
    """A scrape-time reading that is NaN, not a failed scrape, when ``read`` raises."""

    def reading() -> float:
        try:
            return float(read())
        except Exception:
            return math.nan

    return reading


def metrics_port_from(value: int | None) -> int | None:
    """``metrics_port``, else ``$DTR_WORKER_METRICS_PORT``, else None (off); checked."""
    if value is None:
        raw = os.environ.get(ENV_METRICS_PORT, "").strip()
        if not raw:
            return None
        if not raw.isdigit():
            raise InvalidArgument(f"{ENV_METRICS_PORT} must be a port in [1, 65535]; got {raw!r}")
        value = int(raw)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise InvalidArgument(f"metrics_port must be in [1, 65535]; got {value!r}")
    return value
