"""What tests/unit/test_deploy_*.py share: reading deploy/, a small kustomize renderer, and
the kubelet's way of resolving a container's environment.

The renderer implements what the overlays use (resources, components,
strategic-merge patches merged by name, JSON patches, namespace, images) and
refuses anything else, so an overlay that starts using a new kustomize
feature fails loudly instead of being checked wrongly.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dtr.cli import build_parser
from dtr.cli.config_file import CONFIG_ENV
from dtr.cli.coordinator_command import COORDINATOR_OPTIONS, config_from_args
from dtr.cli.options import apply_environment
from dtr.cli.reference import WORKER_VARIABLES
from dtr.coordinator.config import CoordinatorConfig

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[1]
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


# -- compose -------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")


def compose_services() -> dict[str, Obj]:
    """The compose file's services, ``${VAR:-default}`` replaced by its default."""
    (compose,) = documents(DEPLOY / "compose.yaml")
    text = json.dumps(compose["services"])
    return dict(json.loads(_INTERPOLATION.sub(lambda m: m[2], text)))
