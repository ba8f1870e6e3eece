"""dtr.chaos.scenario_files: YAML scenarios load, and a bad one names its file, line and key.

A scenario file is what a user writes by hand, so each refusal must point at
the line to fix; a file that loads must mean exactly what ``Scenario`` means.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtr.chaos.scenario import PAUSE_MARGIN_S, FaultKind, schedule
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


RACK = """\
name: rack
description: a rack of simulated workers lost at once
seed: 4
duration_s: 30
cluster:
  sim_workers: 200
  sim_processes: 4
  rack_size: 150
workload: {steps: 100, step_time_s: 0.1}
delays:
  etcd_slow_s: [0.05, 0.4]
  slow_storage_s: 0.5
  client_deadline_s: [0.05, 0.2]
faults:
  rack-failure: 1
"""


def test_rack_size_and_delays_are_read_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rack.yaml"
    path.write_text(RACK.replace("[0.05, 0.2]", "[0.1, 0.3]"))
    scenario = load_scenario(path)
    assert (scenario.rack_size, scenario.sim_workers, scenario.sim_processes) == (150, 200, 4)
    assert scenario.etcd_slow_s == (0.05, 0.4)  # a tuple: the scenario stays frozen and hashable
    assert (scenario.slow_storage_s, scenario.client_deadline_s) == (0.5, (0.1, 0.3))


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("  rack-failure: 1", "  rack-fail: 1", "rack.yaml:15: faults.rack-fail: not a fault kind"),
        ("rack_size: 150", "rack_size: 201", "rack.yaml:8: cluster.rack_size: scenario rack: "),
        ("sim_processes: 4", "sim_processes: 1", "rack.yaml:7: cluster.sim_processes: scenario"),
        ("rack_size: 150", "rack_size: 0", "rack.yaml:8: cluster.rack_size: scenario rack: rack"),
        ("[0.05, 0.4]", "[0.05, 10.5]", "rack.yaml:11: delays.etcd_slow_s: scenario rack: etcd"),
        ("[0.05, 0.4]", "[-0.1, 0.4]", "rack.yaml:11: delays.etcd_slow_s: scenario rack: etcd"),
        ("[0.05, 0.4]", "[0.4, 0.05]", "rack.yaml:11: delays.etcd_slow_s: scenario rack: etcd"),
        ("slow_storage_s: 0.5", "slow_storage_s: 11", "rack.yaml:12: delays.slow_storage_s: "),
        ("[0.05, 0.2]", "[0.05, 60]", "rack.yaml:13: delays.client_deadline_s: scenario"),
        ("  etcd_slow_s:", "  etcd_slo_s:", "rack.yaml:11: delays.etcd_slo_s: unknown key"),
    ],
)
def test_a_bad_rack_or_delay_is_refused_naming_file_line_and_key(
    tmp_path: Path, old: str, new: str, where: str
) -> None:
    path = tmp_path / "rack.yaml"
    assert old in RACK
    path.write_text(RACK.replace(old, new))
    with pytest.raises(InvalidArgument) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{tmp_path}/{where}"), str(caught.value)


def test_the_rack_check_names_the_sizes_it_compared(tmp_path: Path) -> None:
    path = tmp_path / "rack.yaml"
    path.write_text(RACK.replace("rack_size: 150", "rack_size: 201"))
    with pytest.raises(InvalidArgument, match=r"rack_size \(201\) is larger than the simulated"):
        load_scenario(path)


def test_every_worker_pause_outlives_the_heartbeat_timeout() -> None:
    """A paused worker must be declared dead while frozen, whatever the jitter drew."""
    scenario = get_scenario("pause-and-cancel")
    pauses = [
        fault.duration_s
        for seed in range(40)
        for fault in schedule(scenario, seed)
        if fault.kind is FaultKind.WORKER_PAUSE
    ]
    assert pauses and min(pauses) >= scenario.heartbeat_timeout_s + PAUSE_MARGIN_S
    assert scenario.longest_fault_s >= max(pauses)
