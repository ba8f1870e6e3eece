"""Benchmark what faults cost a real DDP job under torchrun: dtr's rendezvous against c10d's.

Run as ``.venv/bin/python benchmarks/ddp_faults.py`` (``make bench``; about
6 minutes on 2 cores). Writes ``benchmarks/results/ddp_faults.json`` (every
number) and ``ddp_faults.md`` (the breakdown, the targets and verdicts).
Each trial's events and torchrun logs stay in ``build/ddp_faults``.

The job: ``examples/ddp/train.py`` (DDP, gloo, ``OMP_NUM_THREADS=1``, paced
by ``--step-time``) under two torchrun agents of one rank each on
127.0.0.1 (two "nodes": the agents re-rendezvous as on a real cluster),
``--max-restarts 3``, with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` as
docs/torchrun.md advises for both backends. Its shards and checkpoints go
through a 3-replica ``LocalCluster`` in every trial (fresh coordinators and a
job of the trial's own, on one real etcd started for the run); only
``--rdzv-backend`` differs: ``dtr`` (endpoint: the coordinators) or ``c10d``
(endpoint: a free loopback port).

First a short fault-free job of each backend, not reported (the first torch
imports from disk). Then:

1. Rank failure, both backends, interleaved (dtr, c10d, dtr, ...): once
   the checkpoint of step ``--kill-checkpoint`` is saved and the group is
   ``--replay-steps`` further, rank 1's process gets SIGKILL (its pid from
   the events, checked to be a child of one of our agents). The events then
   give restart, rendezvous, load and replay times and the total time lost
   (``ddp_faults_report.rank_failure``); the agents run with ``LOGLEVEL=INFO``
   so that their "Rendezvous'ing" / "Rendezvous complete" lines split the
   restart into detection, the agents' rendezvous (where the backends differ)
   and spawning. Target: median total, dtr / c10d <= 1.2.
2. Leader kill, dtr only: the coordinator leader gets SIGKILL while the ranks
   train. Targets: no process restarts; no gap between two steps of a rank,
   around the kill, longer than the coordinators' lease TTL + 1 s.

Bounded: every trial has a deadline (its agents get SIGTERM, then SIGKILL,
past it), no pair of trials starts after ``--budget-s``; everything started
is stopped by its own handle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_paths import REPO, RESULTS, git_commit, run_facts
from ddp_faults_job import (
    LEASE_TTL_S,
    WORLD,
    Job,
    kill_leader,
    kill_rank,
    run_job,
    start_cluster,
    start_job,
)
from ddp_faults_report import PHASES, Event, IncompleteTrial, finished, leader_kill, rank_failure
from ddp_faults_write import write_results

from dtr.etcd import EtcdCluster

NAME = "ddp_faults"
BACKENDS = ("dtr", "c10d")
WORK = REPO / "build" / NAME


def warm_up(etcd: EtcdCluster, backend: str, args: argparse.Namespace) -> float:
    """A short fault-free job: the first torch imports from disk are not a trial's."""
    job = Job(f"warm-{backend}-{uuid.uuid4().hex[:6]}", WORK / f"warm-up-{backend}")
    job.note["steps"] = 10
    started = time.monotonic()
    with start_cluster(etcd, job) as cluster:
        start_job(job, cluster, backend, args)
        run_job(job, lambda _: False, lambda _: None, args.trial_timeout_s, cluster)
    return round(time.monotonic() - started, 1)


def rank_trial(etcd: EtcdCluster, backend: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    job = Job(f"rank-{backend}-{n}-{uuid.uuid4().hex[:6]}", WORK / f"rank-{backend}-{n}")
    job.note["steps"] = args.kill_checkpoint + 2 * args.replay_steps + args.save_every
    started = time.monotonic()

    checkpoint: int = args.kill_checkpoint
    kill_step: int = checkpoint + args.replay_steps

    def ready(events: list[Event]) -> bool:
        saved = any(e.event == "saved" and (e.step or 0) >= checkpoint for e in events)
        return (
            saved
            and max((e.step or 0 for e in events if e.event == "step"), default=0) >= kill_step
        )

    with start_cluster(etcd, job) as cluster:
        start_job(job, cluster, backend, args)
        run_job(job, ready, kill_rank(job, rank=1), args.trial_timeout_s, cluster)
    kill_t = job.kill_t or 0.0

    def analyse() -> dict[str, Any]:
        figures = rank_failure(job.events(), kill_t, WORLD, job.agent_marks()).as_dict()
        return figures | job.cpu_between(kill_t, kill_t + figures["total_s"])

    return _analysed(_row(job, "rank failure", backend, n, started), analyse)


def leader_trial(etcd: EtcdCluster, n: int, args: argparse.Namespace) -> dict[str, Any]:
    job = Job(f"leader-{n}-{uuid.uuid4().hex[:6]}", WORK / f"leader-{n}")
    window = LEASE_TTL_S + 5.0
    job.note["steps"] = args.leader_kill_step + int(window / max(args.step_time, 0.02)) + 40
    started = time.monotonic()

    kill_step: int = args.leader_kill_step

    def ready(events: list[Event]) -> bool:
        return max((e.step or 0 for e in events if e.event == "step"), default=0) >= kill_step

    with start_cluster(etcd, job) as cluster:
        start_job(job, cluster, "dtr", args)
        run_job(job, ready, kill_leader(job, cluster), args.trial_timeout_s, cluster)
    kill_t = job.kill_t or 0.0
    return _analysed(
        _row(job, "leader kill", "dtr", n, started),
        lambda: leader_kill(job.events(), kill_t, window).as_dict(),
    )


def _row(job: Job, kind: str, backend: str, n: int, started: float) -> dict[str, Any]:
    done, agree = finished(job.events(), WORLD)
    codes = job.note["exit_codes"]
    ok = job.kill_t is not None and not job.note["timed_out"] and codes == [0] * WORLD
    row: dict[str, Any] = {
        "kind": kind,
        "backend": backend,
        "trial": n,
        "rdzv_id": job.name,
        "ok": ok and done == WORLD and agree and "error" not in job.note,
        "exit_codes": codes,
        "timed_out": job.note["timed_out"],
        "ranks_done": done,
        "hashes_agree": agree,
        "wall_s": round(time.monotonic() - started, 1),
        "kill_t": job.kill_t,
        **{k: v for k, v in job.note.items() if k not in ("argv", "exit_codes", "timed_out")},
    }
    if job.kill_t is None and "error" not in row:
        row["error"] = "the fault was never injected (the job ended or timed out first)"
    return row


def _analysed(row: dict[str, Any], analyse: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The row with the fault's figures added (or why there are none), printed in one line."""
    if "error" not in row:
        try:
            row.update(analyse())
        except IncompleteTrial as err:
            row["ok"], row["error"] = False, str(err)
    figures = " ".join(
        f"{k}={row[k]}"
        for k in (*PHASES, "total_s", "resumed_step", "restarts", "longest_gap_s")
        if k in row
    )
    print(
        f"  {row['kind']} {row['backend']} #{row['trial']}: ok={row['ok']} "
        f"exit={row['exit_codes']} {figures} ({row['wall_s']} s)",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=Path, default=REPO / "examples" / "ddp" / "train.py")
    parser.add_argument("--trials", type=int, default=6, help="rank-failure trials per backend")
    parser.add_argument("--leader-trials", type=int, default=2)
    parser.add_argument("--step-time", type=float, default=0.05)
    parser.add_argument("--save-every", type=int, default=20)
    parser.add_argument("--kill-checkpoint", type=int, default=40)
    parser.add_argument("--replay-steps", type=int, default=10)
    parser.add_argument("--leader-kill-step", type=int, default=30)
    parser.add_argument("--trial-timeout-s", type=float, default=120.0)
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="no 4th or later pair starts after this"
    )
    args = parser.parse_args()
    if not 1 <= args.trials <= 20 or not 0 <= args.leader_trials <= 20:
        parser.error("--trials must be in [1, 20] and --leader-trials in [0, 20]")
    if args.kill_checkpoint % args.save_every or args.kill_checkpoint < args.save_every:
        parser.error("--kill-checkpoint must be a positive multiple of --save-every")
    if not args.script.is_file():
        parser.error(f"no training script at {args.script}")
    shutil.rmtree(WORK, ignore_errors=True)
    began = time.monotonic()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    etcd = EtcdCluster.start(1)
    warm_ups: dict[str, float] = {}
    try:
        for backend in BACKENDS:
            warm_ups[backend] = warm_up(etcd, backend, args)
        for n in range(1, args.trials + 1):
            if n > 3 and time.monotonic() - began > args.budget_s:  # 3 pairs at least
                print(f"  budget of {args.budget_s} s spent: no more rank-failure trials")
                break
            for backend in BACKENDS:
                rows.append(rank_trial(etcd, backend, n, args))
        for n in range(1, args.leader_trials + 1):
            if n > 2 and time.monotonic() - began > args.budget_s:
                break
            rows.append(leader_trial(etcd, n, args))
    finally:
        etcd.stop()
    facts = {
        **run_facts(),
        "commit": git_commit(),
        "wall_s": round(time.monotonic() - began, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "script": os.path.relpath(args.script, REPO),
        "settings": {k: v for k, v in vars(args).items() if k != "script"},
        "lease_ttl_s": LEASE_TTL_S,
        "warm_up_wall_s": warm_ups,
        "layout": "2 torchrun agents x 1 rank, gloo, OMP_NUM_THREADS=1, --max-restarts 3, "
        "3 coordinator replicas (fresh per trial, a job each) on 1 etcd member, all on 127.0.0.1",
    }
    write_results(RESULTS, NAME, facts, rows, LEASE_TTL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
