"""Benchmark a fleet committing one checkpoint step at once: group commit vs a transaction each.

Run as ``.venv/bin/python benchmarks/commit_burst.py`` (``make bench``).
Writes ``benchmarks/results/commit_burst.json`` (every number) and
``commit_burst.md`` (the table, the target and its verdict).

Why: after a save, every worker of a job commits its part within moments of
the others. Written one transaction each behind the leader's write lock,
the last of N commits waits N etcd round trips; the chaos soak's training
workers (200 simulated workers beside them) saw answers 30 s late. The
leader now writes the commits that queued during one transaction together in
the next (``coordinator/commit_batches.py``); ``--commit-batch-max 1`` keeps
the old way for this comparison.

What runs, for each fleet size and mode (the modes alternate): a one-replica
``LocalCluster`` with its own single-member etcd, all on 127.0.0.1 and a
heartbeat timeout no round can reach; W workers registered through the
chaos harness's asyncio client (``dtr.chaos.sim_client``, the real protocol
on grpc.aio, one process); then R rounds in which every worker commits its
part of the round's step at once. Per round: the burst (first send to last
answer), each commit's latency, and the etcd revisions the round used (one
per transaction, retention's deletions included). Bounded: W x R commits per
mode, every call under a deadline; everything started is stopped by its
handle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass

from bench_paths import RESULTS, git_commit, run_facts

from dtr.chaos.cluster import LocalCluster
from dtr.chaos.sim_client import SimClient, register_workers
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.store import EtcdStore
from dtr.worker.checkpoint_rpc import commit_request
from dtr.worker.commit_queue import CommitRecord

MODES = {"group commit (40 a transaction)": 40, "a transaction each": 1}
#: Target: the batched burst at the largest fleet at most this fraction of the old way's.
TARGET_RATIO = 0.5
_POLICY = RetryPolicy(deadline_s=120.0)
#: Issue 18: a step of 1,000 parts complete at most this long after its last part is sent,
#: the others having arrived over ``TRICKLE_S`` (as saves finish at different moments).
TRICKLE_TARGET_S = 0.5
TRICKLE_S = 2.0
#: The trickle rounds' figures (every mode and size), for write_results.
TRICKLES: list[dict[str, object]] = []
_ATTEMPT_S = 60.0  # one attempt outlasts any queue here: a burst is measured, not retries


@dataclass(frozen=True)
class Round:
    mode: str
    workers: int
    step: int
    burst_s: float
    p50_s: float
    p99_s: float
    transactions: int
    accepted: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.rounds < 1 or any(not 1 <= w <= 5000 for w in args.workers):
        parser.error("--rounds must be >= 1 and each of --workers in [1, 5000]")
    started = time.monotonic()
    rounds: list[Round] = []
    for workers in args.workers:
        for mode, batch in MODES.items():
            rounds += run_mode(mode, batch, workers, args.rounds)
    write_results(rounds, args, time.monotonic() - started)
    return 0


def run_mode(mode: str, batch: int, workers: int, count: int) -> list[Round]:
    job = f"burst-{uuid.uuid4().hex[:8]}"
    extra = ["--commit-batch-max", str(batch)]
    with LocalCluster.start(
        replicas=1, job=job, heartbeat_timeout_s=3600.0, extra_args=extra
    ) as cluster:
        store = EtcdStore(cluster.etcd_endpoints)
        try:
            return asyncio.run(_rounds(cluster, store, mode, workers, count))
        finally:
            store.close()


async def _rounds(
    cluster: LocalCluster, store: EtcdStore, mode: str, workers: int, count: int
) -> list[Round]:
    client = SimClient(
        cluster.coordinators, job=cluster.job, policy=_POLICY, attempt_timeout_s=_ATTEMPT_S
    )
    ids = [f"b{i:05d}" for i in range(workers)]
    try:
        generation = await register_workers(client, ids)
        await _burst(client, cluster.job, ids, generation, step=1)  # warm-up, not reported
        results = []
        for n in range(1, count + 1):
            before = await asyncio.to_thread(store.revision)
            began = time.perf_counter()
            latencies, accepted = await _burst(client, cluster.job, ids, generation, 10 * n)
            burst = time.perf_counter() - began
            used = await asyncio.to_thread(store.revision) - before
            latencies.sort()
            results.append(
                Round(
                    mode=mode,
                    workers=workers,
                    step=10 * n,
                    burst_s=round(burst, 4),
                    p50_s=round(statistics.median(latencies), 4),
                    p99_s=round(latencies[int(0.99 * (len(latencies) - 1))], 4),
                    transactions=used,
                    accepted=accepted,
                )
            )
            print(f"  {mode}, {workers} workers, step {10 * n}: burst {burst:.3f} s, {used} txns")
        for n in range(1, count + 1):  # parts arriving over time, as saves finish
            step = 10 * (count + n)
            completes = await _trickle(client, cluster.job, ids, generation, step)
            TRICKLES.append({"mode": mode, "workers": workers, "step": step, **completes})
            print(
                f"  {mode}, {workers} workers, step {step}: complete "
                f"{completes['complete_after_last_s'] * 1000:.1f} ms after the last part"
            )
        return results
    finally:
        await client.close()


async def _trickle(
    client: SimClient, job: str, ids: list[str], generation: int, step: int
) -> dict[str, float]:
    """Every part but one arrives over ``TRICKLE_S``; then the last: how soon is the step
    complete after it is sent (its answer says so)?"""
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def later(i: int, worker: str) -> None:
        await asyncio.sleep(max(0.0, start + TRICKLE_S * i / len(ids) - loop.time()))
        await _commit(client, job, worker, generation, step)

    await asyncio.gather(*(later(i, w) for i, w in enumerate(ids[:-1])))
    sent = time.perf_counter()
    answer = await _commit(client, job, ids[-1], generation, step)
    if not answer.step_complete:
        raise SystemExit(f"step {step}: the last part did not complete it")
    return {"complete_after_last_s": round(time.perf_counter() - sent, 4)}


async def _commit(
    client: SimClient, job: str, worker: str, generation: int, step: int
) -> pb.CommitCheckpointResponse:
    record = CommitRecord(
        job=job,
        step=step,
        worker_id=worker,
        generation=generation,
        uri=f"file:///bench/step-{step:020d}/{worker}.dtr",
        size_bytes=1 << 20,
        checksum_algorithm="crc32c",
        checksum_hex="0a1b2c3d",
        format_version=1,
    )
    answer: pb.CommitCheckpointResponse = await client.call(
        "CommitCheckpoint",
        lambda: commit_request(record),
        caller=worker,
        operation=f"commit {worker}",
        mutating=True,
    )
    return answer


async def _burst(
    client: SimClient, job: str, ids: list[str], generation: int, step: int
) -> tuple[list[float], int]:
    async def one(worker: str) -> tuple[float, bool]:
        began = time.perf_counter()
        answer = await _commit(client, job, worker, generation, step)
        return time.perf_counter() - began, answer.status == pb.COMMIT_STATUS_ACCEPTED

    done = await asyncio.gather(*(one(w) for w in ids))
    return [latency for latency, _ in done], sum(ok for _, ok in done)


def write_results(rounds: list[Round], args: argparse.Namespace, wall_s: float) -> None:
    facts = {**run_facts(), "commit": git_commit(), "wall_s": round(wall_s, 1)}
    summary = _summary(rounds)
    largest = max(args.workers)
    batched, each = (summary[(m, largest)]["burst_median_s"] for m in MODES)
    ratio = batched / each
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    trickle = [
        float(t["complete_after_last_s"])  # type: ignore[arg-type]
        for t in TRICKLES
        if t["workers"] == largest and t["mode"] == next(iter(MODES))
    ]
    trickle_worst = max(trickle) if trickle else float("nan")
    trickle_verdict = "PASS" if trickle_worst <= TRICKLE_TARGET_S else "FAIL"
    data = {
        "meta": facts,
        "trickles": TRICKLES,
        "trickle_target": {
            "workers": largest,
            "worst_s": trickle_worst,
            "at_most_s": TRICKLE_TARGET_S,
            "verdict": trickle_verdict,
        },
        "rounds": [asdict(r) for r in rounds],
        "summary": [{"mode": m, "workers": w, **v} for (m, w), v in summary.items()],
        "target": {"workers": largest, "ratio": round(ratio, 3), "at_most": TARGET_RATIO},
        "verdict": verdict,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "commit_burst.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Checkpoint commit burst: group commit vs a transaction each",
        "",
        f"- date: {facts['date']}; commit `{facts['commit']}`",
        f"- machine: {facts['cpu_count']} cores, {facts['platform']}, python {facts['python']}",
        f"- command: `{facts['command']}` (wall time {facts['wall_s']} s)",
        "- setup: 1 replica, 1 etcd member, on 127.0.0.1; workers are registered through the "
        "chaos harness's asyncio client in this process; every worker commits its part of a "
        f"step at once, {args.rounds} rounds after a warm-up; `transactions` is the etcd "
        "revisions a round used (retention's deletions included)",
        "",
        "| mode | workers | burst median s | burst max s | commit p50 s | commit p99 s "
        "| transactions per round | accepted |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (mode, workers), v in summary.items():
        lines.append(
            f"| {mode} | {workers} | {v['burst_median_s']:.3f} | {v['burst_max_s']:.3f} "
            f"| {v['p50_median_s']:.3f} | {v['p99_median_s']:.3f} "
            f"| {v['transactions_median']:g} | {v['accepted']} |"
        )
    lines += [
        "",
        f"Target: at {largest} workers, the group-commit burst at most {TARGET_RATIO}x the "
        f"burst of a transaction each (medians, same run): **{ratio:.3f}x, {verdict}**.",
        "",
    ]
    lines += [
        f"Parts arriving over {TRICKLE_S:g} s, then the last one (the step completes with "
        "its answer): time from sending the last part to that answer.",
        "",
        "| mode | workers | step | complete after the last part, ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for t in TRICKLES:
        lines.append(
            f"| {t['mode']} | {t['workers']} | {t['step']} "
            f"| {float(t['complete_after_last_s']) * 1000:.1f} |"  # type: ignore[arg-type]
        )
    lines += [
        "",
        f"Target (issue 18): at {largest} workers with group commit, a step complete at most "
        f"{TRICKLE_TARGET_S:g} s after its last part (worst round): "
        f"**{trickle_worst * 1000:.1f} ms, {trickle_verdict}**.",
        "",
    ]
    (RESULTS / "commit_burst.md").write_text("\n".join(lines))
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
            "accepted": sum(r.accepted for r in group),
        }
        for key, group in grouped.items()
    }


if __name__ == "__main__":
    sys.exit(main())
