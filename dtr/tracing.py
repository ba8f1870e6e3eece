"""Optional OpenTelemetry tracing of RPCs: a span per call on both sides, one trace.

When the ``opentelemetry-api`` package is importable (``pip install
'dtr[tracing]'``), the worker's client opens a CLIENT span per RPC attempt
and injects the trace context (``traceparent``) into the call's gRPC
metadata; the coordinator's servicer extracts it and opens a SERVER span as
its child, and the leader's etcd transactions become children of that. Which
SDK and exporter record the spans is the application's choice
(``opentelemetry-sdk``); with the API alone every span is a no-op.

Without the package nothing happens: every helper here yields at once, and
the import is attempted lazily on first use, never at module load, so dtr
does not depend on it. The package is reached through ``importlib`` on
purpose: type checking passes whether or not it is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

#: The RPC service every span names (``dtr.v1.Coordinator/RegisterWorker``).
_SERVICE = "dtr.v1.Coordinator"
_NOT_LOADED: Any = object()
_otel: Any = _NOT_LOADED  # the loaded API (a namespace), None without it


class _Api:
    """The three pieces of the API dtr uses, imported once."""

    def __init__(self) -> None:
        self.trace = importlib.import_module("opentelemetry.trace")
        self.propagate = importlib.import_module("opentelemetry.propagate")
        self.tracers: dict[str, Any] = {}

    def tracer(self, name: str) -> Any:
        tracer = self.tracers.get(name)
        if tracer is None:  # a proxy: it follows a provider the application sets later
            tracer = self.tracers[name] = self.trace.get_tracer(name)
        return tracer


def _api() -> _Api | None:
    global _otel
    if _otel is _NOT_LOADED:
        try:
            _otel = _Api()
        except ImportError:
            _otel = None
    result: _Api | None = _otel
    return result


def is_enabled() -> bool:
    """Whether the OpenTelemetry API is installed (spans are recorded if an SDK is set up)."""
    return _api() is not None


def _attributes(method: str) -> dict[str, str]:
    return {"rpc.system": "grpc", "rpc.service": _SERVICE, "rpc.method": method}


@contextmanager
def client_span(
    method: str, tracer_name: str = "dtr.worker"
) -> Iterator[tuple[tuple[str, str], ...]]:
    """A CLIENT span around one RPC; yields the metadata that carries its context.

    Yields ``()`` without the API (pass it as ``metadata=`` either way).
    """
    api = _api()
    if api is None:
        yield ()
        return
    with api.tracer(tracer_name).start_as_current_span(
        f"{_SERVICE}/{method}", kind=api.trace.SpanKind.CLIENT, attributes=_attributes(method)
    ):
        carrier: dict[str, str] = {}
        api.propagate.inject(carrier)
        yield tuple(carrier.items())


@contextmanager
def server_span(
    method: str, metadata: Iterable[tuple[str, Any]] | None, tracer_name: str = "dtr.coordinator"
) -> Iterator[None]:
    """A SERVER span around one handled call, the child of the caller's span if it sent one."""
    api = _api()
    if api is None:
        yield
        return
    carrier = {  # the token never reaches the propagators
        key: value
        for key, value in metadata or ()
        if isinstance(value, str) and key != "authorization"
    }
    parent = api.propagate.extract(carrier)
    with api.tracer(tracer_name).start_as_current_span(
        f"{_SERVICE}/{method}",
        context=parent,
        kind=api.trace.SpanKind.SERVER,
        attributes=_attributes(method),
    ):
        yield


@contextmanager
def span(name: str, tracer_name: str = "dtr.coordinator") -> Iterator[None]:
    """An INTERNAL span (an etcd transaction) under whatever span is current."""
    api = _api()
    if api is None:
        yield
        return
    with api.tracer(tracer_name).start_as_current_span(name):
        yield
