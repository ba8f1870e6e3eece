"""Benchmark a fleet registering at once: grouped registrations vs a transaction each.

Run as ``.venv/bin/python benchmarks/register_burst.py`` (``make bench``).
Writes ``benchmarks/results/register_burst.json`` (every number) and
``register_burst.md`` (the table, the targets and their verdicts).

Why (issue 18): a job's workers start together, and each ``RegisterWorker``
was its own fenced transaction behind the leader's write lock: 1,000
concurrent registrations took 1.93 s. The leader now writes the
registrations that queued during one transaction together in the next, up
to 100 (``coordinator/registrations.py``); ``--register-batch-max 1`` keeps
the old way for this comparison.

What runs, for each fleet size and mode: a one-replica ``LocalCluster`` with
its own single-member etcd, all on 127.0.0.1 and a heartbeat timeout no round
can reach; then R rounds in which every worker registers at once through the
chaos harness's asyncio client (``dtr.chaos.sim_client``, the real protocol on
grpc.aio, one process). Round 1 registers new workers; later rounds register
the same ids again, as a whole fleet restarting does (each a new incarnation).
Per round: the burst (first send to last answer), each registration's
latency and the etcd transactions it used. Bounded: W x R calls per mode,
each under a deadline; everything started is stopped by its handle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from bench_paths import RESULTS, git_commit, run_facts

from dtr.chaos.cluster import LocalCluster
from dtr.chaos.sim_client import SimClient, register_request
from dtr.retry import RetryPolicy
from dtr.store import EtcdStore

MODES = {"grouped (100 a transaction)": 100, "a transaction each": 1}
#: Targets: the grouped burst at the largest fleet within this many seconds,
#: and at most this fraction of a transaction each's (medians, same run).
TARGET_S = 1.0
TARGET_RATIO = 0.5
_POLICY = RetryPolicy(deadline_s=120.0)
_ATTEMPT_S = 60.0  # one attempt outlasts any queue here: a retry would be a new incarnation


@dataclass(frozen=True)
class Round:
    mode: str
    workers: int
    round: int
    burst_s: float
    p50_s: float
    p99_s: float
    transactions: int
    registered: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    args = parser.parse_args()
    if not 1 <= args.clients <= 16:
        parser.error("--clients must be in [1, 16]")
    if args.rounds < 1 or any(not 1 <= w <= 5000 for w in args.workers):
        parser.error("--rounds must be >= 1 and each of --workers in [1, 5000]")
    started = time.monotonic()
    rounds: list[Round] = []
    for workers in args.workers:
        for mode, batch in MODES.items():
            rounds += run_mode(mode, batch, workers, args.rounds, args.clients)
    write_results(rounds, args, time.monotonic() - started)
    return 0


def run_mode(mode: str, batch: int, workers: int, count: int, clients: int) -> list[Round]:
    job = f"reg-{uuid.uuid4().hex[:8]}"
    extra = ["--register-batch-max", str(batch)]
    with LocalCluster.start(
        replicas=1, job=job, heartbeat_timeout_s=3600.0, extra_args=extra
    ) as cluster:
        cluster.leader(timeout_s=30)
        store = EtcdStore(cluster.etcd_endpoints)
        try:
            return asyncio.run(
                _rounds(cluster, store, mode, workers=workers, count=count, clients=clients)
            )
        finally:
            store.close()


async def _rounds(
    cluster: LocalCluster, store: EtcdStore, mode: str, *, workers: int, count: int, clients: int
) -> list[Round]:
    ids = [f"r{i:05d}" for i in range(workers)]
    slices = [ids[i::clients] for i in range(clients)]
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(clients + 1)
    answers = context.Queue()
    processes = [
        context.Process(
            target=_client_process,
            args=(cluster.coordinators, cluster.job, s, count, (ready, answers)),
            daemon=True,
        )
        for s in slices
    ]
    for process in processes:
        process.start()
    try:
        results = []
        for n in range(1, count + 1):
            await asyncio.to_thread(ready.wait, 60)  # every client connected and warmed up
            before = await asyncio.to_thread(store.revision)
            began = time.monotonic()
            await asyncio.to_thread(ready.wait, 120)  # every client finished this round
            used = await asyncio.to_thread(store.revision) - before
            results.append((n, began, used))
        done = [await asyncio.to_thread(answers.get, True, 60) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    rounds = []
    for n, began, used in results:
        latencies = sorted(lat for d in done for lat in d[n - 1][0])
        ends = [d[n - 1][1] for d in done]
        incarnations = set().union(*(d[n - 1][2] for d in done))
        if incarnations != {n}:
            raise SystemExit(f"round {n}: incarnations {sorted(incarnations)}, expected {n}")
        burst = max(ends) - began
        rounds.append(
            Round(
                mode=mode,
                workers=workers,
                round=n,
                burst_s=round(burst, 4),
                p50_s=round(statistics.median(latencies), 4),
                p99_s=round(latencies[int(0.99 * (len(latencies) - 1))], 4),
                transactions=used,
                registered=len(latencies),
            )
        )
        print(f"  {mode}, {workers} workers, round {n}: burst {burst:.3f} s, {used} txns")
    return rounds


def _client_process(coordinators: str, job: str, ids: list[str], count: int, sync: Any) -> None:
    """One client process: per round, wait for the start, register ``ids`` at once.

    ``sync`` is (the start/finish barrier, the queue for this process's answers).
    """
    ready, answers = sync

    async def rounds() -> list[tuple[list[float], float, set[int]]]:
        client = SimClient(coordinators, job=job, policy=_POLICY, attempt_timeout_s=_ATTEMPT_S)
        try:
            await _burst(client, [f"warm-up-{ids[0]}"])  # channel dialled, leader found
            out = []
            for _ in range(count):
                await asyncio.to_thread(ready.wait, 60)
                latencies, incarnations = await _burst(client, ids)
                out.append((latencies, time.monotonic(), incarnations))
                await asyncio.to_thread(ready.wait, 120)
            return out
        finally:
            await client.close()

    answers.put(asyncio.run(rounds()))


async def _burst(client: SimClient, ids: list[str]) -> tuple[list[float], set[int]]:
    async def one(worker: str) -> tuple[float, int]:
        began = time.perf_counter()
        answer = await client.call(
            "RegisterWorker",
            register_request(worker),
            caller=worker,
            operation=f"register {worker}",
            mutating=True,
        )
        return time.perf_counter() - began, int(answer.incarnation)

    done = await asyncio.gather(*(one(w) for w in ids))
    return [latency for latency, _ in done], {incarnation for _, incarnation in done}


def write_results(rounds: list[Round], args: argparse.Namespace, wall_s: float) -> None:
    facts = {**run_facts(), "commit": git_commit(), "wall_s": round(wall_s, 1)}
    summary = _summary(rounds)
    largest = max(args.workers)
    grouped, each = (summary[(m, largest)]["burst_median_s"] for m in MODES)
    ratio = grouped / each
    verdicts = {
        "seconds": "PASS" if grouped <= TARGET_S else "FAIL",
        "ratio": "PASS" if ratio <= TARGET_RATIO else "FAIL",
    }
    data = {
        "meta": facts,
        "rounds": [asdict(r) for r in rounds],
        "summary": [{"mode": m, "workers": w, **v} for (m, w), v in summary.items()],
        "target": {
            "workers": largest,
            "grouped_burst_s": grouped,
            "at_most_s": TARGET_S,
            "ratio": round(ratio, 3),
            "ratio_at_most": TARGET_RATIO,
        },
        "verdicts": verdicts,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "register_burst.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Registration burst: grouped registrations vs a transaction each",
        "",
        f"- date: {facts['date']}; commit `{facts['commit']}`",
        f"- machine: {facts['cpu_count']} cores, {facts['platform']}, python {facts['python']}",
        f"- command: `{facts['command']}` (wall time {facts['wall_s']} s)",
        "- setup: 1 replica, 1 etcd member, on 127.0.0.1; every worker registers at once "
        "through the chaos harness's asyncio client in this process (the client's own cost "
        f"included); {args.rounds} rounds: new workers first, then the same ids again (a "
        "fleet restarting); `transactions` is the etcd revisions a round used",
        "",
        "| mode | workers | burst median s | burst max s | call p50 s | call p99 s "
        "| transactions per round | registered |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (mode, workers), v in summary.items():
        lines.append(
            f"| {mode} | {workers} | {v['burst_median_s']:.3f} | {v['burst_max_s']:.3f} "
            f"| {v['p50_median_s']:.3f} | {v['p99_median_s']:.3f} "
            f"| {v['transactions_median']:g} | {v['registered']} |"
        )
    lines += [
        "",
        f"Targets at {largest} workers (medians, same run): the grouped burst at most "
        f"{TARGET_S:g} s: **{grouped:.3f} s, {verdicts['seconds']}**; at most {TARGET_RATIO}x "
        f"a transaction each: **{ratio:.3f}x, {verdicts['ratio']}**.",
        "",
    ]
    (RESULTS / "register_burst.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _summary(rounds: list[Round]) -> dict[tuple[str, int], dict[str, float]]:
    grouped: dict[tuple[str, int], list[Round]] = {}
    for r in rounds:
        grouped.setdefault((r.mode, r.workers), []).append(r)
    return {
        key: {
            "burst_median_s": statistics.median(r.burst_s for r in group),
            "burst_max_s": max(r.burst_s for r in group),
            "p50_median_s": statistics.median(r.p50_s for r in group),
            "p99_median_s": statistics.median(r.p99_s for r in group),
            "transactions_median": statistics.median(r.transactions for r in group),
            "registered": sum(r.registered for r in group),
        }
        for key, group in grouped.items()
    }


if __name__ == "__main__":
    sys.exit(main())
