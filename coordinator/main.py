"""Run one coordinator replica: etcd, election, gRPC server, leader loop, shutdown.

``serve(config)`` is what ``dtr coordinator`` calls. Start-up waits (bounded)
for etcd, binds the port, starts campaigning and serving; the leader loop
then runs every ``_CYCLE_S`` and logs its status line whenever it changes.
SIGTERM or SIGINT stops gracefully: the health service turns NOT_SERVING,
the leader revokes its lease so a follower takes over at once (DESIGN §4),
and in-flight calls get ``shutdown_grace_s`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from dtr.errors import DtrError, InvalidArgument, StoreUnavailable
from dtr.keys import JobKeys
from dtr.logs import formatter_for
from dtr.proto import LEADER_HEALTH_SERVICE, SERVICE_NAME
from dtr.security import read_token_table, server_credentials
from dtr.store import EtcdStore

from .auth import TokenInterceptor
from .config import TLS_FIELD_NAMES, CoordinatorConfig
from .election import Elector
from .leader import Coordinator
from .metrics import CoordinatorMetrics
from .servicer import CoordinatorServicer
from .wire import add_coordinator_servicer

_log = logging.getLogger("dtr.coordinator")
_CYCLE_S = 0.2
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Limits of the gRPC server, generous on purpose (docs/security.md). Requests
#: are small; the largest answers are GetShards of a big dataset and
#: ClusterStatus of thousands of workers. Streams per connection bound what
#: one client can hold open: a worker uses a few (its heartbeat stream, a
#: barrier poll, a call); the chaos harness multiplexes hundreds of simulated
#: workers over one connection.
MAX_RECEIVE_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_SEND_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_CONCURRENT_STREAMS = 4096
#: Calls that arrived but that the server has not yet handed to a handler.
#: gRPC core's default soft limit is 1,000: past it, a call left waiting is
#: CANCELLED, so a fleet of 2,000 workers registering in one instant lost
#: about one in ten of its calls (measured; benchmarks/register_burst.py).
#: Each pending call costs a few KiB; the hard limit refuses new ones at once.
MAX_PENDING_REQUESTS = 16_384
SERVER_OPTIONS = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
    ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
    ("grpc.server.max_pending_requests", MAX_PENDING_REQUESTS),
    ("grpc.server.max_pending_requests_hard_limit", 4 * MAX_PENDING_REQUESTS),
    # Clients' leader watches ping every second to notice a frozen replica
    # (worker/leader_watch.py); gRPC's default would answer those pings, on a
    # held call that sends no data, with GOAWAY "too_many_pings".
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
)


class _TermFilter(logging.Filter):
    """Stamp every log line with the leader's term as this replica knows it."""

    def __init__(self) -> None:
        super().__init__()
        self.elector: Elector | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        leader = self.elector.leader() if self.elector is not None else None
        record.term = leader.create_revision if leader is not None else "-"
        return True


_TERM_FILTER = _TermFilter()


def serve(config: CoordinatorConfig) -> int:
    """Run a replica until SIGTERM/SIGINT; returns the exit status."""
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_TERM_FILTER)
        handler.setFormatter(formatter_for(config.log_format))
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    return asyncio.run(_serve(config))


def wait_for_etcd(store: EtcdStore, timeout_s: float) -> None:
    """Retry until etcd answers or ``timeout_s`` passes (a bounded start-up wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            store.revision()
            return
        except StoreUnavailable as err:
            if time.monotonic() >= deadline:
                raise StoreUnavailable(
                    f"etcd at {','.join(store.endpoints)} did not answer within {timeout_s} s "
                    f"({err}); is it running? (`dtr etcd` starts one)"
                ) from None
            time.sleep(0.1)


async def _serve(config: CoordinatorConfig) -> int:
    etcd_tls, etcd_credentials = config.etcd_security()
    store = EtcdStore(
        config.etcd_endpoints,
        timeout_s=config.read_timeout_s,
        write_timeout_s=config.write_timeout_s,
        tls=etcd_tls,
        credentials=etcd_credentials,
    )
    try:
        await asyncio.to_thread(wait_for_etcd, store, config.startup_timeout_s)
        return await _run_replica(config, store)
    finally:
        store.close()


def _grpc_server(config: CoordinatorConfig) -> tuple[grpc.aio.Server, int]:
    """The server with its limits, token check and (TLS or plaintext) port bound.

    Credentials are loaded again here (the config checked them at start-up):
    a file changed in between fails now, with the same one-line message.
    """
    interceptors = []
    if config.token_file is not None:
        interceptors.append(TokenInterceptor(read_token_table(config.token_file, "token_file")))
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    tls = config.server_tls()
    try:
        if tls is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, server_credentials(tls, TLS_FIELD_NAMES))
    except RuntimeError as err:
        raise InvalidArgument(f"listen: cannot listen on {config.listen}: {err}") from None
    if config.token_file is not None and tls is None:
        _log.warning("bearer tokens without TLS cross the network in clear text; add --tls-cert")
    if tls is not None or config.token_file is not None:
        _log.info(
            "gRPC on %s: %s%s",
            config.listen,
            "plaintext" if tls is None else ("mutual TLS" if tls.ca is not None else "TLS"),
            ", bearer tokens required" if config.token_file is not None else "",
        )
    return server, port


async def _run_replica(config: CoordinatorConfig, store: EtcdStore) -> int:
    server, port = _grpc_server(config)
    replica_id = config.resolved_replica_id(port)
    address = config.advertised_address(port)
    keys = JobKeys(config.job)
    health = HealthServicer()
    elector = Elector(
        store,
        keys,
        replica_id=replica_id,
        address=address,
        lease_ttl_s=config.lease_ttl_s,
        renew_deadline_s=config.renew_deadline_s,
        keepalive_interval_s=config.keepalive_interval_s,
        keepalive_timeout_s=config.keepalive_timeout_s,
        self_fencing=not config.unsafe_disable_fencing,
    )
    metrics = CoordinatorMetrics()
    if config.metrics_port is not None:
        host = config.listen.rpartition(":")[0]
        metrics.serve(config.metrics_port, host)
        _log.info("metrics on http://%s:%d/metrics", host, config.metrics_port)
    coordinator = Coordinator(store, keys, config, elector, metrics=metrics)
    _TERM_FILTER.elector = elector
    add_coordinator_servicer(CoordinatorServicer(coordinator, replica_id), server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    await health.set(LEADER_HEALTH_SERVICE, _NOT_SERVING)
    await server.start()
    elector.start()
    await health.set("", _SERVING)
    print(f"dtr coordinator {replica_id} serving on {address} (job {config.job})", flush=True)
    stop = _stop_event()
    try:
        await _leader_loop(coordinator, health, stop)
    finally:
        await health.enter_graceful_shutdown()
        await asyncio.to_thread(elector.resign)
        await server.stop(config.shutdown_grace_s)
        _log.info("replica %s stopped", replica_id)
    return 0


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _leader_loop(
    coordinator: Coordinator, health: HealthServicer, stop: asyncio.Event
) -> None:
    """Run cycles until asked to stop; log the status line when it changes."""
    last_status = ""
    while not stop.is_set():
        try:
            status = await coordinator.run_cycle()
        except DtrError as err:
            status = f"cycle failed: {err}"
        is_leader = coordinator.is_leader
        await health.set(LEADER_HEALTH_SERVICE, _SERVING if is_leader else _NOT_SERVING)
        if status != last_status:
            _log.info("%s", status)
            last_status = status
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _CYCLE_S)
