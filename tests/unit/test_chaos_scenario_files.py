"""dtr.chaos.scenario_files: YAML scenarios load, and a bad one names its file, line and key.

A scenario file is what a user writes by hand, so each refusal must point at
the line to fix; a file that loads must mean exactly what ``Scenario`` means.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtr.chaos.scenario import FaultKind
from dtr.chaos.scenario_files import SCENARIO_DIR, get_scenario, load_scenario, parse_scenario
from dtr.errors import InvalidArgument

GOOD = """\
name: probe
description: a scenario for tests
seed: 11
duration_s: 40
cluster:
  replicas: 3
  workers: 4
workload: {steps: 100, step_time_s: 0.1}
faults:
  leader-kill: 2
  worker-kill: 1
"""


def test_a_file_sets_what_it_names_and_leaves_the_rest_at_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(GOOD)
    scenario = load_scenario(path)
    assert (scenario.name, scenario.seed, scenario.duration_s) == ("probe", 11, 40)
    assert (scenario.replicas, scenario.workers, scenario.etcd_members) == (3, 4, 1)
    assert (scenario.steps, scenario.step_time_s) == (100, 0.1)
    assert scenario.faults == ((FaultKind.LEADER_KILL, 2), (FaultKind.WORKER_KILL, 1))
    assert get_scenario(str(path)) == scenario  # a path works wherever a name does


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (GOOD.replace("seed: 11\n", ""), "probe.yaml:1: seed: missing"),
        (GOOD + "colour: red\n", "probe.yaml:12: colour: unknown key 'colour'; known: name,"),
        (GOOD.replace("  workers: 4", "  wokers: 4"), "probe.yaml:7: cluster.wokers: unknown key"),
        (GOOD.replace("  worker-kill: 1", "  worker-kil: 1"), "probe.yaml:11: faults.worker-kil: "),
        (GOOD.replace("  workers: 4", "  workers: 0"), "probe.yaml:7: cluster.workers: scenario"),
        (
            GOOD.replace("  worker-kill: 1", "  worker-kill: -1"),
            "probe.yaml:11: faults.worker-kill",
        ),
        (GOOD.replace("seed: 11", "seed: -2"), "probe.yaml:3: seed: seed must be a whole number"),
        (GOOD.replace("duration_s: 40", "duration_s: 1"), "probe.yaml:4: duration_s: scenario"),
        (GOOD + "seed: 12\n", "probe.yaml:12: seed: given twice"),
        (
            GOOD.replace("cluster:\n", "cluster: 3\n", 1).replace(
                "  replicas: 3\n  workers: 4\n", ""
            ),
            "probe.yaml:5: cluster: must be a mapping",
        ),
        ("- just\n- a list\n", "probe.yaml:1: (top): a scenario file must be a mapping"),
        ("name: [unclosed\n", "probe.yaml:2: not valid YAML"),
    ],
)
def test_a_bad_file_is_refused_naming_file_line_and_key(
    tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "probe.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{tmp_path}/{where}"), str(caught.value)


def test_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read the scenario file"):
        get_scenario(str(tmp_path / "absent.yaml"))


def test_the_yaml_loader_never_builds_python_objects() -> None:
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        parse_scenario(GOOD + "x: !!python/object/apply:os.system ['true']\n", "evil.yaml")


def test_every_built_in_file_is_named_after_its_scenario() -> None:
    names = sorted(path.stem for path in SCENARIO_DIR.glob("*.yaml"))
    assert names and all(get_scenario(name).name == name for name in names)
