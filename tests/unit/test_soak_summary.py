"""The soak's committed summary (benchmarks/soak.py): figures folded from run results.

Built from ``RunResult`` values as ``run_scenario`` returns them (no cluster:
the runs themselves are the chaos tests' business); the summary must count
faults by kind and outcome, violations by checker, and take failover
percentiles over every run together.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from dtr.chaos.checker_base import CheckResult, Violation
from dtr.chaos.measures import Failovers
from dtr.chaos.nemesis import FaultRecord
from dtr.chaos.runner import RunResult
from dtr.chaos.scenario import FaultKind, Scenario

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _soak() -> ModuleType:
    if str(SOAK.parent) not in sys.path:  # soak.py imports its sibling bench_paths
        sys.path.insert(0, str(SOAK.parent))
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(
    name: str, faults: list[FaultRecord], checks: list[CheckResult], times: tuple[float, ...]
) -> RunResult:
    scenario = Scenario(name=name, description="d", faults=((FaultKind.LEADER_KILL, 1.0),))
    return RunResult(
        scenario=scenario,
        seed=7,
        work_dir=Path("/tmp/x"),
        schedule=(),
        faults=tuple(faults),
        operations={},
        checks=tuple(checks),
        failovers=Failovers(times, unmeasured=1),
        workers={},
        elapsed_s=1.0,
        settled_s=times[0] if times else None,
    )


def test_the_summary_folds_every_run_into_one_set_of_figures() -> None:
    soak = _soak()
    kill, rack = FaultKind.LEADER_KILL, FaultKind.RACK_FAILURE
    ok = CheckResult("record-fencing", True, 10, ())
    broken = CheckResult("barriers", False, 5, (Violation("a"), Violation("b")), left_off=3)
    first = _result(
        "soak-fleet",
        [FaultRecord(kill, "healed", 1.0), FaultRecord(rack, "skipped", 2.0)],
        [ok],
        (1.0, 3.0),
    )
    second = _result("soak-job", [FaultRecord(kill, "healed", 1.0)], [ok, broken], (2.0,))

    summary = soak.summarize([first, second], command="python benchmarks/soak.py", minutes=2)

    assert summary["passed"] is False
    assert summary["faults_by_kind"] == {
        "leader-kill": {"healed": 2},
        "rack-failure": {"skipped": 1},
    }
    assert summary["violations_by_checker"] == {"barriers": 5}
    assert summary["failover_s"]["count"] == 3
    assert summary["failover_s"]["p50"] == 2.0
    assert summary["failover_s"]["max"] == 3.0
    assert summary["failover_s"]["unmeasured"] == 2
    assert summary["settle_s"] == 2.0
    table = soak.markdown(summary)
    assert "| leader-kill | 2 | 2 | 0 |" in table
    assert "| rack-failure | 0 | 0 | 1 |" in table
    assert "| barriers | 5 |" in table and "| record-fencing | 0 |" in table
    assert "verdict: **FAIL**" in table


def test_a_soak_without_leader_faults_says_none_were_measured() -> None:
    soak = _soak()
    summary = soak.summarize(
        [_result("soak-job", [], [CheckResult("record-fencing", True, 1, ())], ())],
        command="c",
        minutes=1,
    )
    assert summary["passed"] is True
    assert summary["failover_s"]["p50"] is None
    assert "p50 -, p99 -, max -" in soak.markdown(summary)
