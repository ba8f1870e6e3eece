"""Benchmark dtr.worker: training-step overhead, and recovery after a coordinator outage.

Run as ``.venv/bin/python benchmarks/worker.py`` (``--quick`` for a smoke
test). Writes ``benchmarks/results/worker.json`` (every number) and
``worker.md`` (targets, verdicts, the runs).

(a) Overhead per training step. The same MLP (64→256→256→10, batch 64, SGD,
one torch thread) trains on the same synthetic data for the same number of
steps per epoch, fed either by ``DistributedSampler(num_replicas=2, rank=0)``
(loop A, no dtr at all) or by ``ShardSampler`` over a real ``Worker`` (loop
B): registered with a 1-replica ``LocalCluster``, beating every second on
its background thread, with a second member (a ``Worker`` in a child
process) so the shards are split two ways as in A. Loop B pays for what a
training script pays for: the heartbeat thread and gRPC's threads on the
training core, one ``GetShards`` per epoch inside the sampler's iteration,
and a ``report_progress`` per step. Only the training loop is timed; the
Worker is created (and its first, generation-warming ``GetShards`` made)
before the clock starts and closed after it stops, so loop A runs with no
Worker in the process. Runs alternate A/B, B/A, … so drift hits both.
Besides wall time, each run records this process's CPU time (all threads),
which other processes on a shared machine disturb far less; and the CPU an
idle Worker burns per second is measured on its own, since that part of the
overhead does not shrink as steps get longer.

(b) Coordinator recovery → the worker's first successful calls. Every
replica is SIGKILLed; once the worker's heartbeats have gone unanswered
for longer than the lease TTL (so the restarted replica need not wait out
its predecessor's lease), the replicas are restarted. The clock starts when
a replica first answers a health check (probed every 10 ms on a channel of
our own that reconnects within 50 ms; the cluster's own probe backs off up
to 500 ms and would shorten every figure) and stops at the worker's next
acknowledged heartbeat and at the first ``shard_assignment`` with
``stale=False`` made by a thread that calls it in a loop throughout the
outage, as a training loop would.

This process (all its threads) is pinned to one core, etcd, the replicas
and the peer worker to the other(s), so the library's threads compete with
training on its own core. Everything started here is stopped by its own
handle; every wait has a deadline; the run takes about two minutes on two
cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import torch
from bench_paths import RESULTS, run_facts
from coordinator_report import verdict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from dtr.chaos.cluster import LocalCluster
from dtr.proto import LEADER_HEALTH_SERVICE
from dtr.retry import RetryPolicy
from dtr.worker import ShardAssignment, ShardSampler, Worker

JOB = "bench-worker"
DATASET = "bench-samples"
OVERHEAD_RATIO_MAX = 1.02
#: The worker's retry backoff cap (RetryPolicy's default), plus 1 s.
RECOVERY_MAX_S = 1.0 + RetryPolicy().max_backoff_s
_POLL_S = 0.01
_PROBE_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 50),
)
#: The second member: joins, says nothing, leaves when its stdin closes.
PEER_SCRIPT = """
import sys
from dtr.worker import Worker
with Worker(sys.argv[1], job=sys.argv[2], worker_id=sys.argv[3]):
    sys.stdin.read()
"""
Result = dict[str, Any]
Weights = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and counts of one run (``--quick`` shrinks them for a smoke test)."""

    num_samples: int = 65_536
    num_shards: int = 256
    batch_size: int = 64
    epochs_per_run: int = 2  # short runs, many of them: adjacent pairs share the drift
    repetitions: int = 16  # timed runs of each loop, after one untimed warm-up of each
    recovery_cycles: int = 5
    idle_intervals: int = 5  # one-second intervals of idle_cost, with and without a Worker
    lease_ttl_s: int = 3
    phase_deadline_s: float = 90.0  # no new repetition or cycle starts after this

    @property
    def steps_per_epoch(self) -> int:
        """What rank 0 of 2 gets from DistributedSampler; ShardSampler gives at least as many."""
        return self.num_samples // 2 // self.batch_size


def quick_settings() -> Settings:
    return Settings(
        num_samples=8_192, epochs_per_run=2, repetitions=2, recovery_cycles=2, idle_intervals=2
    )


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(_POLL_S)


def pin(pid: int, cpus: set[int]) -> None:
    """Set the affinity of every thread of ``pid`` (threads started later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(task), cpus)


def cpu_split() -> tuple[set[int], set[int]] | None:
    """(this process's core, everyone else's cores); None on a single core."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[-1]}, set(cpus[:-1])) if len(cpus) >= 2 else None


# --- (a) overhead per training step ----------------------------------------------------


def synthetic_dataset(num_samples: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(num_samples, 64, generator=generator)
    labels = (inputs @ torch.randn(64, 10, generator=generator)).argmax(dim=1)
    return TensorDataset(inputs, labels)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


class TimedSource:
    """The Worker as the sampler's assignment source, timing each per-epoch GetShards."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.seconds: list[float] = []

    def shard_assignment(self, dataset: str, epoch: int) -> ShardAssignment:
        started = time.perf_counter()
        assignment = self.worker.shard_assignment(dataset, epoch)
        self.seconds.append(time.perf_counter() - started)
        return assignment


def train(
    model: nn.Module,
    initial: Weights,
    loader: DataLoader[Any],
    set_epoch: Callable[[int], None],
    *,
    s: Settings,
    on_step: Callable[[int, float], None] | None = None,
) -> Result:
    """Wall and CPU seconds for ``epochs_per_run`` epochs of ``steps_per_epoch`` steps.

    Every run starts from the same weights. CPU time is this process's, all
    threads: it counts the work of the Worker's background threads and,
    unlike wall time, hardly moves when other processes load the machine.
    """
    model.load_state_dict(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = 0
    gc.collect()  # every run starts from a collected heap, not the previous run's garbage
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(s.epochs_per_run):
        set_epoch(epoch)
        for inputs, labels in itertools.islice(loader, s.steps_per_epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step, time.perf_counter() - started)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
    }


def run_plain(dataset: TensorDataset, model: nn.Module, initial: Weights, s: Settings) -> Result:
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=0)
    loader = DataLoader(dataset, sampler=sampler, batch_size=s.batch_size)
    return {"loop": "A", **train(model, initial, loader, sampler.set_epoch, s=s)}


def run_dtr(
    cluster: LocalCluster, dataset: TensorDataset, model: nn.Module, initial: Weights, s: Settings
) -> Result:
    with Worker(cluster.coordinators, worker_id="bench-rank0", job=JOB) as worker:
        # Start-up, not steady state: the first GetShards of a generation computes its
        # assignment, and the heartbeat stream opens once.
        worker.get_shards(DATASET, 0)
        wait_until(lambda: worker._heartbeats.acks > 0, 30.0, "the first heartbeat ack")
        source = TimedSource(worker)
        sampler = ShardSampler(
            source, DATASET, shard_size=s.num_samples // s.num_shards, num_samples=s.num_samples
        )
        loader = DataLoader(dataset, sampler=sampler, batch_size=s.batch_size)

        def progress(step: int, elapsed_s: float) -> None:
            worker.report_progress(step, samples_per_s=step * s.batch_size / elapsed_s)

        timing = train(model, initial, loader, sampler.set_epoch, s=s, on_step=progress)
        assignment = sampler.assignment
        assert assignment is not None and not assignment.stale
        return {
            "loop": "B",
            **timing,
            "generation": assignment.generation,
            "shards_owned": len(assignment.shard_ids),
            "members": assignment.num_members,
            "get_shards_ms": [1000 * v for v in source.seconds],
            "heartbeat_acks": worker._heartbeats.acks,
        }


def overhead(cluster: LocalCluster, s: Settings) -> Result:
    """Alternating runs of A and B after a warm-up of each; per-step medians and their ratio."""
    dataset, model = synthetic_dataset(s.num_samples), make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loops = {
        "A": lambda: run_plain(dataset, model, initial, s),
        "B": lambda: run_dtr(cluster, dataset, model, initial, s),
    }
    for warm_up in loops.values():  # not counted
        warm_up()
    deadline = time.monotonic() + s.phase_deadline_s
    runs: list[Result] = []
    for rep in range(s.repetitions):
        if time.monotonic() > deadline:
            break
        for name in "AB" if rep % 2 == 0 else "BA":
            run = {"rep": rep, **loops[name]()}
            steps = run["steps"] = s.epochs_per_run * s.steps_per_epoch
            run["us_per_step"] = 1e6 * run["seconds"] / steps
            run["cpu_us_per_step"] = 1e6 * run["cpu_seconds"] / steps
            runs.append(run)
            print(f"overhead rep {rep} loop {name}: {run['us_per_step']:.1f} µs/step", flush=True)
    return {"runs": runs, **overhead_summary(runs)}


def overhead_summary(runs: list[Result]) -> Result:
    """Medians per loop and their ratio (the figure), with what tells noise from overhead.

    The median of the ratios of each adjacent A/B pair is less sensitive to
    slow drift than the ratio of medians; the spread of loop A's runs is how
    much identical runs differed, so a ratio within it is not a measured
    overhead; the CPU-time ratio is the library's own extra work.
    """

    def of(loop: str, field: str) -> list[float]:
        return [r[field] for r in runs if r["loop"] == loop]

    wall = {n: statistics.median(of(n, "us_per_step")) for n in "AB"}
    cpu = {n: statistics.median(of(n, "cpu_us_per_step")) for n in "AB"}
    pairs = [b / a for a, b in zip(of("A", "us_per_step"), of("B", "us_per_step"), strict=True)]
    plain = of("A", "us_per_step")
    get_shards_ms = [v for r in runs if r["loop"] == "B" for v in r["get_shards_ms"]]
    return {
        "median_us_per_step": wall,
        "ratio": wall["B"] / wall["A"],
        "median_pair_ratio": statistics.median(pairs),
        "a_spread": (max(plain) - min(plain)) / wall["A"],
        "median_cpu_us_per_step": cpu,
        "cpu_ratio": cpu["B"] / cpu["A"],
        "get_shards_ms_median": statistics.median(get_shards_ms),
        "get_shards_ms_max": max(get_shards_ms),
    }


def idle_cost(cluster: LocalCluster, s: Settings) -> Result:
    """CPU a Worker's background threads burn while training does nothing, per second.

    The part of (a)'s overhead that does not scale with steps: heartbeats and
    gRPC's own threads. Measured as this process's CPU time per one-second
    interval, with and without a Worker (after its first heartbeat ack); the
    median of each set, since on a VM a burst of CPU steal inflates one
    interval's CPU time.
    """

    def cpu_ms_per_s() -> list[float]:
        samples = []
        for _ in range(s.idle_intervals):
            started = time.process_time()
            time.sleep(1.0)  # the measurement itself: how much runs while we do nothing
            samples.append(1000 * (time.process_time() - started))
        return samples

    without = cpu_ms_per_s()
    with Worker(cluster.coordinators, worker_id="bench-rank0", job=JOB) as worker:
        wait_until(lambda: worker._heartbeats.acks > 0, 30.0, "the first heartbeat ack")
        with_worker = cpu_ms_per_s()
    cost = statistics.median(with_worker) - statistics.median(without)
    print(f"idle: {cost:.2f} CPU ms/s for a Worker", flush=True)
    return {
        "intervals_s": [1.0] * s.idle_intervals,
        "cpu_ms_per_s_without_worker": without,
        "cpu_ms_per_s_with_worker": with_worker,
        "worker_cpu_ms_per_s": cost,
    }


# --- (b) recovery after every coordinator was down -----------------------------------------


class ShardPoller:
    """A thread calling ``shard_assignment`` back to back: a training loop that keeps asking."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._stop = threading.Event()
        self.answers: list[tuple[float, bool]] = []  # (time.monotonic() on return, stale)
        self._thread = threading.Thread(target=self._run, name="bench-shard-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for epoch in itertools.count(1):
            if self._stop.is_set():
                return
            assignment = self._worker.shard_assignment(DATASET, epoch)
            self.answers.append((time.monotonic(), assignment.stale))
            if not assignment.stale:
                self._stop.wait(0.05)  # fresh answers need no hammering

    def first_fresh_after(self, moment: float) -> float | None:
        return next((t for t, stale in self.answers if t >= moment and not stale), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


@contextlib.contextmanager
def probe_channels(cluster: LocalCluster) -> Iterator[list[grpc.Channel]]:
    channels = [grpc.insecure_channel(a, options=_PROBE_OPTIONS) for a in cluster.endpoints]
    try:
        yield channels
    finally:
        for channel in channels:
            channel.close()


def health_is_serving(channel: grpc.Channel, service: str = "") -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=0.2)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class RecoveryWatch:
    """Marks, polled together every 10 ms, of when each thing first happened after a restart.

    One loop for all of them, so none is recorded late for having been
    waited on after another: the first heartbeat ack is the beats' own
    timestamp, fresh shards the poller's, the health answers ours.
    """

    def __init__(self, channels: list[grpc.Channel], worker: Worker, poller: ShardPoller) -> None:
        self._channels, self._poller = channels, poller
        self._beats = worker._heartbeats
        self._acks_before = self._beats.acks
        self.marks: dict[str, float] = {}

    def _serving(self, service: str = "") -> bool:
        return any(health_is_serving(c, service) for c in self._channels)

    def is_complete(self, restarted_at: float) -> bool:
        marks = self.marks
        if "ack" not in marks and self._beats.acks > self._acks_before:
            marks["ack"] = self._beats.last_ack_at  # beats are a second apart: the first one
        if "serving" not in marks and self._serving():
            marks["serving"] = time.monotonic()
        if "serving" in marks and "leader" not in marks and self._serving(LEADER_HEALTH_SERVICE):
            marks["leader"] = time.monotonic()
        fresh = self._poller.first_fresh_after(restarted_at)
        if fresh is not None:
            marks["fresh"] = fresh
        return len(marks) == 4


def recovery_cycle(
    cluster: LocalCluster, worker: Worker, s: Settings, cpus: set[int] | None
) -> Result:
    """Kill every replica, wait out the lease, restart them; when was the worker served again."""
    beats = worker._heartbeats
    for replica in cluster.replicas:
        replica.kill()
    killed_at = time.monotonic()
    poller = ShardPoller(worker)
    try:
        silence_s = s.lease_ttl_s + 1.0  # the killed leader's lease has expired by then
        wait_until(
            lambda: time.monotonic() - max(beats.last_ack_at, killed_at) >= silence_s,
            silence_s + 15.0,
            "the worker's heartbeats to go unanswered",
        )
        stale_answers = sum(stale for _, stale in poller.answers)
        with probe_channels(cluster) as channels:
            watch = RecoveryWatch(channels, worker, poller)
            restarted_at = time.monotonic()
            for replica in cluster.replicas:
                replica.restart()
                if cpus and replica.pid is not None:
                    pin(replica.pid, cpus)
            wait_until(lambda: watch.is_complete(restarted_at), 60.0, "the worker served again")
    finally:
        poller.stop()
    cluster.wait_ready(30.0)
    m = watch.marks
    return {
        "outage_s": restarted_at - killed_at,
        "stale_answers_during_outage": stale_answers,
        "restart_to_serving_s": m["serving"] - restarted_at,
        "serving_to_leader_s": m["leader"] - m["serving"],
        "serving_to_ack_s": m["ack"] - m["serving"],
        "serving_to_fresh_shards_s": m["fresh"] - m["serving"],
    }


def recovery(cluster: LocalCluster, s: Settings, cpus: set[int] | None) -> Result:
    cycles: list[Result] = []
    deadline = time.monotonic() + s.phase_deadline_s
    with Worker(cluster.coordinators, worker_id="bench-recovery", job=JOB) as worker:
        worker.get_shards(DATASET, 0)  # something to serve, stale, while nobody answers
        wait_until(lambda: worker._heartbeats.acks > 0, 30.0, "a first heartbeat")
        for cycle in range(s.recovery_cycles):
            if time.monotonic() > deadline:
                break
            row = {"cycle": cycle, **recovery_cycle(cluster, worker, s, cpus)}
            cycles.append(row)
            print(
                f"recovery {cycle}: ack {row['serving_to_ack_s']:.2f} s, fresh shards "
                f"{row['serving_to_fresh_shards_s']:.2f} s after serving",
                flush=True,
            )
    summary = {}
    for field in ("serving_to_leader_s", "serving_to_ack_s", "serving_to_fresh_shards_s"):
        values = [c[field] for c in cycles]
        summary[field] = {"p50": statistics.median(values), "max": max(values)}
    return {"cycles": cycles, "summary": summary}


# --- the run ---------------------------------------------------------------------------


@contextlib.contextmanager
def peer_worker(cluster: LocalCluster, cpus: set[int] | None) -> Iterator[None]:
    """The second member, in a child process: this one must hold only the Worker measured."""
    process = subprocess.Popen(
        [sys.executable, "-c", PEER_SCRIPT, cluster.coordinators, JOB, "bench-rank1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        if cpus:
            pin(process.pid, cpus)
        wait_until(
            lambda: any(w.id == "bench-rank1" and w.alive for w in cluster.status().workers),
            60.0,
            "the peer worker to register",
        )
        yield
    finally:
        assert process.stdin is not None
        process.stdin.close()  # it deregisters and exits
        try:
            process.wait(15.0)
        except subprocess.TimeoutExpired:
            process.kill()  # our own child, by its handle
            process.wait(5.0)


def run(s: Settings) -> Result:
    torch.set_num_threads(1)
    split = cpu_split()
    with LocalCluster.start(replicas=1, job=JOB, lease_ttl_s=s.lease_ttl_s) as cluster:
        if split is not None:
            etcd = cluster.owned_etcd
            others = [m.pid for m in etcd.members] if etcd is not None else []
            for pid in [*others, *(r.pid for r in cluster.replicas)]:
                if pid is not None:
                    pin(pid, split[1])
            pin(os.getpid(), split[0])
        with Worker(cluster.coordinators, worker_id="bench-setup", job=JOB) as setup:
            setup.register_dataset(DATASET, s.num_shards)
        with peer_worker(cluster, split[1] if split else None):
            measured = overhead(cluster, s)
            idle = idle_cost(cluster, s)
        return {
            "overhead": measured,
            "idle": idle,
            "recovery": recovery(cluster, s, split[1] if split else None),
            "etcd_version": cluster.owned_etcd.version if cluster.owned_etcd else "unknown",
            "cpus": {
                "this_process": sorted(split[0]) if split else None,
                "cluster_and_peer": sorted(split[1]) if split else None,
            },
        }


# --- the report ------------------------------------------------------------------------


def render(payload: Result) -> str:
    """``worker.md`` from what ``worker.json`` holds."""
    meta, over, rec = payload["meta"], payload["overhead"], payload["recovery"]
    idle = payload["idle"]
    step_ms = over["median_us_per_step"]["A"] / 1000
    extra_ms = step_ms * idle["worker_cpu_ms_per_s"] / 1000
    extra_ms += over["get_shards_ms_median"] / meta["settings"]["steps_per_epoch"]
    bottom_up = 1 + extra_ms / step_ms
    s = meta["settings"]
    ratio = over["ratio"]
    wall, cpu = over["median_us_per_step"], over["median_cpu_us_per_step"]
    summary = rec["summary"]
    ack, fresh = summary["serving_to_ack_s"], summary["serving_to_fresh_shards_s"]
    lines = [
        "# dtr.worker benchmark",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu_count']} cores (os.cpu_count()), {meta['platform']}",
        f"- python {meta['python']}, torch {meta['torch']}, grpcio {meta['grpcio']}, "
        f"etcd {meta['etcd']}",
        f"- command: `{meta['command']}` (wall time {meta['wall_s']:.0f} s; load average "
        f"{meta['loadavg_at_start'][0]:.2f} at start, {meta['loadavg_at_end'][0]:.2f} at the end)",
        "- setup: 1 coordinator replica and 1 etcd member (LocalCluster) on 127.0.0.1; "
        f"this process pinned to CPUs {meta['cpus']['this_process']}, etcd, the replica and "
        f"the peer worker to {meta['cpus']['cluster_and_peer']}.",
        "",
        "## Targets",
        "",
        "| figure | target | measured | verdict |",
        "| --- | --- | ---: | --- |",
        f"| (a) time per training step, ShardSampler + Worker / DistributedSampler "
        f"| ≤ {OVERHEAD_RATIO_MAX:g} | {ratio:.3f} | {verdict(ratio, OVERHEAD_RATIO_MAX)} |",
        f"| (b) replica serving → first acknowledged heartbeat, p50 | ≤ {RECOVERY_MAX_S:g} s "
        f"| {ack['p50']:.2f} s | {verdict(ack['p50'], RECOVERY_MAX_S)} |",
        f"| (b) replica serving → first acknowledged heartbeat, max | ≤ {RECOVERY_MAX_S:g} s "
        f"| {ack['max']:.2f} s | {verdict(ack['max'], RECOVERY_MAX_S)} |",
        f"| (b) replica serving → first fresh GetShards, p50 | ≤ {RECOVERY_MAX_S:g} s "
        f"| {fresh['p50']:.2f} s | {verdict(fresh['p50'], RECOVERY_MAX_S)} |",
        f"| (b) replica serving → first fresh GetShards, max | ≤ {RECOVERY_MAX_S:g} s "
        f"| {fresh['max']:.2f} s | {verdict(fresh['max'], RECOVERY_MAX_S)} |",
        "",
        "## (a) Overhead per training step",
        "",
        f"MLP 64→256→256→10, batch {s['batch_size']}, SGD, `torch.set_num_threads(1)`; "
        f"{s['num_samples']:,} samples in {s['num_shards']} shards; each run is "
        f"{s['epochs_per_run']} epochs of {s['steps_per_epoch']} steps (rank 0 of 2 with "
        "DistributedSampler). B: one GetShards per epoch (median "
        f"{over['get_shards_ms_median']:.2f} ms, max {over['get_shards_ms_max']:.2f} ms), "
        "heartbeats every 1 s, `report_progress` every step.",
        "",
        "| | A: DistributedSampler | B: ShardSampler + Worker | B/A |",
        "| --- | ---: | ---: | ---: |",
        f"| wall µs/step, median | {wall['A']:.1f} | {wall['B']:.1f} | {ratio:.3f} |",
        f"| wall, median of adjacent-pair ratios | | | {over['median_pair_ratio']:.3f} |",
        f"| CPU µs/step (all threads), median | {cpu['A']:.1f} | {cpu['B']:.1f} "
        f"| {over['cpu_ratio']:.3f} |",
        "",
        f"An idle Worker (heartbeat stream open, nothing else) costs "
        f"{idle['worker_cpu_ms_per_s']:.2f} ms of CPU per second "
        f"({idle['worker_cpu_ms_per_s'] / 10:.2f}% of a core; the median of "
        f"{len(idle['intervals_s'])} one-second intervals with one, less that without): the "
        "part of the overhead that does not shrink with the number of steps per epoch.",
        "",
        f"From those parts alone B/A would be {bottom_up:.3f}: the idle cost plus one median "
        f"GetShards per {s['steps_per_epoch']} steps, over A's median step "
        "(`report_progress`, 0.2 µs, left out).",
        "",
        f"Identical A runs differed by up to {over['a_spread']:.1%} of their median (load "
        f"average {meta['loadavg_at_start'][0]:.2f} at start, {meta['loadavg_at_end'][0]:.2f} "
        "at the end): a wall ratio closer to 1 than that is within the noise.",
        "",
        "| rep | loop | wall µs/step | CPU µs/step | run s | B: shards owned / generation |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in over["runs"]:
        owned = f"{r['shards_owned']} / {r['generation']}" if r["loop"] == "B" else ""
        lines.append(
            f"| {r['rep']} | {r['loop']} | {r['us_per_step']:.1f} | {r['cpu_us_per_step']:.1f} "
            f"| {r['seconds']:.2f} | {owned} |"
        )
    lines += [
        "",
        "## (b) Every replica killed, restarted: how soon the worker is served again",
        "",
        f"Replicas restarted once heartbeats had gone unanswered for {s['lease_ttl_s'] + 1} s "
        f"(lease TTL {s['lease_ttl_s']} s). Times from the first health answer of a restarted "
        "replica. The target is 1 s plus the worker's backoff cap "
        f"({RetryPolicy().max_backoff_s:g} s).",
        "",
        "| cycle | outage s | restart → serving s | → leader s | → heartbeat ack s "
        "| → fresh shards s | stale answers meanwhile |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in rec["cycles"]:
        lines.append(
            f"| {c['cycle']} | {c['outage_s']:.2f} | {c['restart_to_serving_s']:.2f} "
            f"| {c['serving_to_leader_s']:.2f} | {c['serving_to_ack_s']:.2f} "
            f"| {c['serving_to_fresh_shards_s']:.2f} | {c['stale_answers_during_outage']} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--repetitions", type=int, help="timed runs of each loop in (a)")
    parser.add_argument("--epochs-per-run", type=int, help="epochs per run in (a)")
    parser.add_argument("--recovery-cycles", type=int, help="outages in (b)")
    args = parser.parse_args()
    # The worker's warnings during (b)'s outages are expected; say whose they are.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = quick_settings() if args.quick else Settings()
    overrides = {
        name: value
        for name in ("repetitions", "epochs_per_run", "recovery_cycles")
        if (value := getattr(args, name)) is not None
    }
    if any(v < 1 for v in overrides.values()):
        parser.error("--repetitions, --epochs-per-run and --recovery-cycles must be at least 1")
    settings = dataclasses.replace(settings, **overrides)
    started, load_before = time.monotonic(), os.getloadavg()
    results = run(settings)
    meta: Result = {
        **run_facts(),
        "torch": torch.__version__,
        "grpcio": grpc.__version__,
        "etcd": results.pop("etcd_version"),
        "cpus": results.pop("cpus"),
        "wall_s": time.monotonic() - started,
        "loadavg_at_start": load_before,
        "loadavg_at_end": os.getloadavg(),
        "settings": {**dataclasses.asdict(settings), "steps_per_epoch": settings.steps_per_epoch},
        "targets": {"overhead_ratio_max": OVERHEAD_RATIO_MAX, "recovery_max_s": RECOVERY_MAX_S},
    }
    payload = {"meta": meta, **results}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "worker.json").write_text(json.dumps(payload, indent=2) + "\n")
    markdown = render(payload)
    (args.results_dir / "worker.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
