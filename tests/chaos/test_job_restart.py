"""``job-restart``: the whole job stopped and started again, etcd kept or wiped.

One run of the shipped ``job-restart`` scenario (three replicas, three
training workers) with a fixed plan of two job restarts; seed 0's target
draws make the first keep etcd and the second wipe it. Every checker must pass, each life
judged on its own, and the run must show what each kind of restart is for:
after the kept one the workers resume from a complete step; after the wipe
they start at step 0 as a new job life and set aside the old life's commit
records still queued (the nemesis killed the replicas first, so there were
some).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtr.chaos.history import Event, read_history
from dtr.chaos.runner import run_scenario
from dtr.chaos.scenario import FaultKind, ScheduledFault
from dtr.chaos.scenario_files import get_scenario
from dtr.worker.commit_queue import CommitQueue

pytestmark = pytest.mark.integration

#: ``target_rng(0)``'s first two draws, 0.55 and 0.18: ``restart_job`` wipes below 0.5,
#: so the first restart keeps etcd and the second wipes it. Each returns once the
#: job trains again, so the second starts when the first is over.
SEED, DURATION_S = 0, 14.0
PLAN = [
    ScheduledFault(1.0, FaultKind.JOB_RESTART, 0.5),
    ScheduledFault(2.0, FaultKind.JOB_RESTART, 0.5),
]


def restarts(events: list[Event]) -> list[tuple[float, Event]]:
    """Each job restart: when the nemesis began it, and its ``ok`` (the job training again)."""
    began = {e.op_id: e.time for e in events if e.f == "restart" and e.type == "invoke"}
    return [(began[e.op_id], e) for e in events if e.f == "restart" and e.type == "ok"]


def loads_between(events: list[Event], start: float, end: float) -> dict[str, object]:
    """Each worker's first ``load`` answer in (start, end): where its new process resumed.

    A worker still starting when the next restart killed it loaded nothing.
    """
    first: dict[str, object] = {}
    for e in events:
        if e.f == "load" and e.type == "ok" and start < e.time < end:
            first.setdefault(e.process, e.value["step"])
    return first


def test_a_job_restarted_over_kept_or_wiped_etcd_resumes_or_starts_a_new_life(
    tmp_path: Path,
) -> None:
    result = run_scenario(
        get_scenario("job-restart"),
        seed=SEED,
        work_dir=tmp_path,
        duration_s=DURATION_S,
        plan=PLAN,
    )

    failed = {c.name: [v.message for v in c.violations] for c in result.checks if not c.ok}
    assert result.passed, failed
    events = read_history(sorted((tmp_path / "history").glob("*.jsonl")))
    (kept_at, kept), (wiped_at, wiped) = restarts(events)
    assert (kept.value["etcd"], wiped.value["etcd"]) == ("kept", "wiped")
    assert next(c for c in result.checks if c.name == "lives").checked == 2

    resumed = loads_between(events, kept_at, wiped_at)
    assert resumed and all(isinstance(s, int) and s > 0 for s in resumed.values()), resumed
    workers = [f"worker:{w}" for w in ("w0", "w1", "w2")]
    started_over = loads_between(events, wiped_at, float("inf"))
    assert started_over == dict.fromkeys(workers), started_over  # step 0: no checkpoint

    left_queued = sum(wiped.value["queued"].values())
    set_aside = 0
    for path in sorted((tmp_path / "queues").glob("*.sqlite")):
        with CommitQueue(path) as queue:
            set_aside += queue.counts()["set_aside"]
    assert 0 < left_queued <= set_aside, (left_queued, set_aside)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("w*.log")))
    assert "made for another life of the job" in logs
