"""Simulated chaos workers (``dtr.chaos.sim_workload`` under ``SimWorkerPool``) for real.

Two processes of 40 simulated workers each train against three real
replicas while the harness polls status into the same history; the leader is
killed mid-run and restarted. Every checker of ``dtr.chaos.checkers`` must
pass on the merged history, every simulated worker must train every step, and
a checkpoint step must complete with all 80 parts — whose bytes the real
checkpoint decoder reads. The other cases: the pool's command line is what
the workload accepts, bad input costs one line on stderr and starts nothing,
and SIGTERM stops a process of simulated workers promptly.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from dtr.chaos.checkers import FinalState, check_all
from dtr.chaos.cluster import LocalCluster
from dtr.chaos.history import Event, History, read_history
from dtr.chaos.observer import StatusPoller, capture_final_state
from dtr.chaos.sim_checkpoint import encode_part, part_name
from dtr.chaos.sim_pool import SimWorkerPool
from dtr.chaos.sim_workload import EXIT_SIGNALLED, EXIT_USAGE, parse
from dtr.chaos.workers import WorkloadConfig
from dtr.etcd import pick_free_ports
from dtr.storage import open_storage
from dtr.worker.checkpoint import part_name as real_part_name
from dtr.worker.checkpoint_format import decode
from helpers import wait_until

pytestmark = pytest.mark.integration

PROCESSES, PER_PROCESS, STEPS, SAVE_EVERY = 2, 40, 60, 20
STEP_TIME_S = 0.1


def sim_config(coordinators: str, job: str, root: Path, start: float) -> WorkloadConfig:
    return WorkloadConfig(
        coordinators=coordinators,
        job=job,
        checkpoint_uri=f"file://{root}/ckpt",
        start=start,
        steps=STEPS,
        step_time_s=STEP_TIME_S,
        save_every=SAVE_EVERY,
        barrier_timeout_s=30.0,
        heartbeat_interval_s=1.0,
    )


def latest_train_step(path: Path) -> int:
    """The newest ``train`` step in the last few KiB of a history (cheap enough to poll)."""
    if not path.exists():
        return 0
    with path.open("rb") as history:
        history.seek(max(history.seek(0, 2) - 8192, 0))
        lines = history.read().decode(errors="replace").splitlines()[1:]
    steps = [json.loads(line)["value"]["step"] for line in lines if '"f": "train"' in line]
    return max(steps, default=0)


def record_kill(history: History, replica_id: str, kill: Callable[[], None]) -> None:
    """``kill()`` between the nemesis's invoke and ok, as ``dtr.chaos.nemesis`` records it."""
    op_id = history.op_id("nemesis")
    value = {"target": replica_id, "role": "leader"}
    history.record(Event(history.clock(), "nemesis", "invoke", "kill", value, op_id))
    kill()
    history.record(Event(history.clock(), "nemesis", "ok", "kill", value, op_id))


def run_with_a_leader_kill(tmp_path: Path) -> tuple[SimWorkerPool, FinalState]:
    """The pool's run against a fresh cluster whose leader is killed (and restarted) mid-run."""
    job = f"sim-{uuid.uuid4().hex[:8]}"
    with LocalCluster.start(
        replicas=3,
        etcd_members=1,
        job=job,
        work_dir=tmp_path / "logs",
        lease_ttl_s=3,
        renew_deadline_s=2,
        heartbeat_timeout_s=5,
    ) as cluster:
        with History(tmp_path / "harness.jsonl") as history:
            config = sim_config(cluster.coordinators, job, tmp_path, history.start)
            pool = SimWorkerPool(PROCESSES, PER_PROCESS, config, tmp_path / "sim")
            poller = StatusPoller(cluster, history, interval_s=0.5).start()
            try:
                pool.start_all()
                first = pool.history_path(0)
                wait_until(lambda: latest_train_step(first) >= 25, 60, "step 25 of sim-0")
                old = cluster.leader()
                record_kill(history, old.replica_id, old.kill)
                cluster.wait_new_leader(old, timeout_s=30)
                old.start()
                cluster.wait_ready(timeout_s=30)
                finished = pool.wait_all(time.monotonic() + 120)
            finally:
                stopped = pool.stop_all()
                poller.stop()
            poller.poll()
        tails = [pool.log_tail(i, 20) for i in range(PROCESSES)]
        assert finished and not stopped, tails
        assert [o.exit_code for o in pool.outcomes.values()] == [0] * PROCESSES, tails
        return pool, capture_final_state(cluster, config.checkpoint_uri, {})


def test_simulated_workers_ride_out_a_leader_kill_and_pass_every_check(tmp_path: Path) -> None:
    pool, final = run_with_a_leader_kill(tmp_path)
    events = read_history([*pool.history_paths(), tmp_path / "harness.jsonl"])
    # Every simulated worker ran to its last step and deregistered: nobody is
    # live to keep training, so liveness (meant for a runner's settle phase)
    # judges no worker, as in test_chaos_smoke.
    results = {r.name: r for r in check_all(events, replace(final, live_workers=()), settle_s=5)}
    failed = {name: [v.message for v in r.violations] for name, r in results.items() if not r.ok}
    assert not failed, failed
    assert all(results[name].checked > 0 for name in ("writes", "barriers", "shards", "commits"))
    terms = {e.term for e in events if e.f == "write" and e.type == "ok"}
    assert len(terms) >= 2, "no write was accepted by the new leader: the kill came too late"

    trained: dict[str, int] = defaultdict(int)
    for event in events:
        if event.f == "train":
            trained[event.process] = max(trained[event.process], int(event.value["step"]))
    assert trained == {f"worker:{w}": STEPS for w in pool.worker_ids}
    everyone = tuple(sorted(pool.worker_ids))
    complete = [step for step, workers in final.complete_steps.items() if workers == everyone]
    assert complete, {step: len(workers) for step, workers in final.complete_steps.items()}
    assert all(final.verified_parts[(step, w)] for step in complete for w in everyone)
    assert_a_part_decodes(pool.config.checkpoint_uri, max(complete), everyone[0])


def assert_a_part_decodes(uri: str, step: int, worker_id: str) -> None:
    """A simulated part is a real format-1 part, where a real worker would put it."""
    assert part_name(step, worker_id) == real_part_name(step, worker_id)
    storage = open_storage(uri)
    try:
        state, meta = decode(storage.read(real_part_name(step, worker_id)))
    finally:
        storage.close()
    assert state == {"step": step, "worker_id": worker_id}
    assert meta["step"] == step and meta["worker_id"] == worker_id


def test_a_simulated_part_holds_only_its_step_and_worker() -> None:
    data = encode_part(40, "s1-7", 12)
    assert len(data) % 64 == 0 and len(data) < 512
    state, meta = decode(data)
    assert state == {"step": 40, "worker_id": "s1-7"}
    assert meta == {"step": 40, "worker_id": "s1-7", "generation": 12}


def test_every_event_field_reaches_the_history_line() -> None:
    event = Event(1.5, "worker:s0-1", "ok", "write", {"replica": "r"}, "op#1", 7, 9)
    assert set(json.loads(event.to_json())) == {f.name for f in dataclasses.fields(Event)}
    assert Event.from_json(event.to_json()) == event


def test_the_pool_starts_processes_with_arguments_the_workload_accepts(tmp_path: Path) -> None:
    config = sim_config("127.0.0.1:1,127.0.0.1:2", "job-1", tmp_path, 12.5)
    pool = SimWorkerPool(3, 4, config, tmp_path / "sim")
    parsed = parse(pool.argv(2)[3:])
    assert parsed.worker_ids == tuple(pool.worker_ids_of(2)) == ("s2-0", "s2-1", "s2-2", "s2-3")
    assert parsed.history == tmp_path / "sim" / "history" / "sim-2.jsonl"
    assert parsed.start == 12.5 and parsed.settings.steps == STEPS
    assert len(pool.worker_ids) == 12 == len(set(pool.worker_ids))
    assert pool.history_paths()[0].name == "sim-0.jsonl"


@pytest.mark.parametrize(
    "bad",
    [
        ["--prefix", "s0", "--count", "0"],
        ["--worker-ids", "s0-0,bad id"],
        ["--worker-ids", "s0-0,s0:1"],
        ["--worker-ids", "s0-0,s0-0"],
        ["--prefix", "s0"],
        ["--worker-ids", "s0-0", "--steps", "-1"],
        ["--worker-ids", "s0-0", "--heartbeat-interval-s", "nan"],
    ],
)
def test_bad_arguments_cost_one_line_on_stderr_and_start_nothing(
    bad: list[str], tmp_path: Path
) -> None:
    history = tmp_path / "sim.jsonl"
    command = [
        *(sys.executable, "-m", "dtr.chaos.sim_workload", "--coordinators", "127.0.0.1:1"),
        *("--job", "j", "--history", str(history), "--start", "0"),
        *("--checkpoint", f"file://{tmp_path}/ckpt", *bad),
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USAGE
    assert len(done.stderr.splitlines()) == 1 and "error" in done.stderr, done.stderr
    assert done.stdout == ""
    assert not history.exists() and not (tmp_path / "ckpt").exists()


def test_sigterm_stops_a_process_of_simulated_workers_promptly(tmp_path: Path) -> None:
    """Nobody listens at the coordinator address: every worker is stuck retrying its register."""
    (port,) = pick_free_ports(1)
    config = sim_config(f"127.0.0.1:{port}", "job-1", tmp_path, time.monotonic())
    pool = SimWorkerPool(1, 50, config, tmp_path / "sim")
    pool.start_all()
    try:
        path = pool.history_path(0)
        wait_until(lambda: path.exists() and path.stat().st_size > 0, 30, "the first event")
        started = time.monotonic()
        assert pool.stop_all(grace_s=10) == ["sim-0"]
        assert time.monotonic() - started < 5
    finally:
        pool.stop_all()
    outcome = pool.outcomes["sim-0"]
    assert outcome.exit_code == EXIT_SIGNALLED and outcome.stopped, pool.log_tail(0)
    assert "stopped by a signal" in pool.log_tail(0)
    assert len(read_history([path])) >= 50  # 50 register invokes, no torn line
