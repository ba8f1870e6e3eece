"""The chaos pieces end to end: real training processes, a leader kill, every checker.

Two ``dtr.chaos.workload`` processes train with ``Worker``, ``ShardSampler``
and ``CheckpointManager`` against three real replicas; the harness polls
status into the same history; the leader is killed mid-run. After the run
the final state is captured (parts verified on storage) and every checker of
``dtr.chaos.checkers`` must pass. A second case feeds the checkers the same
history with a forged violation, so a checker that passes everything fails
this test.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from dtr.chaos.checkers import check_all
from dtr.chaos.cluster import LocalCluster
from dtr.chaos.history import Event, History, read_history
from dtr.chaos.observer import StatusPoller, capture_final_state
from dtr.etcd import RunningEtcd
from helpers import wait_until

pytestmark = pytest.mark.integration

WORKERS = ("w0", "w1")
STEPS = 160


def start_workload(
    cluster: LocalCluster, root: Path, worker_id: str, start: float
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "dtr.chaos.workload",
        *("--coordinators", cluster.coordinators, "--job", cluster.job),
        *("--worker-id", worker_id, "--start", repr(start)),
        *("--history", str(root / f"{worker_id}.jsonl")),
        *("--checkpoint", f"file://{root}/ckpt", "--queue", str(root / f"{worker_id}.sqlite")),
        *("--steps", str(STEPS), "--save-every", "20", "--heartbeat-interval-s", "0.3"),
    ]
    return subprocess.Popen(
        command, stderr=(root / f"{worker_id}.log").open("wb"), start_new_session=True
    )


def trained_steps(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for e in read_history([path]) if e.f == "train")


def test_a_leader_kill_during_training_breaks_no_invariant(
    etcd: RunningEtcd, tmp_path: Path
) -> None:
    job = f"chaos-{uuid.uuid4().hex[:8]}"
    with LocalCluster.start(replicas=3, etcd=etcd, job=job, heartbeat_timeout_s=10.0) as cluster:
        with History(tmp_path / "harness.jsonl") as history:
            poller = StatusPoller(cluster, history, interval_s=0.3).start()
            workers = [start_workload(cluster, tmp_path, w, history.start) for w in WORKERS]
            try:
                wait_until(
                    lambda: trained_steps(tmp_path / "w0.jsonl") >= 40, 120, "40 steps of w0"
                )
                old = cluster.leader()
                op_id = history.op_id("nemesis")
                history.record(
                    Event(
                        history.clock(),
                        "nemesis",
                        "invoke",
                        "kill",
                        {"replica": old.replica_id},
                        op_id,
                    )
                )
                old.kill()
                history.record(
                    Event(
                        history.clock(), "nemesis", "ok", "kill", {"replica": old.replica_id}, op_id
                    )
                )
                cluster.wait_new_leader(old, timeout_s=30)
                codes = [w.wait(timeout=180) for w in workers]
            finally:
                for worker in workers:
                    if worker.poll() is None:
                        worker.kill()
                poller.stop()
            poller.poll()
        assert codes == [0, 0], [(tmp_path / f"{w}.log").read_text()[-2000:] for w in WORKERS]
        final = capture_final_state(
            cluster, f"file://{tmp_path}/ckpt", {w: tmp_path / f"{w}.sqlite" for w in WORKERS}
        )
    events = read_history(tmp_path.glob("*.jsonl"))
    assert final.latest_step == STEPS
    assert poller.polls > 0

    # The workloads ran to their last step and exited: nobody is live to keep
    # training, so liveness (meant for a runner's settle phase) judges no worker.
    results = {r.name: r for r in check_all(events, replace(final, live_workers=()), settle_s=5.0)}
    failed = {name: [v.message for v in r.violations] for name, r in results.items() if not r.ok}
    assert not failed, failed
    assert all(results[name].checked > 0 for name in ("writes", "barriers", "shards", "commits"))

    forged = Event(
        events[-1].time + 1,
        "worker:w0",
        "ok",
        "write",
        {"replica": "impostor"},
        term=max(e.term or 0 for e in events),
    )
    assert not next(r for r in check_all([*events, forged], final) if r.name == "writes").ok
