"""One trace across the wire: the worker client's span is the parent of the servicer's.

The server is a real ``grpc.aio`` server on loopback running the real
``CoordinatorServicer`` (its ``_handler`` wrapper, its ``RegisterWorker``) over
a stand-in for the leader core: a replica in a subprocess could not share the
in-memory exporter. The stand-in times a pretend etcd write through the real
``CoordinatorMetrics.etcd``, so its span is checked too. Skipped without the
OpenTelemetry SDK (``pip install 'dtr[tracing]' opentelemetry-sdk``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from dtr import tracing
from dtr.coordinator.metrics import CoordinatorMetrics
from dtr.coordinator.servicer import CoordinatorServicer
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.worker.client import CoordinatorClient
from helpers import wait_until

pytestmark = pytest.mark.integration
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
sdk_export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")


class _Core:
    """What RegisterWorker needs of ``Coordinator``; the write is timed as the real one is."""

    def __init__(self) -> None:
        self.metrics = CoordinatorMetrics()
        self.is_leader = True
        self.keys = SimpleNamespace(job="default")
        self.config = SimpleNamespace(
            heartbeat_interval_s=1.0, heartbeat_timeout_s=30.0, rendezvous_idle_ttl_s=60
        )
        self.elector = SimpleNamespace(leader=lambda: None)
        self.term_lost_listeners: list[Any] = []  # the servicer's rendezvous part hooks in

    async def register_worker(self, worker_id: str, capacity: float, **_: Any) -> Any:
        with self.metrics.etcd("write"):
            await asyncio.sleep(0)
        return SimpleNamespace(incarnation=1), SimpleNamespace(generation=1, job_life="")


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Spans of dtr's tracers go to memory (a provider of the test's own, not the global one)."""
    memory = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(sdk_export.SimpleSpanProcessor(memory))
    api = tracing._Api()
    api.tracers = {name: provider.get_tracer(name) for name in ("dtr.worker", "dtr.coordinator")}
    monkeypatch.setattr(tracing, "_otel", api)
    return memory


@pytest.fixture
def servicer_address() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="aio-server", daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        pb_grpc.add_CoordinatorServicer_to_server(  # type: ignore[no-untyped-call]
            CoordinatorServicer(_Core(), "r0"),  # type: ignore[arg-type]
            server,
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_the_coordinators_span_is_a_child_of_the_workers_rpc_span(
    exporter: Any, servicer_address: str
) -> None:
    client = CoordinatorClient(servicer_address, job="default", caller_id="w0")
    try:
        response = client.call(
            "RegisterWorker",
            lambda: pb.RegisterWorkerRequest(worker_id="w0", capacity=1.0),
            operation="register worker",
            mutating=True,
        )
    finally:
        client.close()
    assert response.incarnation == 1
    wait_until(lambda: len(exporter.get_finished_spans()) >= 3, 10, "three finished spans")
    spans = {s.kind.name: s for s in exporter.get_finished_spans()}
    worker, coordinator, etcd = spans["CLIENT"], spans["SERVER"], spans["INTERNAL"]
    assert worker.name == coordinator.name == "dtr.v1.Coordinator/RegisterWorker"
    assert coordinator.context.trace_id == worker.context.trace_id
    assert coordinator.parent.span_id == worker.context.span_id
    assert etcd.name == "etcd write" and etcd.parent.span_id == coordinator.context.span_id
    assert worker.attributes["rpc.method"] == "RegisterWorker"
