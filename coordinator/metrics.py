"""Prometheus metrics of a coordinator replica (off unless ``--metrics-port`` is given).

One registry per replica (not the process-global default), so tests and
benchmarks can run several replicas in one process without collisions.
Names follow Prometheus conventions: ``dtr_coordinator_*``, seconds for time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from dtr import tracing

# Heartbeats answer in well under a millisecond; barriers wait seconds.
_RPC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_ETCD_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class CoordinatorMetrics:
    """The replica's instruments; cheap to update on the hot path."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._rpc_children: dict[tuple[str, str], Any] = {}
        self.rpc_seconds = Histogram(
            "dtr_coordinator_rpc_seconds",
            "Time to answer a call, by method and status code.",
            ("method", "code"),
            buckets=_RPC_BUCKETS_S,
            registry=self.registry,
        )
        self.etcd_txn_seconds = Histogram(
            "dtr_coordinator_etcd_txn_seconds",
            "Time of the leader's etcd transactions (writes and view reads).",
            ("kind",),
            buckets=_ETCD_BUCKETS_S,
            registry=self.registry,
        )
        self.etcd_failures = Counter(
            "dtr_coordinator_etcd_failures_total",
            "etcd calls that failed or whose outcome is unknown.",
            ("kind",),
            registry=self.registry,
        )
        self.barrier_wait_seconds = Histogram(
            "dtr_coordinator_barrier_wait_seconds",
            "How long a barrier call waited, by outcome.",
            ("outcome",),
            buckets=_RPC_BUCKETS_S,
            registry=self.registry,
        )
        self.commit_batch = Histogram(
            "dtr_coordinator_commit_batch_size",
            "Checkpoint commits the leader wrote per transaction (group commit).",
            buckets=(1, 2, 5, 10, 20, 40),
            registry=self.registry,
        )
        self.workers = Gauge(
            "dtr_coordinator_workers",
            "Workers known to this leader, by state.",
            ("state",),
            registry=self.registry,
        )
        self.term = Gauge(
            "dtr_coordinator_term",
            "The current leader's term (fencing token) as this replica knows it.",
            registry=self.registry,
        )
        self.is_leader = Gauge(
            "dtr_coordinator_is_leader",
            "1 while this replica leads and may write.",
            registry=self.registry,
        )
        self.generation = Gauge(
            "dtr_coordinator_generation",
            "The membership generation as this replica knows it.",
            registry=self.registry,
        )

    def rpc(self, method: str, code: str) -> Any:
        """The latency histogram of one (method, code), cached: ``labels()`` is slow per call."""
        child = self._rpc_children.get((method, code))
        if child is None:
            child = self._rpc_children[(method, code)] = self.rpc_seconds.labels(method, code)
        return child

    @contextmanager
    def etcd(self, kind: str) -> Iterator[None]:
        """Time one etcd transaction (and trace it); count it as failed if it raises."""
        started = time.perf_counter()
        try:
            with tracing.span(f"etcd {kind}"):
                yield
        except Exception:
            self.etcd_failures.labels(kind).inc()
            raise
        finally:
            self.etcd_txn_seconds.labels(kind).observe(time.perf_counter() - started)

    def serve(self, port: int, host: str) -> None:
        """Expose ``/metrics`` on ``host:port`` (a daemon thread of prometheus_client)."""
        start_http_server(port, addr=host, registry=self.registry)
