"""deploy/: the compose file, the images, the health check and the dashboard stay in step.

Nothing here needs a Docker engine or the network: the compose file's
coordinators must pass ``dtr coordinator``'s own validation, the Dockerfiles
are read as text, the health check runs against an in-process gRPC health
server, and the dashboard and alert rules may only query metrics that
``dtr.coordinator.metrics`` defines, with the labels it defines.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from deploy_support import (
    DEPLOY,
    ENTRY_POINT,
    ROOT,
    compose_services,
    coordinator_config,
    documents,
    port_of,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.metrics import MetricWrapperBase

from dtr.coordinator.metrics import CoordinatorMetrics
from dtr.proto import LEADER_HEALTH_SERVICE


def test_compose_coordinators_run_the_image_entry_point_with_valid_configs() -> None:
    services = compose_services()
    coordinators = {k: v for k, v in services.items() if k.startswith("coordinator")}
    etcd_members = {v["environment"]["ETCD_NAME"] for k, v in services.items() if "etcd" in k}
    assert len(coordinators) == 3 and len(etcd_members) == 3
    advertised = set()
    for name, service in coordinators.items():
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert service.get("entrypoint", ENTRY_POINT) == ENTRY_POINT and "command" not in service
        assert "healthcheck.py" in " ".join(service["healthcheck"]["test"])
        config = coordinator_config(service["environment"])
        published = {
            int(host): int(inside)
            for host, inside in (p.rsplit(":", 2)[1:] for p in service["ports"])
        }
        assert published[port_of(config.advertise or "")] == port_of(config.listen), name
        assert published[9401 + int(name[-1])] == config.metrics_port
        assert {e.partition(":")[0] for e in config.etcd_endpoints} == etcd_members
        assert set(service["depends_on"]) == etcd_members
        advertised.add(config.advertise)
    assert len(advertised) == 3
    initial = services["etcd-0"]["environment"]["ETCD_INITIAL_CLUSTER"]
    assert initial == ",".join(f"{m}=http://{m}:2380" for m in sorted(etcd_members))


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=30, check=False
    )
    return [docker, "compose"] if probe.returncode == 0 else None


def test_docker_compose_accepts_the_compose_file() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    result = subprocess.run(
        [*command, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# -- the Dockerfiles -----------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(" ".join(pending.split()))
            pending = ""
    return [(word.upper(), rest) for word, _, rest in (line.partition(" ") for line in logical)]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def allowlisted(dockerfile: Path) -> set[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().splitlines()
    return {line[1:] for line in ignore if line.startswith("!")}


@pytest.mark.parametrize("name", ["Dockerfile", "train.Dockerfile"])
def test_every_image_runs_as_a_fixed_unprivileged_user(name: str) -> None:
    path = DEPLOY / name
    users = [rest for word, rest in final_stage(path) if word == "USER"]
    assert users, f"{name}: no USER in the final stage"
    user, _, _ = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, "numeric, so runAsNonRoot can check it"
    for word, rest in instructions(path):
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path"
                assert source in allowlisted(path), f"{name}: {source} is not in the context"


def test_the_coordinator_image_is_slim_multi_stage_and_health_checked() -> None:
    path = DEPLOY / "Dockerfile"
    steps = instructions(path)
    bases = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert bases == ["python:3.11-slim", "python:3.11-slim"]
    assert "pip wheel" in " ".join(rest for word, rest in steps if word == "RUN")
    final = final_stage(path)
    (entry_point,) = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert json.loads(entry_point) == ENTRY_POINT
    install = " ".join(rest for word, rest in final if word == "RUN")
    assert "--no-index" in install, "the final stage installs the built wheels only"
    (check,) = [rest for word, rest in final if word == "HEALTHCHECK"]
    command = json.loads(check.partition("CMD ")[2])
    copies = {rest.split()[-1]: rest.split()[-2] for word, rest in final if word == "COPY"}
    assert copies[command[-1]] == "deploy/healthcheck.py"


# -- the health check script ---------------------------------------------------------


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server() -> Iterator[tuple[str, Callable[[], None]]]:
    """A gRPC health service on loopback: overall SERVING, the leader service not."""
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(LEADER_HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def stop() -> None:
        server.stop(None).wait()

    try:
        yield f"127.0.0.1:{port}", stop
    finally:
        stop()


def test_the_health_check_passes_on_serving_and_fails_otherwise(
    health_server: tuple[str, Callable[[], None]],
) -> None:
    script = load_script(DEPLOY / "healthcheck.py")
    address, stop = health_server
    assert script.main(["--address", address]) == 0
    assert script.main(["--address", address, "--service", LEADER_HEALTH_SERVICE]) == 1
    assert script.main(["--address", address, "--service", "no.such.Service"]) == 1
    stop()
    assert script.main(["--address", address, "--timeout-s", "0.5"]) == 1
    assert script.default_address("0.0.0.0:50051") == "127.0.0.1:50051"
    assert script.default_address("10.0.0.7:6000") == "10.0.0.7:6000"


# -- dashboard and alerts ------------------------------------------------------------

_METRIC = re.compile(r"\bdtr_[a-z0-9_]+")
_GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_]+)\s*(?:=~|!~|!=|=)\s*\"")
#: Labels Prometheus adds or PromQL makes, on top of each metric's own.
_EXTRA_LABELS = {"le", "instance", "job"}


def exported_metrics() -> tuple[set[str], dict[str, set[str]]]:
    """The coordinator's metric families, and every sample name -> the labels it carries."""
    metrics = CoordinatorMetrics()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    families = {f.name: f.type for f in metrics.registry.collect()}
    wrappers = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    labels = {
        # The wrappers' names and label names are private fields of prometheus_client.
        m._name: set(m._labelnames) | _EXTRA_LABELS
        for m in wrappers
    }
    assert set(labels) == set(families), "every metric of the registry is an attribute"
    samples = {
        name + suffix: labels[name]
        for name, kind in families.items()
        for suffix in suffixes.get(kind, ("",))
    }
    return set(families), samples


def queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dtr-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    (rules,) = documents(DEPLOY / "prometheus" / "dtr-alerts.yaml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dtr-dashboard.json").read_text())
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])


def test_every_query_names_exported_metrics_and_their_labels() -> None:
    families, known = exported_metrics()
    used: set[str] = set()
    for where, expr in queries():
        names = set(_METRIC.findall(expr))
        assert names, f"{where}: no dtr metric in {expr!r}"
        assert names <= known.keys(), f"{where}: not exported: {sorted(names - known.keys())}"
        allowed = set.union(*(known[n] for n in names))
        for labels in _GROUPING.findall(expr):
            named = {label.strip() for label in labels.split(",") if label.strip()}
            assert named <= allowed, f"{where}: no such label: {sorted(named - allowed)}"
        assert set(_MATCHER.findall(expr)) <= allowed, f"{where}: unknown label in {expr!r}"
        used |= names
    unused = {f for f in families if not any(name.startswith(f) for name in used)}
    assert not unused, f"no panel or alert shows {sorted(unused)}"


# -- docs ----------------------------------------------------------------------------


def test_docs_deploy_names_only_files_that_exist() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"\bdeploy/[\w./-]*[\w]", text))
    assert len(named) >= 5
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/deploy.md names files that do not exist: {missing}"
