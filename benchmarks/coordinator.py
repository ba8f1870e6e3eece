"""Benchmark the coordinator against a bare gRPC server: heartbeats, shards, barriers, failover.

Run as ``.venv/bin/python benchmarks/coordinator.py`` (``make bench``).
Writes ``benchmarks/results/coordinator.json`` (every number) and
``coordinator.md`` (the tables, targets and verdicts).

What runs: a 3-replica ``LocalCluster`` (its own etcd, every port on
127.0.0.1, a heartbeat timeout long enough that no simulated worker dies),
the bare server of ``coordinator_bare.py`` in a process of its own, and the
load generator of ``coordinator_load.py`` in another (spawned), driven one
bounded command at a time. The same load runs against the dtr leader and
against the bare server, so every dtr figure comes with its floor. The load
generator is pinned to one core and the server measured (the dtr leader or
the bare server) to the other(s); both run in sessions of their own, because
sharing the benchmark's session (one scheduler autogroup) starved etcd of CPU
until leases expired mid-measurement. Failover
(``coordinator_failover.py``) signals real replica processes; the lease-TTL-2
repetitions run on a second set of replicas over the same etcd and job, so
they take over the same 1,000 workers. Everything this starts is stopped by
its own handle (never by name); every phase has a deadline, and the whole
run takes about two and a half minutes on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import coordinator_failover
import coordinator_load
import coordinator_report
import grpc
import numpy as np
from bench_paths import RESULTS, run_facts
from google import protobuf

from dtr.chaos.cluster import LocalCluster
from dtr.etcd import pick_free_ports
from dtr.keys import JobKeys
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from dtr.store import EtcdStore

HERE = Path(__file__).resolve().parent
JOB = "bench"
DATASET = "bench-tokens"
MAX_CALLS = 5_000_000
_POLL_S = 0.02
Result = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """Sizes and durations of one run (``--quick`` shrinks them for a smoke test)."""

    workers: int = 1_000
    shards: int = 100_000
    channels: int = 4
    warmup_s: float = 1.0
    throughput_s: float = 3.0
    throughput_rounds: int = 3
    latency_s: float = 10.0
    shards_s: float = 4.0
    shards_concurrency: int = 8
    first_call_samples: int = 4
    repeats: int = 3


def quick_settings() -> Settings:
    return Settings(
        workers=100,
        shards=10_000,
        throughput_s=1.0,
        throughput_rounds=1,
        latency_s=2.0,
        shards_s=1.0,
        first_call_samples=2,
        repeats=1,
    )


class LoadProcess:
    """The spawned load generator and the pipe that drives it."""

    def __init__(self, cpus: set[int] | None) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=coordinator_load.run, args=(child, cpus), name="dtr-bench-load", daemon=True
        )
        self._process.start()
        child.close()
        self.pid = self._process.pid

    def call(self, op: str, answer_within_s: float, **arguments: Any) -> Result:
        self._conn.send({"op": op, **arguments})
        if not self._conn.poll(answer_within_s):
            raise TimeoutError(
                f"load generator: {op} did not answer within {answer_within_s:.0f} s"
            )
        reply: Result = self._conn.recv()
        if not reply["ok"]:
            raise RuntimeError(f"load generator: {reply['error']}")
        result: Result = reply["result"]
        return result

    def connect(self, address: str, settings: Settings) -> None:
        self.call("connect", 30.0, address=address, channels=settings.channels, job=JOB)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send({"op": "stop"})
        self._process.join(10.0)
        if self._process.is_alive():
            self._process.terminate()  # our own child, by its handle
            self._process.join(5.0)
        self._conn.close()


class BareServer:
    """``coordinator_bare.py`` as a child process on a free loopback port."""

    def __init__(self, settings: Settings, cpus: set[int] | None) -> None:
        self.address = f"127.0.0.1:{pick_free_ports(1)[0]}"
        self._process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "coordinator_bare.py"),
                *("--listen", self.address, "--workers", str(settings.workers)),
                *("--shards-per-worker", str(settings.shards // settings.workers)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a scheduling group of its own, apart from etcd's
        )
        self.pid = self._process.pid
        if cpus:
            coordinator_load.pin(self.pid, cpus)
        self._channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(self._channel).result(timeout=30.0)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    def arrived(self, name: str) -> int:
        """How many have arrived at the open barrier ``name`` (the probe RPC)."""
        reply = self._stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=5.0)
        return sum(b.arrived for b in reply.open_barriers if b.name == name)

    def stop(self) -> None:
        self._channel.close()
        self._process.terminate()
        try:
            self._process.wait(10.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10.0)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until ``condition`` holds; the seconds it took (TimeoutError at the deadline)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(_POLL_S)
    return time.monotonic() - started


@dataclass(frozen=True)
class Target:
    name: str  # "dtr" or "bare"
    address: str
    pid: int | None


def heartbeat_throughput(load: LoadProcess, targets: list[Target], s: Settings) -> list[Result]:
    """Rounds that alternate dtr and bare, so drift on a shared machine hits both alike."""
    rows = []
    workers = coordinator_load.worker_ids(s.workers)
    for mode in ("unary", "stream"):
        for round_ in range(s.throughput_rounds):
            for target in targets:
                load.connect(target.address, s)
                result = load.call(
                    "heartbeat_closed",
                    s.warmup_s + s.throughput_s + 60.0,
                    mode=mode,
                    workers=workers,
                    warmup_s=s.warmup_s,
                    duration_s=s.throughput_s,
                    max_calls=MAX_CALLS,
                    server_pid=target.pid,
                )
                rows.append({"server": target.name, "round": round_, **result})
                print(f"heartbeat closed {mode} {target.name}: {result['calls_per_s']:.0f}/s")
    return rows


def heartbeat_latency(load: LoadProcess, targets: list[Target], s: Settings) -> list[Result]:
    rows = []
    workers = coordinator_load.worker_ids(s.workers)
    for mode in ("unary", "stream"):
        for target in targets:
            load.connect(target.address, s)
            result = load.call(
                "heartbeat_open",
                s.latency_s + 90.0,
                mode=mode,
                workers=workers,
                period_s=1.0,
                duration_s=s.latency_s,
            )
            rows.append({"server": target.name, **result})
            print(f"heartbeat open {mode} {target.name}: p99 {result['p99_ms']:.2f} ms")
    return rows


def get_shards(load: LoadProcess, targets: list[Target], s: Settings) -> list[Result]:
    rows = []
    for target in targets:
        load.connect(target.address, s)
        result = load.call(
            "get_shards_closed",
            s.warmup_s + s.shards_s + 60.0,
            dataset=DATASET,
            workers=coordinator_load.worker_ids(s.workers),
            concurrency=s.shards_concurrency,
            warmup_s=s.warmup_s,
            duration_s=s.shards_s,
            max_calls=MAX_CALLS,
            server_pid=target.pid,
        )
        rows.append({"server": target.name, **result})
        print(f"GetShards {target.name}: p99 {result['p99_ms']:.2f} ms")
    return rows


def get_shards_first_calls(load: LoadProcess, leader: Target, s: Settings) -> Result:
    """Move the generation (w0000's capacity 2 <-> 1), then time the next two GetShards."""
    load.connect(leader.address, s)
    first, second = [], []
    for k in range(s.first_call_samples):
        load.call("register", 60.0, workers=["w0000"], capacity=2.0 if k % 2 == 0 else 1.0)
        first.append(load.call("get_shards_once", 30.0, dataset=DATASET, worker="w0001"))
        second.append(load.call("get_shards_once", 30.0, dataset=DATASET, worker="w0002"))
    if s.first_call_samples % 2:
        load.call("register", 60.0, workers=["w0000"], capacity=1.0)
    return {
        "first_ms": [r["latency_ms"] for r in first],
        "second_ms": [r["latency_ms"] for r in second],
        "generations": [r["generation"] for r in first],
    }


def barriers(
    load: LoadProcess, targets: list[Target], probes: dict[str, Callable[[str], int]], s: Settings
) -> list[Result]:
    """999 arrivals wait (persisted, on dtr); then the last one; time to the last release."""
    workers = coordinator_load.worker_ids(s.workers)
    token = uuid.uuid4().hex[:6]
    rows = []
    for target in targets:
        load.connect(target.address, s)
        for rep in range(s.repeats):
            name = f"bench-{target.name}-{token}-{rep}"
            started = time.monotonic()
            load.call("barrier_open", 30.0, name=name, workers=workers[:-1], timeout_s=120.0)
            open_s = wait_until(
                functools.partial(has_arrived, probes[target.name], name, len(workers) - 1),
                90.0,
                f"{len(workers) - 1} arrivals at {name} on {target.name}",
            )
            result = load.call("barrier_last", 120.0, name=name, worker=workers[-1], timeout_s=60.0)
            rows.append(
                {
                    "server": target.name,
                    "name": name,
                    "open_s": open_s,
                    "persisted": probes[target.name](name) if target.name == "dtr" else None,
                    "wall_s": time.monotonic() - started,
                    **result,
                }
            )
            print(f"barrier {target.name} #{rep}: {result['last_release_s'] * 1000:.1f} ms")
    return rows


def has_arrived(probe: Callable[[str], int], name: str, count: int) -> bool:
    return probe(name) >= count


def etcd_arrivals(store: EtcdStore) -> Callable[[str], int]:
    keys = JobKeys(JOB)
    return lambda name: len(store.get_prefix(keys.barrier_arrivals_prefix(name)).kvs)


def barrier_released_in_etcd(store: EtcdStore, name: str) -> bool:
    kv = store.get(JobKeys(JOB).barrier_state(name))
    return kv is not None and bool(json.loads(kv.value)["released"])


def start_cluster(stack: contextlib.ExitStack, lease_ttl_s: int, **kwargs: Any) -> LocalCluster:
    renew_deadline_s = round(lease_ttl_s * 2 / 3, 2)  # the default 2 s of 3, scaled
    cluster = LocalCluster.start(
        replicas=3,
        job=JOB,
        lease_ttl_s=lease_ttl_s,
        renew_deadline_s=renew_deadline_s,
        heartbeat_timeout_s=3600.0,
        **kwargs,
    )
    stack.callback(cluster.stop)
    return cluster


def cpu_split() -> tuple[set[int] | None, set[int] | None]:
    """(load generator's CPUs, measured server's CPUs): one core apart, the rest for servers."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def run(s: Settings) -> Result:
    out: Result = {}
    workers = coordinator_load.worker_ids(s.workers)
    load_cpus, server_cpus = cpu_split()
    with contextlib.ExitStack() as stack:
        load = LoadProcess(load_cpus)
        stack.callback(load.stop)
        bare = BareServer(s, server_cpus)
        stack.callback(bare.stop)
        cluster = start_cluster(stack, lease_ttl_s=3)
        leader = cluster.leader(timeout_s=30.0)
        if leader.pid is not None and server_cpus:
            coordinator_load.pin(leader.pid, server_cpus)  # until failover kills it
        dtr_target = Target("dtr", leader.address, leader.pid)
        targets = [dtr_target, Target("bare", bare.address, bare.pid)]
        term = cluster.status().leader.term
        load.connect(leader.address, s)
        out["registration"] = load.call("register", 300.0, workers=workers, capacity=1.0)
        print(f"registered {s.workers} workers in {out['registration']['seconds']:.1f} s")
        load.call("register_dataset", 30.0, name=DATASET, num_shards=s.shards)
        out["heartbeat_throughput"] = heartbeat_throughput(load, targets, s)
        out["heartbeat_latency"] = heartbeat_latency(load, targets, s)
        out["get_shards"] = get_shards(load, targets, s)
        out["get_shards_first_call"] = get_shards_first_calls(load, dtr_target, s)
        store = EtcdStore(cluster.etcd_endpoints, timeout_s=5.0)
        stack.callback(store.close)
        probes = {"dtr": etcd_arrivals(store), "bare": bare.arrived}
        rows = barriers(load, targets, probes, s)
        for row in rows:
            if row["server"] == "dtr":
                row["released_in_etcd"] = barrier_released_in_etcd(store, row["name"])
        out["barrier"] = rows
        out["leader"] = {
            "replica": leader.replica_id,
            "term_before": term,
            "term_after": cluster.status().leader.term,
        }
        out["failover"] = coordinator_failover.takeovers(cluster, 3, s.repeats)
        for replica in cluster.replicas:  # the TTL-2 replicas take over this etcd and job
            replica.terminate(10.0)
        ttl2 = start_cluster(stack, lease_ttl_s=2, etcd=cluster.etcd_endpoints)
        out["failover"] += coordinator_failover.takeovers(ttl2, 2, s.repeats)
        out["etcd_version"] = cluster.owned_etcd.version if cluster.owned_etcd else "unknown"
        out["cpus"] = {
            "load_generator": sorted(load_cpus or ()),
            "servers": sorted(server_cpus or ()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = quick_settings() if args.quick else Settings()
    started = time.monotonic()
    load_before = os.getloadavg()
    results = run(settings)
    meta: Result = {
        **run_facts(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf.__version__,
        "numpy": np.__version__,
        "etcd": results.pop("etcd_version"),
        "cpus": results.pop("cpus"),
        "wall_s": time.monotonic() - started,
        "loadavg_at_start": load_before,
        "settings": asdict(settings),
        "attempt_timeout_s": coordinator_failover.ATTEMPT_TIMEOUT_S,
        "retry_pause_s": coordinator_failover.RETRY_PAUSE_S,
    }
    payload = {"meta": meta, **results}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "coordinator.json").write_text(json.dumps(payload, indent=2) + "\n")
    markdown = coordinator_report.render(payload)
    (args.results_dir / "coordinator.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
