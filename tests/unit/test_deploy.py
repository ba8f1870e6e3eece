"""deploy/: the image, manifests, compose file and dashboard stay in step with the code.

Nothing here needs a cluster, a Docker engine or the network:

- every YAML file parses, and every Kubernetes object validates against the
  OpenAPI schemas that ``kubernetes-validate`` bundles, for one fixed
  Kubernetes version, in strict mode (an unknown field is an error);
- kustomize overlays are rendered by the small renderer below (resources,
  components, strategic-merge patches merged by name, JSON patches,
  namespace, images), which refuses anything it does not implement; where
  ``kubectl`` is on PATH, ``kubectl kustomize`` must render the same objects;
- the coordinator's environment is resolved as the kubelet would (downward
  API fields, ``$(VAR)`` expansion) and fed through ``dtr coordinator``'s own
  option parsing and config validation, so a renamed flag, a variable the
  command does not read, or an impossible value fails here;
- the dashboard and alert rules may only query metrics that
  ``dtr.coordinator.metrics`` defines, with the labels it defines.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.metrics import MetricWrapperBase

from dtr.cli import build_parser
from dtr.cli.config_file import CONFIG_ENV
from dtr.cli.coordinator_command import COORDINATOR_OPTIONS, config_from_args
from dtr.cli.options import apply_environment
from dtr.cli.reference import WORKER_VARIABLES
from dtr.coordinator.config import CoordinatorConfig
from dtr.coordinator.metrics import CoordinatorMetrics
from dtr.proto import LEADER_HEALTH_SERVICE
from dtr.worker.client import parse_coordinators

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
OVERLAYS = {"dev": "dtr-dev", "production": "dtr"}  # overlay -> its namespace
#: Schemas are those of this release; its grpc probes (GA in 1.27) are the newest field used.
K8S_VERSION = "1.30.0"
ENTRY_POINT = ["dtr", "coordinator"]
MIN_ETCD = (3, 5, 3)  # 3.5.0-3.5.2 can lose acknowledged writes on a member crash
POD_IP = "10.4.2.17"
#: Variables dtr's CLI reads besides the options' own (config file, tracebacks).
CLI_VARIABLES = {CONFIG_ENV, "DTR_DEBUG"}
COORDINATOR_VARIABLES = {option.env for option in COORDINATOR_OPTIONS} | CLI_VARIABLES
WORKER_VARIABLE_NAMES = {name for name, _, _ in WORKER_VARIABLES}


# -- reading files ------------------------------------------------------------------


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def is_kubernetes_object(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and {"apiVersion", "kind", "metadata"} <= doc.keys()
        and not str(doc["apiVersion"]).startswith("kustomize.config.k8s.io/")
    )


def kustomization(directory: Path) -> Obj:
    (spec,) = documents(directory / "kustomization.yaml")
    assert isinstance(spec, dict)
    return spec


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in KUBE.rglob("kustomization.yaml"))


def patch_files() -> set[Path]:
    """Files used as patches: fragments, not whole objects."""
    return {
        (directory / patch["path"]).resolve()
        for directory in kustomization_dirs()
        for patch in kustomization(directory).get("patches", [])
    }


# -- a kustomize renderer for what deploy/kubernetes uses ---------------------------

SUPPORTED_KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "patches",
    "namespace",
    "images",
}
#: Strategic-merge keys of the lists our patches touch; any other list is replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "PriorityClass"}


def render(directory: Path, inherited: list[Obj] | None = None) -> list[Obj]:
    """The objects ``kubectl kustomize directory`` prints (a component patches what it inherits)."""
    spec = kustomization(directory)
    unknown = set(spec) - SUPPORTED_KUSTOMIZATION_KEYS
    assert not unknown, f"{rel(directory)}: this renderer does not implement {sorted(unknown)}"
    objects = list(inherited or [])
    for entry in spec.get("resources", []):
        path = directory / entry
        assert path.exists(), f"{rel(directory)}/kustomization.yaml: no resource {entry}"
        objects.extend(render(path) if path.is_dir() else documents(path))
    for entry in spec.get("components", []):
        component = directory / entry
        assert kustomization(component)["kind"] == "Component", f"{entry} is not a Component"
        objects = render(component, objects)
    for patch in spec.get("patches", []):
        apply_patch(directory, patch, objects)
    for obj in objects:
        if "namespace" in spec and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = spec["namespace"]
        for image in spec.get("images", []):
            set_image(obj, image)
    return objects


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects of that kind and name"
    return found[0]


def apply_patch(directory: Path, patch: Obj, objects: list[Obj]) -> None:
    assert set(patch) <= {"path", "target"}, f"unsupported patch fields: {sorted(patch)}"
    path = directory / patch["path"]
    assert path.is_file(), f"{rel(directory)}: no patch file {patch['path']}"
    body = yaml.safe_load(path.read_text())
    if isinstance(body, list):  # RFC 6902: the target names the object
        target = patch["target"]
        assert set(target) <= {"kind", "name"}, f"{rel(path)}: target by kind and name only"
        obj = find(objects, target["kind"], target["name"])
        for operation in body:
            json_patch(obj, operation, rel(path))
    else:  # strategic merge: the patch names its object
        assert "target" not in patch, f"{rel(path)}: a strategic-merge patch names its object"
        obj = find(objects, body["kind"], body["metadata"]["name"])
        merged = strategic_merge(obj, body)
        obj.clear()
        obj.update(merged)


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        assert not any(k.startswith("$") for k in patch), "patch directives are not implemented"
        merged = dict(base)
        for k, value in patch.items():
            merged[k] = strategic_merge(base[k], value, k) if k in base else value
        return merged
    # kustomize moves a merged env entry to the front, before the variables its
    # $(VAR) references name, which Kubernetes then leaves unexpanded.
    assert key != "env", "patch env lists with a JSON patch guarded by `test`, not a merge"
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        field, merged_list = MERGE_KEYS[key], list(base)
        for item in patch:
            at = [i for i, old in enumerate(merged_list) if old.get(field) == item.get(field)]
            if at:
                merged_list[at[0]] = strategic_merge(merged_list[at[0]], item)
            else:
                merged_list.append(item)
        return merged_list
    return copy.deepcopy(patch)


def json_patch(obj: Obj, operation: Obj, where: str) -> None:
    """add / replace / remove / test; the location (its parent, for add) must exist."""
    op, pointer = operation["op"], operation["path"]
    assert op in ("add", "replace", "remove", "test"), f"{where}: op {op} is not implemented"
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
        assert parent is not None, f"{where}: {op} {pointer}: {part!r} is not in the target"
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        assert op == "add" or index < len(parent), f"{where}: {op} {pointer}: no such item"
        if op == "test":
            assert parent[index] == operation["value"], f"{where}: test {pointer} failed"
        elif op == "remove":
            del parent[index]
        elif op == "replace":
            parent[index] = operation["value"]
        else:
            parent.insert(index, operation["value"])
        return
    assert op == "add" or last in parent, f"{where}: {op} {pointer}: nothing there to {op}"
    if op == "test":
        assert parent[last] == operation["value"], f"{where}: test {pointer} failed"
    elif op == "remove":
        del parent[last]
    else:
        parent[last] = operation["value"]


def set_image(obj: Obj, image: Obj) -> None:
    for container in containers(obj):
        name, _, _ = container["image"].partition(":")
        if name == image["name"]:
            new = image.get("newName", name)
            container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new


def pod_spec(obj: Obj) -> Obj | None:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = spec.get("template")
    return template["spec"] if isinstance(template, dict) else None


def containers(obj: Obj) -> list[Obj]:
    spec = pod_spec(obj)
    return [] if spec is None else spec.get("initContainers", []) + spec["containers"]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, render(KUBE / "overlays" / request.param)


# -- resolving a container's environment as the kubelet does -----------------------

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def pod_fields(obj: Obj, namespace: str) -> dict[str, str]:
    """Plausible downward-API values for a pod of ``obj``."""
    name = obj["metadata"]["name"]
    pod = f"{name}-0" if obj["kind"] == "StatefulSet" else f"{name}-7d9f8c6b5-x2x9q"
    return {
        "metadata.name": pod,
        "metadata.namespace": namespace,
        "status.podIP": POD_IP,
        "metadata.labels['batch.kubernetes.io/job-name']": name,
        "metadata.annotations['batch.kubernetes.io/job-completion-index']": "2",
    }


def resolve_env(container: Obj, fields: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}

    def expand(match: re.Match[str]) -> str:
        return "$" if match[0] == "$$" else env.get(match[1], match[0])

    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = _REFERENCE.sub(expand, str(item["value"]))
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in fields, f"{item['name']}: unexpected fieldRef {path}"
            env[item["name"]] = fields[path]
    unresolved = {k: v for k, v in env.items() if "$(" in v}
    assert not unresolved, f"{container['name']}: references to nothing: {unresolved}"
    return env


def coordinator_config(env: Mapping[str, str]) -> CoordinatorConfig:
    """What ``dtr coordinator`` makes of ``env`` (no flags), or its one-line refusal."""
    dtr_variables = {name for name in env if name.startswith("DTR_")}
    assert dtr_variables <= COORDINATOR_VARIABLES, (
        f"set but never read by `dtr coordinator`: {sorted(dtr_variables - COORDINATOR_VARIABLES)}"
    )
    args = build_parser().parse_args(["coordinator"])
    apply_environment(args, env)
    return config_from_args(args)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


# -- every file ----------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    assert documents(path), f"{rel(path)} is empty"


def test_every_manifest_is_part_of_a_kustomization_or_an_example() -> None:
    used = set(patch_files())
    for directory in kustomization_dirs():
        used.add((directory / "kustomization.yaml").resolve())
        for entry in kustomization(directory).get("resources", []):
            used.add((directory / entry).resolve())
    orphans = [
        rel(p)
        for p in KUBE.rglob("*.yaml")
        if p.resolve() not in used and p.parent.name != "examples"
    ]
    assert not orphans, f"in no kustomization: {orphans}"


def validate_object(obj: Obj, where: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (the dev extra) is not installed"
    )
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']}: {path}: {err.message}")


@pytest.mark.parametrize(
    "path",
    [p for p in yaml_files() if p.is_relative_to(KUBE) and p.resolve() not in patch_files()],
    ids=rel,
)
def test_every_kubernetes_object_matches_its_schema(path: Path) -> None:
    objects = [doc for doc in documents(path) if is_kubernetes_object(doc)]
    assert objects or path.name == "kustomization.yaml", f"{rel(path)}: no Kubernetes object"
    for obj in objects:
        validate_object(obj, rel(path))


def test_every_rendered_object_matches_its_schema(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "StatefulSet", "Deployment", "Service", "PodDisruptionBudget"} <= kinds
    for obj in objects:
        validate_object(obj, f"overlays/{name}")
        assert obj["kind"] in CLUSTER_SCOPED or obj["metadata"]["namespace"] == OVERLAYS[name]


def test_kubectl_kustomize_renders_what_this_renderer_renders(
    overlay: tuple[str, list[Obj]],
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH; the overlays were checked by this file's renderer")
    name, objects = overlay
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBE / "overlays" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(result.stdout)}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert sorted(theirs) == sorted(ours)
    for key, obj in ours.items():
        assert theirs[key] == obj, f"{key}: kubectl kustomize renders it differently"


# -- etcd ----------------------------------------------------------------------------


def etcd_version(image: str) -> tuple[int, ...] | None:
    """(3, 5, 17) for ``…/etcd:v3.5.17``; None for an image that is not etcd."""
    repository, _, tag = image.rpartition(":")
    if repository.rpartition("/")[2] != "etcd":
        return None
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)(?:-\d+)?", tag)
    assert match, f"{image}: pin etcd to a release, not {tag!r}"
    return tuple(int(part) for part in match.groups())


def all_images() -> Iterator[tuple[str, str]]:
    fragments = patch_files()
    for path in yaml_files():
        for doc in documents(path) if path.resolve() not in fragments else []:
            if is_kubernetes_object(doc):
                yield from ((rel(path), c["image"]) for c in containers(doc))
    for name, service in compose_services().items():
        yield f"compose.yaml {name}", service["image"]


def test_etcd_is_a_3_5_release_from_3_5_3_on() -> None:
    versions = {where: version for where, image in all_images() if (version := etcd_version(image))}
    assert len(versions) >= 3, "no etcd image found"  # the StatefulSet, the backup, compose
    for where, version in versions.items():
        assert version[:2] == (3, 5) and version >= MIN_ETCD, f"{where}: etcd {version}"


def test_the_etcd_members_listed_are_the_members_started(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    namespace = OVERLAYS[name]
    etcd = find(objects, "StatefulSet", "dtr-etcd")
    service = etcd["spec"]["serviceName"]
    env = resolve_env(containers(etcd)[0], pod_fields(etcd, namespace))
    members = [f"dtr-etcd-{i}" for i in range(etcd["spec"]["replicas"])]
    domain = f"{service}.{namespace}.svc"
    assert env["ETCD_INITIAL_CLUSTER"] == ",".join(f"{m}=http://{m}.{domain}:2380" for m in members)
    assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"http://dtr-etcd-0.{domain}:2380"
    peers = find(objects, "Service", service)["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    coordinator = find(objects, "Deployment", "dtr-coordinator")
    config = coordinator_config(
        resolve_env(containers(coordinator)[0], pod_fields(coordinator, namespace))
    )
    assert set(config.etcd_endpoints) == {f"{m}.{domain}:2379" for m in members}


# -- the coordinator -----------------------------------------------------------------


def coordinator_parts(objects: list[Obj]) -> tuple[Obj, Obj, CoordinatorConfig]:
    deployment = find(objects, "Deployment", "dtr-coordinator")
    (container,) = containers(deployment)
    namespace = deployment["metadata"].get("namespace", "default")
    env = resolve_env(container, pod_fields(deployment, namespace))
    return deployment, container, coordinator_config(env)


def test_the_coordinator_runs_the_image_entry_point_with_a_valid_config(
    overlay: tuple[str, list[Obj]],
) -> None:
    name, objects = overlay
    deployment, container, config = coordinator_parts(objects)
    assert "command" not in container and "args" not in container, "the image runs it"
    images = kustomization(KUBE / "overlays" / name)["images"]
    assert [i["name"] for i in images] == ["dtr"], "the image built from deploy/Dockerfile"
    assert container["image"] == f"{images[0]['newName']}:{images[0]['newTag']}"
    listen = port_of(config.listen)
    assert config.advertised_address(listen) == f"{POD_IP}:{listen}"
    assert config.replica_id == pod_fields(deployment, OVERLAYS[name])["metadata.name"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": listen, "metrics": config.metrics_port}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(config.metrics_port)


def test_the_coordinator_has_three_replicas_a_budget_and_grpc_health_probes(
    overlay: tuple[str, list[Obj]],
) -> None:
    _, objects = overlay
    deployment, container, config = coordinator_parts(objects)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 3
    budget = find(objects, "PodDisruptionBudget", "dtr-coordinator")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # "" is SERVING on any running replica; dtr.v1.Leader only on the leader,
        # which would take every follower out of the Service.
        assert container[probe]["grpc"] == {"port": port_of(config.listen), "service": ""}
    service = find(objects, "Service", "dtr-coordinator")["spec"]
    assert service["clusterIP"] == "None", "headless: workers get every replica"
    assert service["selector"].items() <= labels.items()
    assert {p["port"] for p in service["ports"]} == {port_of(config.listen), config.metrics_port}


def test_every_pod_runs_unprivileged(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in containers(obj):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]


def test_production_places_one_etcd_member_and_one_replica_per_node() -> None:
    objects = render(KUBE / "overlays" / "production")
    for kind, name in (("StatefulSet", "dtr-etcd"), ("Deployment", "dtr-coordinator")):
        template = find(objects, kind, name)["spec"]["template"]
        rule = template["spec"]["affinity"]["podAntiAffinity"]
        assert set(rule) == {"requiredDuringSchedulingIgnoredDuringExecution"}, name
        (term,) = rule["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert (
            term["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        )


# -- the worker example --------------------------------------------------------------


def test_the_worker_job_reaches_the_coordinators_of_its_namespace() -> None:
    (job,) = documents(KUBE / "examples" / "train-job.yaml")
    (container,) = containers(job)
    env = resolve_env(container, pod_fields(job, "dtr"))
    dtr_variables = {name for name in env if name.startswith("DTR_")}
    assert dtr_variables <= WORKER_VARIABLE_NAMES, dtr_variables - WORKER_VARIABLE_NAMES
    _, _, config = coordinator_parts(render(KUBE / "base"))
    assert parse_coordinators(env["DTR_COORDINATORS"]) == (
        f"dtr-coordinator.dtr.svc:{port_of(config.listen)}",
    )
    assert env["DTR_JOB"] == config.job
    assert env["DTR_WORKER_ID"] == "train-mlp-2", "stable across pod replacement"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["DTR_STATE_DIR"] in mounts, "the commit queue lives on a volume"


# -- compose -------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")


def compose_services() -> dict[str, Obj]:
    (compose,) = documents(DEPLOY / "compose.yaml")
    text = json.dumps(compose["services"])
    return dict(json.loads(_INTERPOLATION.sub(lambda m: m[2], text)))


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
