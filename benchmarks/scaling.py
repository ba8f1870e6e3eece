"""The coordinator's scaling curve: 200 → 2,000 simulated workers, one fresh cluster each.

Run as ``.venv/bin/python benchmarks/scaling.py`` (``make bench``). Writes
``benchmarks/results/scaling.json`` and ``scaling.md``; ``docs/scaling.md``
quotes them and projects them to 10,000 and 100,000 workers (issue 18).

What runs, for each fleet size W: 3 coordinator replicas and a 1-member etcd
(``LocalCluster``), all on 127.0.0.1, heartbeat timeout out of reach; the
load generator of ``coordinator.py`` (a process of its own, asyncio,
grpc.aio, 4 channels) registers W workers at once, then

1. heartbeats: every worker beats once a second on its stream for
   ``--beats-s`` seconds (open loop, latency from the scheduled send); the
   leader's and the followers' CPU over that window, and etcd's revisions
   (writes) in it;
2. a barrier of all W: W-1 arrivals held, then the last; last arrival →
   last release, and the etcd revisions the barrier used;
3. etcd's database size (its ``/metrics``) at the end.

Today the leader does everything (every beat, every held barrier call,
every write), so this is the leader-does-all curve that issue 18's
followers-serve mode must beat. Bounded: W x beats-s beats, one barrier,
each call under a deadline; everything started is stopped by its handle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import urllib.request
import uuid
from typing import Any

import coordinator_load
from bench_paths import RESULTS, git_commit, run_facts

import coordinator as bench
from dtr.store import EtcdStore

Result = dict[str, Any]
_DB_SIZE = re.compile(r"^etcd_mvcc_db_total_size_in_bytes (\S+)$", re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[200, 500, 1000, 2000])
    parser.add_argument("--beats-s", type=float, default=10.0)
    args = parser.parse_args()
    if any(not 1 <= w <= 5000 for w in args.workers) or not 1.0 <= args.beats_s <= 60.0:
        parser.error("each of --workers in [1, 5000]; --beats-s in [1, 60]")
    started = time.monotonic()
    rows = [one_size(w, args.beats_s) for w in args.workers]
    write_results(rows, args, time.monotonic() - started)
    return 0


def one_size(workers: int, beats_s: float) -> Result:
    settings = bench.Settings(workers=workers, repeats=1)
    ids = coordinator_load.worker_ids(workers)
    load_cpus, server_cpus = bench.cpu_split()  # as coordinator.py: one core apart
    with contextlib.ExitStack() as stack:
        load = bench.LoadProcess(load_cpus)
        stack.callback(load.stop)
        cluster = bench.start_cluster(stack, lease_ttl_s=3)
        leader = cluster.leader(timeout_s=30.0)
        if leader.pid is not None and server_cpus:
            coordinator_load.pin(leader.pid, server_cpus)
        followers = [r for r in cluster.replicas if r is not leader]
        store = EtcdStore(cluster.etcd_endpoints, timeout_s=5.0)
        stack.callback(store.close)
        load.connect(leader.address, settings)
        registration = load.call("register", 300.0, workers=ids, capacity=1.0)

        cpu0 = {r.replica_id: coordinator_load.process_cpu_s(r.pid) for r in cluster.replicas}
        rev0, t0 = store.revision(), time.monotonic()
        beats = load.call(
            "heartbeat_open",
            beats_s + 90.0,
            mode="stream",
            workers=ids,
            period_s=1.0,
            duration_s=beats_s,
        )
        seconds = time.monotonic() - t0
        writes = store.revision() - rev0
        cpu = {
            r.replica_id: (coordinator_load.process_cpu_s(r.pid) - cpu0[r.replica_id]) / seconds
            for r in cluster.replicas
        }

        name = f"scale-{uuid.uuid4().hex[:6]}"
        rev1 = store.revision()
        load.call("barrier_open", 30.0, name=name, workers=ids[:-1], timeout_s=120.0)
        arrived = bench.etcd_arrivals(store)
        bench.wait_until(lambda: arrived(name) >= workers - 1, 120.0, f"{workers - 1} arrivals")
        barrier = load.call("barrier_last", 120.0, name=name, worker=ids[-1], timeout_s=60.0)
        barrier_writes = store.revision() - rev1
        db_bytes = etcd_db_size(cluster.etcd_endpoints[0])
    leader_cpu = cpu[leader.replica_id]
    row = {
        "workers": workers,
        "register_s": round(registration["seconds"], 3),
        "beats": beats["count"],
        "beat_errors": beats["errors"],
        "beat_p50_ms": round(beats["p50_ms"], 2),
        "beat_p99_ms": round(beats["p99_ms"], 2),
        "leader_cpu": round(leader_cpu, 3),
        "leader_cpu_per_1000": round(leader_cpu * 1000 / workers, 3),
        "follower_cpu": round(max(cpu[r.replica_id] for r in followers), 3),
        "etcd_writes_per_s_beating": round(writes / seconds, 2),
        "barrier_release_ms": round(barrier["last_release_s"] * 1000, 1),
        "barrier_statuses": barrier["statuses"],
        "barrier_etcd_writes": barrier_writes,
        "etcd_db_bytes": db_bytes,
    }
    print(json.dumps(row))
    return row


def etcd_db_size(endpoint: str) -> int | None:
    """etcd's own figure of its database file (``/metrics`` on the client URL)."""
    try:
        with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5.0) as reply:
            found = _DB_SIZE.search(reply.read().decode())
    except OSError:
        return None
    return int(float(found.group(1))) if found else None


def write_results(rows: list[Result], args: argparse.Namespace, wall_s: float) -> None:
    facts = {**run_facts(), "commit": git_commit(), "wall_s": round(wall_s, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(
        json.dumps({"meta": facts, "beats_s": args.beats_s, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Scaling curve: one leader does all (200 → 2,000 simulated workers)",
        "",
        f"- date: {facts['date']}; commit `{facts['commit']}`",
        f"- machine: {facts['cpu_count']} cores, {facts['platform']}, python {facts['python']}",
        f"- command: `{facts['command']}` (wall time {facts['wall_s']} s)",
        "- setup: per size a fresh LocalCluster (3 replicas, 1 etcd member, lease TTL 3 s) and "
        "the load generator of `coordinator.py` in its own process (grpc.aio, 4 channels), "
        "all on 127.0.0.1; as in `coordinator.py` the load generator is pinned to one core and "
        "the leader to the other (etcd and followers unpinned); CPU 1.0 = one core",
        f"- heartbeats: every worker once a second on its stream for {args.beats_s:g} s, "
        "open loop (latency from the scheduled send); CPU and etcd writes over that window",
        "- barrier: W-1 arrivals held, then the last; last arrival → last release",
        "",
        "| workers | register all s | beat p50 ms | beat p99 ms | beat errors | leader CPU "
        "| leader CPU per 1,000 | busiest follower CPU | etcd writes/s while beating "
        "| barrier release ms | barrier etcd writes | etcd db MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        db = f"{r['etcd_db_bytes'] / 2**20:.1f}" if r["etcd_db_bytes"] else "?"
        lines.append(
            f"| {r['workers']:,} | {r['register_s']:.2f} | {r['beat_p50_ms']:.2f} "
            f"| {r['beat_p99_ms']:.2f} | {r['beat_errors']} | {r['leader_cpu']:.2f} "
            f"| {r['leader_cpu_per_1000']:.2f} | {r['follower_cpu']:.2f} "
            f"| {r['etcd_writes_per_s_beating']:.1f} | {r['barrier_release_ms']:.1f} "
            f"| {r['barrier_etcd_writes']} | {db} |"
        )
    lines.append("")
    (RESULTS / "scaling.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
