"""``dtr.tracing`` without OpenTelemetry: every helper is a no-op, nothing is imported at load."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dtr import tracing


@pytest.fixture
def without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the package were not installed: importing it fails, and nothing is cached."""
    for name in ("opentelemetry", "opentelemetry.trace", "opentelemetry.propagate"):
        monkeypatch.setitem(sys.modules, name, None)  # importlib's "not installed"
    monkeypatch.setattr(tracing, "_otel", tracing._NOT_LOADED)


@pytest.mark.usefixtures("without_opentelemetry")
def test_without_the_package_spans_are_no_ops_and_add_no_metadata() -> None:
    assert not tracing.is_enabled()
    with tracing.client_span("RegisterWorker") as metadata:
        assert metadata == ()
    with tracing.server_span("RegisterWorker", [("traceparent", "00-ab-cd-01")]):
        pass
    with tracing.span("etcd write"):
        pass


@pytest.mark.usefixtures("without_opentelemetry")
def test_an_error_inside_a_no_op_span_propagates_unchanged() -> None:
    with pytest.raises(KeyError), tracing.client_span("GetShards"):
        raise KeyError("x")


def test_importing_dtr_loads_no_opentelemetry() -> None:
    code = (
        "import sys, dtr.tracing, dtr.worker, dtr.coordinator.servicer, dtr.coordinator.metrics;"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
