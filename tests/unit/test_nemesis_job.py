"""``job-restart`` in a scenario: refused beside simulated workers, which it cannot restart."""

from __future__ import annotations

import pytest

from dtr.chaos.scenario import FaultKind, Scenario, ScenarioError


def test_a_job_restart_beside_simulated_workers_is_refused_naming_the_field() -> None:
    with pytest.raises(ScenarioError, match="job-restart needs sim_workers: 0") as refused:
        Scenario(
            "restart-sims",
            "a job restart with simulated workers",
            ((FaultKind.JOB_RESTART, 1.0),),
            sim_workers=200,
            sim_processes=2,
            step_time_s=0.05,
        )
    assert refused.value.field == "sim_workers"


def test_a_job_restart_of_real_workers_only_is_accepted() -> None:
    scenario = Scenario("restart", "a job restart", ((FaultKind.JOB_RESTART, 1.0),))
    assert scenario.kinds == {FaultKind.JOB_RESTART}
