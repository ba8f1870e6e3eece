"""The DDP workload's scenario keys, refusals, agent command line and fault targets.

No process starts here: the agents' command is built and read, the faults
are aimed at pools that have nothing running. ``tests/chaos/test_ddp_rank_kill.py``
runs the real job.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from dtr.chaos.ddp_agents import (
    SCRIPT_ENV,
    AgentPool,
    DdpConfig,
    parent_of,
    script_from_environment,
)
from dtr.chaos.nemesis_ddp import kill_rank, leave_agent
from dtr.chaos.nemesis_types import NoTarget, Targets
from dtr.chaos.scenario import FaultKind, Scenario, schedule
from dtr.chaos.scenario_files import get_scenario, parse_scenario
from dtr.chaos.summary import format_scenarios
from dtr.chaos.workers import WorkerPool, WorkloadConfig
from dtr.errors import InvalidArgument

DDP_FILE = """\
name: my-ddp
description: a DDP job through rank kills
seed: 1
duration_s: 30
cluster: {workers: 0}
workload: {ddp_agents: 2, ranks_per_agent: 2, steps: 300, step_time_s: 0.1}
faults:
  rank-kill: 2
  leader-kill: 1
"""


def ddp(**changes: object) -> Scenario:
    fields: dict[str, object] = {
        "faults": ((FaultKind.RANK_KILL, 1.0),),
        "workers": 0,
        "ddp_agents": 2,
        **changes,
    }
    return Scenario("ddp", "a DDP job", **fields)  # type: ignore[arg-type]


def test_a_scenario_file_names_the_ddp_job_and_the_built_in_one_loads() -> None:
    scenario = parse_scenario(DDP_FILE, "my-ddp.yaml")
    assert (scenario.ddp_agents, scenario.ranks_per_agent, scenario.workers) == (2, 2, 0)
    shipped = get_scenario("torchrun-ddp")
    assert shipped.ddp_agents == 2 and FaultKind.AGENT_LEAVE in shipped.kinds
    assert schedule(shipped, shipped.seed)
    assert "a DDP job of 2 torchrun agents x 2 ranks x 500 steps" in format_scenarios([shipped])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workers": 2}, "with ddp_agents, workers must be 0"),
        (
            {"sim_workers": 10, "sim_processes": 1, "step_time_s": 0.1},
            "with ddp_agents, sim_workers must be 0",
        ),
        ({"faults": ((FaultKind.WORKER_KILL, 1.0),)}, "worker-kill aims at independent workers"),
        (
            {"faults": ((FaultKind.AGENT_LEAVE, 1.0),), "ddp_agents": 1},
            "agent-leave needs ddp_agents >= 2",
        ),
        ({"ranks_per_agent": 0}, "ranks_per_agent must be a whole number >= 1"),
        ({"ddp_agents": 0, "workers": 2}, "rank-kill needs the DDP workload"),
        ({"ddp_agents": 0, "workers": 0}, "workers must be >= 1"),
    ],
)
def test_a_ddp_scenario_that_cannot_run_is_refused(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ddp(**changes)


def test_a_refusal_in_a_file_names_its_line() -> None:
    text = DDP_FILE.replace("{workers: 0}", "{workers: 3}")
    with pytest.raises(InvalidArgument, match=r"my-ddp.yaml:5: cluster.workers: .*must be 0"):
        parse_scenario(text, "my-ddp.yaml")


def pool_of(tmp_path: Path) -> AgentPool:
    config = WorkloadConfig("127.0.0.1:1,127.0.0.1:2", "j", "file:///tmp/c", 0.0, 200, 0.1)
    ddp_config = DdpConfig(2, 2, "j-abc", tmp_path / "ddp", tmp_path / "state", save_every=25)
    return AgentPool(config, ddp_config, tmp_path)


def test_each_agent_is_torchrun_on_dtrs_rendezvous_running_the_script(tmp_path: Path) -> None:
    argv = pool_of(tmp_path).argv("a0")
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    for flag in (
        "--nnodes=1:2",
        "--nproc-per-node=2",
        "--rdzv-backend=dtr",
        "--rdzv-endpoint=127.0.0.1:1,127.0.0.1:2",
        "--rdzv-id=j-abc",
        "--local-addr=127.0.0.1",
    ):
        assert flag in argv
    conf = next(a for a in argv if a.startswith("--rdzv-conf="))
    assert "last_call_timeout=3" in conf and "keep_alive_max_attempt=8" in conf
    script = argv.index("dtr.examples.train")
    assert argv[script - 1] == "-m"
    tail = argv[script + 1 :]
    assert tail[tail.index("--events") + 1] == str(tmp_path / "ddp")
    assert tail[tail.index("--steps") + 1] == "200" and tail[tail.index("--save-every") + 1] == "25"


def test_a_script_of_ones_own_replaces_the_installed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert script_from_environment() == ("-m", "dtr.examples.train")
    mine = tmp_path / "train.py"
    mine.write_text("")
    monkeypatch.setenv(SCRIPT_ENV, str(mine))
    assert script_from_environment() == (str(mine),)
    monkeypatch.setenv(SCRIPT_ENV, str(tmp_path / "missing.py"))
    with pytest.raises(InvalidArgument, match="no training script at"):
        script_from_environment()


def test_the_ddp_faults_find_no_target_without_running_agents(tmp_path: Path) -> None:
    rng = random.Random(0)
    agents = Targets(cluster=None, proxies=(), workers=pool_of(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(NoTarget, match="no rank process is running"):
        kill_rank(agents, rng)
    with pytest.raises(NoTarget, match="only 0 agent runs"):
        leave_agent(agents, rng)
    config = WorkloadConfig("127.0.0.1:1", "j", "file:///tmp/c", 0.0, 10)
    workers = WorkerPool(["w0"], config, tmp_path / "w")
    independent = Targets(cluster=None, proxies=(), workers=workers)  # type: ignore[arg-type]
    with pytest.raises(NoTarget, match="not a DDP job"):
        kill_rank(independent, rng)


def test_a_left_agent_is_never_started_again(tmp_path: Path) -> None:
    pool = pool_of(tmp_path)
    pool.left.append("a1")
    with pytest.raises(InvalidArgument, match="agent a1 left the job for good"):
        pool.start("a1")


def test_the_parent_of_a_process_is_read_from_proc() -> None:
    assert parent_of(os.getpid()) == os.getppid()
    assert parent_of(2**22 + 12345) is None  # beyond pid_max: no such process
