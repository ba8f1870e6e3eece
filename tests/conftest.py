"""Fixtures every layer shares: real etcd, never a fake (DESIGN §7).

- ``etcd`` (session): one single-member etcd for the whole run.
- ``etcd_prefix`` (function): a unique key prefix on ``etcd``, so tests
  sharing it never see each other's keys.
- ``fresh_etcd`` (function): a single member of the test's own, free to stop,
  kill and restart.
- ``etcd_cluster3`` (function): three members, for quorum and fault tests.
- ``docker_etcd`` (function): etcd in a container; skipped without an engine.

``DTR_TEST_ETCD=docker`` makes ``etcd`` and ``fresh_etcd`` containers
(testcontainers) for machines with a Docker engine and no etcd binary; where
no engine answers, those tests are skipped and the reason says so. Member
faults need processes, so the cluster fixture always runs processes.

Tests under ``tests/integration`` are marked ``integration`` automatically.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import s3_server  # noqa: F401

from dtr.errors import EtcdBinaryNotFound, EtcdError
from dtr.etcd import (
    DockerEtcd,
    EtcdCluster,
    RunningEtcd,
    docker_unavailable_reason,
    select_etcd_binary,
)

ENV_TEST_ETCD = "DTR_TEST_ETCD"
_MODES = ("process", "docker")
_INTEGRATION_DIR = Path(__file__).parent / "integration"


def _etcd_mode() -> str:
    mode = os.environ.get(ENV_TEST_ETCD, "").strip().lower() or "process"
    if mode not in _MODES:
        raise pytest.UsageError(f"{ENV_TEST_ETCD}={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def _start_docker_etcd(why: str) -> DockerEtcd:
    """A container, or a skip whose reason says there is no engine (never a fake)."""
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(f"{why}no Docker engine is reachable: {reason}")
    return DockerEtcd.start()


def _start_single() -> RunningEtcd:
    if _etcd_mode() == "docker":
        return _start_docker_etcd(f"{ENV_TEST_ETCD}=docker but ")
    return EtcdCluster.start(1)


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a misspelt ``DTR_TEST_ETCD`` before any test runs."""
    del config
    _etcd_mode()


def pytest_report_header(config: pytest.Config) -> str:
    """Name the etcd the run uses, so a failure report says what ran."""
    del config
    mode = _etcd_mode()
    try:
        path, version = select_etcd_binary(1)
    except EtcdError as err:
        return f"dtr etcd: {mode}; no usable etcd binary ({err})"
    return f"dtr etcd: {mode}; single member: {path} ({version})"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def etcd() -> Iterator[RunningEtcd]:
    """One single-member etcd shared by the session; use ``etcd_prefix`` for keys."""
    server = _start_single()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix(etcd: RunningEtcd, request: pytest.FixtureRequest) -> str:
    """``/dtr-test/<test-name>-<8 hex>/``: this test's own corner of the session etcd."""
    del etcd  # requested so the prefix always lives on a running etcd
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    return f"/dtr-test/{name}-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
def fresh_etcd() -> Iterator[RunningEtcd]:
    """A single member for this test alone, stopped (and its data removed) afterwards."""
    server = _start_single()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """Three members on loopback; etcd 3.5.0-3.5.2 are refused (UnsafeEtcdVersion)."""
    try:
        cluster = EtcdCluster.start(3)
    except EtcdBinaryNotFound as err:
        if _etcd_mode() != "docker":
            raise
        pytest.skip(f"{ENV_TEST_ETCD}=docker: a 3-member cluster needs an etcd binary: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def docker_etcd() -> Iterator[DockerEtcd]:
    """etcd in a container whatever ``DTR_TEST_ETCD`` says; skipped without an engine."""
    server = _start_docker_etcd("")
    try:
        yield server
    finally:
        server.stop()
