"""Scenario files: YAML under ``chaos/scenarios/`` (built in) or anywhere (``dtr chaos run FILE``).

A file describes one ``Scenario``, grouped the way one thinks about a run::

    name: zombie-leader
    description: SIGSTOP the leader past its lease TTL, then SIGCONT it
    seed: 3                 # required: the schedule is a function of it
    duration_s: 30          # the fault phase
    settle_s: 20            # after the last heal
    storage: file           # or s3: a moto_server the run starts (slow-storage needs it)
    cluster: {replicas: 3, etcd_members: 1, workers: 2, lease_ttl_s: 3, heartbeat_timeout_s: 5}
    workload: {steps: 1500, step_time_s: 0.02}
    pace: {mean_interval_s: 5, fault_duration_s: 3}
    delays: {etcd_slow_s: [0.05, 0.4], slow_storage_s: 0.5, client_deadline_s: [0.05, 0.2]}
    faults: {zombie-leader: 1}   # kind: weight

(``cluster`` also takes ``rack_size``, the simulated workers a ``rack-failure``
kills at least; ``workload`` takes ``ddp_agents`` and ``ranks_per_agent``: the
workload is then one torchrun DDP job instead of the workers, ``scenario_ddp.py``.)

Everything not required has the ``Scenario`` default. A file that cannot run
is refused with its path, the line and the key: an unknown key, a key given
twice, a missing seed, a value ``Scenario`` refuses (the line of the key
that holds it). YAML is read with the safe loader only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from dtr.errors import InvalidArgument

from .scenario import FaultKind, Scenario, ScenarioError

__all__ = ["SCENARIO_DIR", "builtin_scenarios", "get_scenario", "load_scenario", "parse_scenario"]

#: Where the built-in scenario files live (installed with the package).
SCENARIO_DIR = Path(__file__).parent / "scenarios"
REQUIRED = ("name", "description", "seed", "duration_s", "faults")
GROUPS: dict[str, tuple[str, ...]] = {
    "cluster": (
        "replicas",
        "etcd_members",
        "workers",
        "sim_workers",
        "sim_processes",
        "lease_ttl_s",
        "heartbeat_timeout_s",
        "rack_size",
    ),
    "workload": ("steps", "step_time_s", "ddp_agents", "ranks_per_agent"),
    "pace": ("mean_interval_s", "fault_duration_s"),
    "delays": ("etcd_slow_s", "slow_storage_s", "client_deadline_s"),
}
TOP_LEVEL = ("name", "description", "seed", "duration_s", "settle_s", "storage", "faults", *GROUPS)
_Path = tuple[str, ...]


class _Located(InvalidArgument):
    """A refusal at a place in the file: ``line`` (1-based) and the key's dotted path."""

    def __init__(self, message: str, line: int, key: str) -> None:
        super().__init__(message)
        self.line, self.key = line, key


def load_scenario(path: Path) -> Scenario:
    """The scenario in ``path``; InvalidArgument naming the file, line and key otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InvalidArgument(f"{path}: cannot read the scenario file: {err.strerror}") from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """The scenario in YAML ``text``; errors name ``source``, the line and the key."""
    try:
        return _build(text)
    except _Located as err:
        raise InvalidArgument(f"{source}:{err.line}: {err.key}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InvalidArgument(f"{source}{line}: not valid YAML: {err}") from None


def _build(text: str) -> Scenario:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        line = root.start_mark.line + 1 if root is not None else 1
        raise _Located("a scenario file must be a mapping of keys to values", line, "(top)")
    lines = dict(_key_lines(root, ()))
    data = yaml.safe_load(text)
    _check_keys(data, lines)
    kwargs: dict[str, Any] = {k: data[k] for k in TOP_LEVEL if k in data and k not in GROUPS}
    for group in GROUPS:
        # A YAML list (a delay's [min, max]) becomes the tuple a frozen Scenario holds.
        kwargs.update({k: _frozen(v) for k, v in (data.get(group) or {}).items()})
    kwargs["faults"] = _faults(data["faults"], lines)
    try:
        return Scenario(**kwargs)
    except ScenarioError as err:
        key = _key_of(err.field)
        raise _Located(str(err), _line(lines, key), ".".join(key)) from None


def _frozen(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _key_lines(node: yaml.MappingNode, prefix: _Path) -> Iterator[tuple[_Path, int]]:
    """(dotted path, line) of every key; a key given twice is refused at its second line."""
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = str(key_node.value)
        path = (*prefix, key)
        if key in seen:
            raise _Located("given twice", key_node.start_mark.line + 1, ".".join(path))
        seen.add(key)
        yield path, key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            yield from _key_lines(value_node, path)


def _check_keys(data: dict[str, Any], lines: dict[_Path, int]) -> None:
    for key in data:
        if key not in TOP_LEVEL:
            raise _Located(_unknown(key, TOP_LEVEL), _line(lines, (str(key),)), str(key))
    for key in REQUIRED:
        if key not in data:
            raise _Located("missing (every scenario file must give it)", 1, key)
    for group, known in GROUPS.items():
        value = data.get(group)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise _Located(
                f"must be a mapping of {', '.join(known)}", _line(lines, (group,)), group
            )
        for key in value:
            if key not in known:
                path = (group, str(key))
                raise _Located(_unknown(key, known), _line(lines, path), ".".join(path))


def _faults(value: object, lines: dict[_Path, int]) -> tuple[tuple[FaultKind, float], ...]:
    if not isinstance(value, dict) or not value:
        raise _Located("must map fault kinds to weights", _line(lines, ("faults",)), "faults")
    known = tuple(kind.value for kind in FaultKind)
    faults = []
    for kind, weight in value.items():
        if kind not in known:
            path = ("faults", str(kind))
            raise _Located(
                f"not a fault kind; {_unknown(kind, known)}", _line(lines, path), ".".join(path)
            )
        faults.append((FaultKind(kind), weight))
    return tuple(faults)


def _line(lines: dict[_Path, int], path: _Path) -> int:
    """The line of ``path``; a value left at its default is blamed on the ``name`` line."""
    return lines.get(path) or lines.get(("name",), 1)


def _unknown(key: object, known: tuple[str, ...]) -> str:
    return f"unknown key {key!r}; known: {', '.join(known)}"


def _key_of(field: str | None) -> _Path:
    """Where a ``Scenario`` field lives in the file."""
    if field is None:
        return ("name",)
    if field.startswith("faults."):
        return ("faults", field.removeprefix("faults."))
    for group, members in GROUPS.items():
        if field in members:
            return (group, field)
    return (field,)


@functools.cache
def builtin_scenarios() -> dict[str, Scenario]:
    """The files under ``SCENARIO_DIR`` by scenario name, in file name order."""
    found: dict[str, Scenario] = {}
    for path in sorted(SCENARIO_DIR.glob("*.yaml")):
        scenario = load_scenario(path)
        if scenario.name != path.stem or scenario.name in found:
            raise InvalidArgument(f"{path}: name must be the file's name ({path.stem!r})")
        found[scenario.name] = scenario
    return found


def get_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or the scenario file at a path (anything with a ``.yaml``)."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        return load_scenario(Path(name_or_path))
    scenarios = builtin_scenarios()
    try:
        return scenarios[name_or_path]
    except KeyError:
        raise InvalidArgument(
            f"unknown scenario {name_or_path!r}; known: {', '.join(scenarios)} "
            "(or give a path to a scenario .yaml file)"
        ) from None
