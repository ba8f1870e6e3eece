"""A whole chaos run for real: ``run_scenario`` and the ``dtr chaos`` command.

The ``leader-crash-loop`` scenario runs with a short duration against its
own etcd, three replicas behind proxies and two training workers: its leader
kills must be injected and healed, failover measured from the history, every
checker must pass, the results and histories must stay in the work dir, the
HTML report must show every term, and no process of the run may outlive it.
The CLI cases check the listing, that bad input costs one line on stderr and
exit status 1, and that Ctrl-C or SIGTERM stops everything the run started.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dtr.chaos.disk import MountError, TmpfsMount
from dtr.chaos.history import read_history
from dtr.chaos.report import write_report
from dtr.chaos.runner import run_scenario
from dtr.chaos.scenario_files import builtin_scenarios, get_scenario
from helpers import wait_until

pytestmark = pytest.mark.integration

DTR = [sys.executable, "-m", "dtr"]
SEED = 16  # two leader kills within DURATION_S
DURATION_S = 10.0  # about 30 s in all on a 2-core machine


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (this test's own aside)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone since listed
            continue
        if text in args and "pytest" not in args:
            found.append(args)
    return found


def test_a_short_leader_kill_run_injects_heals_measures_failover_and_passes_every_check(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    result = run_scenario(
        get_scenario("leader-crash-loop"),
        seed=SEED,
        work_dir=tmp_path,
        duration_s=DURATION_S,
        progress=lines.append,
    )

    failed = {c.name: [v.message for v in c.violations] for c in result.checks if not c.ok}
    assert result.passed, failed
    record = {c.name: c.checked for c in result.checks if c.name.startswith("record-")}
    assert set(record) == {
        "record-fencing",
        "record-barriers",
        "record-checkpoints",
        "record-members",
        "record-generations",
        "record-parts",
        "record-reports",
        "record-completion",
        "record-part-names",
        "record-deaths",
    }
    # etcd's record was judged (no fault here kills a worker for good: no deaths to judge)
    assert all(checked > 0 for name, checked in record.items() if name != "record-deaths"), record
    assert lines[0].startswith(f"seed {SEED}: scenario leader-crash-loop")
    healed = [f for f in result.faults if f.outcome == "healed"]
    assert len(healed) == len(result.schedule) == 2
    assert all(f.healed_s is not None and f.healed_s > f.started_s for f in healed)
    assert result.failovers.times_s, "a leader kill with no measured failover"
    assert all(0 < t < 30 for t in result.failovers.times_s)
    assert result.operations["train"]["ok"] >= 2 * result.scenario.steps
    assert all(outcome.exit_code == 0 for outcome in result.workers.values())

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seed"] == SEED and saved["passed"] is True
    assert len(saved["faults"]) == len(result.faults)
    history = {p.name for p in (tmp_path / "history").glob("*.jsonl")}
    assert history == {"harness.jsonl", "nemesis.jsonl", "w0.jsonl", "w1.jsonl"}
    assert processes_mentioning(result.scenario.name + f"-{SEED}") == []
    assert processes_mentioning(str(tmp_path)) == []

    page = write_report(tmp_path / "report.html", result).read_text()
    assert "PASSED" in page and "<svg" in page
    assert all(f"term {t}" in page for t in _terms_written(tmp_path))


def _terms_written(work_dir: Path) -> set[int]:
    events = read_history(sorted((work_dir / "history").glob("*.jsonl")))
    return {e.term for e in events if e.f == "write" and e.type == "ok" and e.term is not None}


def test_a_work_dir_with_an_earlier_run_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "w0.jsonl").write_text("")
    with pytest.raises(ValueError, match="already holds a run"):
        run_scenario(get_scenario("leader-crash-loop"), seed=1, work_dir=tmp_path)


def test_dtr_chaos_list_prints_every_built_in_scenario() -> None:
    done = subprocess.run(
        [*DTR, "chaos", "list"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    names = [line for line in done.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == list(builtin_scenarios())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["no-such-scenario"],
            "unknown scenario 'no-such-scenario'; known: cancel-storm, disk-full",
        ),
        (["zombie-leader", "--seed", "-3"], "--seed must be a whole number >= 0"),
        (["zombie-leader", "--duration", "-5"], "duration must be a positive number"),
        (["no/such.yaml"], "no/such.yaml: cannot read the scenario file"),
    ],
)
def test_bad_chaos_run_input_is_one_line_on_stderr_and_exit_status_1(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [*DTR, "chaos", "run", *args, "--work-dir", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert not any(tmp_path.iterdir()), "nothing may start on bad input"


def _can_mount_tmpfs(where: Path) -> bool:
    try:
        TmpfsMount(where / "probe", 1).mount().unmount()
    except MountError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_stops_everything_it_started(
    signum: signal.Signals, tmp_path: Path
) -> None:
    """Ctrl-C or SIGTERM mid-fault-phase: exit 130, no process left, the tmpfs unmounted."""
    scenario = "disk-full" if _can_mount_tmpfs(tmp_path) else "leader-crash-loop"
    work_dir = tmp_path / "run"
    out = tmp_path / "out.txt"
    with out.open("w") as sink:
        run = subprocess.Popen(
            [*DTR, "chaos", "run", scenario, "--duration", "30", "--work-dir", str(work_dir)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "fault phase" in out.read_text(), 120, "the fault phase to begin")
        run.send_signal(signum)
        assert run.wait(timeout=60) == 130, out.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert processes_mentioning(str(work_dir)) == []
    assert not (work_dir / "checkpoints").is_mount()
