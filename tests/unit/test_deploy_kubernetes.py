"""deploy/kubernetes: the manifests and overlays stay in step with the code.

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

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    CLUSTER_SCOPED,
    K8S_VERSION,
    KUBE,
    MIN_ETCD,
    OVERLAYS,
    POD_IP,
    WORKER_VARIABLE_NAMES,
    Obj,
    compose_services,
    containers,
    coordinator_config,
    documents,
    find,
    is_kubernetes_object,
    kustomization,
    kustomization_dirs,
    patch_files,
    pod_fields,
    pod_spec,
    port_of,
    rel,
    render,
    resolve_env,
    yaml_files,
)

from dtr.coordinator.config import CoordinatorConfig
from dtr.worker.client import parse_coordinators


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, render(KUBE / "overlays" / request.param)


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
