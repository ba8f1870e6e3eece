"""Benchmark dtr checkpoints: the stall, the compute lost, local and S3 throughput.

Run as ``.venv/bin/python benchmarks/checkpoint.py`` (``--quick`` for a smoke
test on a small state). Writes ``benchmarks/results/checkpoint.json`` (every
number) and ``checkpoint.md`` (targets, verdicts, the runs). All figures come
from one run, as ratios to references measured in the same run; (1) to (4)
on one ~1 GiB state: 8 float32 tensors of 128 MiB and 200 of 64 KiB.

dtr saves through a real ``CheckpointManager`` (``file://`` storage in a
temporary directory, an explicit commit queue) whose commits go to a real
1-replica ``LocalCluster`` (with its own etcd) through a real ``Worker``. The
manager lives for the whole run, so its staging buffer is reused from save
to save, as in training. The references:

- ``torch.save(state, f)`` + fsync, the synchronous baseline;
- ``torch.distributed.checkpoint.async_save`` without a process group (it
  saves as a single process) with one ``DefaultStager`` reused across saves,
  so its staged CPU storages are cached (``BlockingAsyncStager`` with
  ``cache_staged_state_dict=True`` needs an accelerator: it pins memory);
- ``os.write`` of a preallocated buffer holding the same bytes as dtr's part,
  then fsync: what the disk can do.

(The four ways to save live in ``checkpoint_savers.py``.)

Phases, each bounded in repetitions and time (no new repetition after its
budget): (1+3) saves one after another, order rotated, stall and time to
durable; (2) a matmul loop on a second thread, ``torch.set_num_threads(1)``,
starts one save between two steps and the compute it loses from the save's
start to durable is counted (``checkpoint_load.py``); (4) the S3 upload path
against boto3's ``upload_file`` on a local ``moto_server``
(``checkpoint_s3.py``); (5) three states of the same bytes (500 MiB) in 10,
200 and 1,000 tensors: the first save of a fresh manager without and after
``prepare()``, then steady saves against bare copies of the same tensors and
of the same bytes into reused buffers, ``torch.save`` + fsync and
``dcp.async_save``, in rotated rounds. Everything started here is stopped by
its own handle.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import moto
import torch
from bench_paths import RESULTS, run_facts
from checkpoint_load import MatmulLoop, compute_lost, process_cpu_s
from checkpoint_report import render
from checkpoint_s3 import compare_uploads
from checkpoint_savers import WORKER_ID, BareCopies, Savers, blocking_stager_problem

from dtr.chaos.cluster import LocalCluster
from dtr.worker import CheckpointManager, Worker

JOB = "bench-checkpoint"
MIB = 1 << 20
SAVE_TIMEOUT_S = 120.0
Result = dict[str, Any]
State = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes, counts and time budgets of one run (``--quick`` shrinks them)."""

    big_tensors: int = 8
    big_bytes: int = 128 * MIB
    small_tensors: int = 200
    small_bytes: int = 64 << 10
    save_repetitions: int = 5
    save_budget_s: float = 75.0
    load_repetitions: int = 5
    load_budget_s: float = 75.0
    quiet_window_s: float = 2.0
    settle_s: float = 1.0
    s3_bytes: int = 256 * MIB
    s3_repetitions: int = 5
    s3_budget_s: float = 45.0
    count_shapes: tuple[int, ...] = (10, 200, 1000)  # (5): tensors per state, same bytes
    count_bytes: int = 500 * MIB
    count_repetitions: int = 11  # paired rounds: bare copies, a dtr save, bare copies
    count_budget_s: float = 30.0
    count_sync_repetitions: int = 3  # torch.save + fsync and dcp.async_save, each


def quick_settings() -> Settings:
    return Settings(
        big_bytes=8 * MIB, save_repetitions=2, load_repetitions=1, s3_bytes=16 * MIB,
        s3_repetitions=1, quiet_window_s=1.0, count_bytes=40 * MIB, count_repetitions=2,
        count_sync_repetitions=1,
    )  # fmt: skip


def make_state(s: Settings) -> State:
    """Random float32 tensors; creating them is also the first touch of their memory."""
    generator = torch.Generator().manual_seed(0)
    state = {
        f"big.{i}": torch.rand(s.big_bytes // 4, generator=generator) for i in range(s.big_tensors)
    }
    for i in range(s.small_tensors):
        state[f"small.{i:03d}"] = torch.rand(s.small_bytes // 4, generator=generator)
    return state


# --- (1) and (3): stall and time to durable, saves one after another ------------------------


def one_save(savers: Savers, who: str) -> Result:
    cpu = process_cpu_s()
    started = time.perf_counter()
    if who in ("dtr", "dcp"):
        future = savers.start_dtr() if who == "dtr" else savers.start_dcp()
        returned = time.perf_counter()
        result = future.result(timeout=SAVE_TIMEOUT_S)
        done = time.perf_counter()
        row = {"stall_s": returned - started, "durable_s": done - started}
        if who == "dtr":
            row.update(bytes=result.size_bytes, step=result.step)
    else:
        (savers.torch_save if who == "torch.save" else savers.raw_write)()
        seconds = time.perf_counter() - started
        row = {"stall_s": seconds, "durable_s": seconds}
    row["cpu_s"] = process_cpu_s() - cpu  # every thread of this process, start to durable
    savers.clean_up()
    return {"who": who, **row}


def save_costs(savers: Savers, s: Settings) -> Result:
    """A cold round (first use of each path, not counted), then rotated, counted rounds."""
    cold = [one_save(savers, "dtr")]
    savers.load_raw(cold[0]["step"])  # now the raw reference writes exactly dtr's bytes
    cold += [one_save(savers, who) for who in ("dcp", "torch.save", "raw write")]
    order = ["dtr", "dcp", "torch.save", "raw write"]
    runs: list[Result] = []
    deadline = time.monotonic() + s.save_budget_s
    for rep in range(s.save_repetitions):
        if rep and time.monotonic() > deadline:
            break
        for who in order[rep % 4 :] + order[: rep % 4]:
            runs.append({"rep": rep, **one_save(savers, who)})
            print(
                f"save rep {rep} {who}: stall {runs[-1]['stall_s']:.3f} s, "
                f"durable {runs[-1]['durable_s']:.3f} s",
                flush=True,
            )
    medians = {
        who: {
            field: statistics.median(r[field] for r in runs if r["who"] == who)
            for field in ("stall_s", "durable_s", "cpu_s")
        }
        for who in order
    }
    return {"cold": cold, "runs": runs, "medians": medians, "bytes": cold[0]["bytes"]}


# --- (2) compute lost by a training loop running beside one save -----------------------------


def loaded_save(loop: MatmulLoop, savers: Savers, who: str, s: Settings) -> Result:
    """One save started by the loop after a quiet stretch (its rate is recorded too)."""
    before = loop.quiet_rate(s.settle_s)
    start = savers.start_dtr if who == "dtr" else savers.start_dcp
    cpu, loop_cpu = process_cpu_s(), loop.cpu_s()
    save = loop.call_between_steps(start)
    done = save.wait_done(SAVE_TIMEOUT_S)
    return {
        "who": who,
        "steps_per_s_before": before,
        "started_at": save.started_at,
        "call_s": save.call_s,
        "done_at": done,
        "durable_s": done - save.started_at,
        # Everything but the loop's own thread: the save's threads, gRPC, the waiting main.
        "save_cpu_s": (process_cpu_s() - cpu) - (loop.cpu_s() - loop_cpu),
    }


def compute_costs(savers: Savers, s: Settings) -> Result:
    """Quiet windows and one save of each kind per round; lost compute from the step times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    windows: list[Result] = []
    saves: list[Result] = []
    try:
        with MatmulLoop() as loop:
            loaded_save(loop, savers, "dtr", s)  # not counted: the loop's first seconds
            savers.clean_up()
            deadline = time.monotonic() + s.load_budget_s
            order = ["quiet", "dtr", "dcp"]
            for rep in range(s.load_repetitions):
                if rep and time.monotonic() > deadline:
                    break
                for who in order[rep % 3 :] + order[: rep % 3]:
                    if who == "quiet":
                        rate = loop.quiet_rate(s.quiet_window_s)
                        windows.append({"rep": rep, "kind": "quiet", "steps_per_s": rate})
                        continue
                    saves.append({"rep": rep, **loaded_save(loop, savers, who, s)})
                    savers.clean_up()
                    print(f"load rep {rep} {who}: {saves[-1]['durable_s']:.2f} s", flush=True)
            windows += [
                {"rep": r["rep"], "kind": "before a save", "steps_per_s": r["steps_per_s_before"]}
                for r in saves
            ]
            rate = statistics.median(w["steps_per_s"] for w in windows)
            for save in saves:
                save.update(compute_lost(loop, save["started_at"], save["done_at"], rate))
    finally:
        torch.set_num_threads(threads)
    rates = [w["steps_per_s"] for w in windows]
    medians = {
        who: {
            field: statistics.median(r[field] for r in saves if r["who"] == who)
            for field in ("lost_s", "window_s", "call_s", "save_cpu_s")
        }
        for who in ("dtr", "dcp")
    }
    return {
        "rate_windows": windows,
        "quiet_steps_per_s": statistics.median(rates),
        "quiet_spread": (max(rates) - min(rates)) / statistics.median(rates),
        "saves": saves,
        "medians": medians,
    }


# --- (5) stall against the number of tensors; the first save after prepare() -----------------


def count_state(tensors: int, total_bytes: int) -> State:
    """``tensors`` float32 tensors of equal size, ``total_bytes`` in all (first touch included)."""
    generator = torch.Generator().manual_seed(tensors)
    numel = total_bytes // 4 // tensors
    return {f"layer.{i:04d}": torch.rand(numel, generator=generator) for i in range(tensors)}


def manager_in(worker: Worker, root: Path) -> CheckpointManager:
    """A fresh manager (a fresh staging pool: its first save is a process's first save)."""
    root.mkdir()
    return CheckpointManager(worker, f"file://{root}/dtr", queue_path=root / "commits.sqlite")


def first_save(
    manager: CheckpointManager, state: State, steps: Iterator[int], *, prepare: bool
) -> Result:
    """The manager's first save, after ``prepare(state)`` has finished or without it."""
    row: Result = {"prepared": prepare}
    if prepare:
        started = time.perf_counter()
        ready = manager.prepare(state)
        row["prepare_call_s"] = time.perf_counter() - started
        ready.result(timeout=SAVE_TIMEOUT_S)
        row["prepare_ready_s"] = time.perf_counter() - started
    started = time.perf_counter()
    future = manager.save_async(state, next(steps))
    row["stall_s"] = time.perf_counter() - started
    future.result(timeout=SAVE_TIMEOUT_S)
    row["durable_s"] = time.perf_counter() - started
    manager.wait(timeout_s=30.0)
    return row


def one_count(
    worker: Worker, root: Path, tensors: int, steps: Iterator[int], s: Settings
) -> Result:
    """First saves (without, then with prepare), paired steady rounds, then synchronous saves.

    A steady round times the bare copies, one dtr save, then the bare copies
    again (mirrored around the save, so drift in the machine's load cancels);
    its ratios divide the save's stall by the mean of the copies around it.
    """
    state = count_state(tensors, s.count_bytes)
    root.mkdir()
    with manager_in(worker, root / "unprepared") as manager:
        unprepared = first_save(manager, state, steps, prepare=False)
    shutil.rmtree(root / "unprepared")
    with manager_in(worker, root / "prepared") as manager:
        prepared = first_save(manager, state, steps, prepare=True)
        (root / "refs").mkdir()
        savers = Savers(state, manager, root / "refs", steps)
        try:
            savers.clean_up()
            copies = BareCopies(state)
            rounds: list[Result] = []
            deadline = time.monotonic() + s.count_budget_s
            for rep in range(s.count_repetitions):
                if rep and time.monotonic() > deadline:
                    break
                flat, bare = [copies.flat()], [copies.per_tensor()]
                save = one_save(savers, "dtr")
                bare.append(copies.per_tensor())
                flat.append(copies.flat())
                rounds.append(
                    {
                        "rep": rep,
                        "dtr": save["stall_s"],
                        "dtr_durable_s": save["durable_s"],
                        "bare copy": bare,
                        "flat copy": flat,
                    }
                )
            one_save(savers, "dcp")  # dcp's first save, untimed: its stager's cache fills
            synchronous = [
                {"rep": rep, **one_save(savers, who)}
                for rep in range(s.count_sync_repetitions)
                for who in (("torch.save", "dcp") if rep % 2 == 0 else ("dcp", "torch.save"))
            ]
        finally:
            savers.stager.close()
    medians = count_medians(rounds, synchronous)
    print(
        f"{tensors} tensors: " + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()), flush=True
    )
    return {
        "tensors": tensors,
        "bytes": sum(t.nbytes for t in state.values()),
        "first": [unprepared, prepared],
        "rounds": rounds,
        "synchronous": synchronous,
        "medians": medians,
    }


def count_medians(rounds: list[Result], synchronous: list[Result]) -> dict[str, float]:
    """Medians of the stalls, and of each round's stall over the copies around it."""

    def median_of(values: list[float]) -> float:
        return statistics.median(values)

    return {
        "dtr": median_of([r["dtr"] for r in rounds]),
        "bare copy": median_of([statistics.fmean(r["bare copy"]) for r in rounds]),
        "flat copy": median_of([statistics.fmean(r["flat copy"]) for r in rounds]),
        "dtr / bare copy": median_of([r["dtr"] / statistics.fmean(r["bare copy"]) for r in rounds]),
        "dtr / flat copy": median_of([r["dtr"] / statistics.fmean(r["flat copy"]) for r in rounds]),
        "torch.save": median_of([r["stall_s"] for r in synchronous if r["who"] == "torch.save"]),
        "dcp": median_of([r["stall_s"] for r in synchronous if r["who"] == "dcp"]),
    }


def count_costs(worker: Worker, root: Path, steps: Iterator[int], s: Settings) -> list[Result]:
    """(5) for each count of tensors, one state at a time (each freed before the next)."""
    return [one_count(worker, root / f"count-{n}", n, steps, s) for n in s.count_shapes]


# --- the run -------------------------------------------------------------------------------


def file_system_of(path: Path) -> str:
    """``fstype device`` of the mount holding ``path``, from /proc/mounts."""
    best = ("", "?", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        if str(path).startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[0]):
            best = (mount, fstype, device)
    return f"{best[1]} on {best[2]} (mounted at {best[0]})"


def busy_cpus(sample_s: float = 1.0) -> float:
    """How many CPUs were busy (all processes, /proc/stat) over ``sample_s`` seconds."""

    def read() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total, idle = read()
    time.sleep(sample_s)
    total2, idle2 = read()
    return (os.cpu_count() or 1) * (1 - (idle2 - idle) / max(total2 - total, 1))


def measure(s: Settings, root: Path) -> Result:
    started = time.perf_counter()
    state = make_state(s)
    first_touch_s = time.perf_counter() - started
    state_bytes = sum(t.nbytes for t in state.values())
    steps = itertools.count(1)  # one worker commits each step once, whichever manager saves it
    print(f"state: {state_bytes / MIB:.0f} MiB, created in {first_touch_s:.2f} s", flush=True)
    with (
        LocalCluster.start(replicas=1, job=JOB) as cluster,
        Worker(cluster.coordinators, worker_id=WORKER_ID, job=JOB) as worker,
    ):
        with CheckpointManager(
            worker, f"file://{root}/dtr", queue_path=root / "commits.sqlite"
        ) as manager:
            savers = Savers(state, manager, root, steps)
            try:
                saves = save_costs(savers, s)
                load = compute_costs(savers, s)
            finally:
                savers.stager.close()
        counts = count_costs(worker, root, steps, s)
        etcd = cluster.owned_etcd.version if cluster.owned_etcd else "unknown"
    assert savers.raw is not None
    s3 = compare_uploads(savers.raw[: s.s3_bytes], root, s.s3_repetitions, s.s3_budget_s)
    return {
        "blocking_stager_problem": blocking_stager_problem(),
        "state": {
            "bytes": state_bytes,
            "tensors": len(state),
            "first_touch_s": first_touch_s,
        },
        "saves": saves,
        "load": load,
        "s3": s3,
        "counts": counts,
        "etcd": etcd,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a small state: a smoke test")
    args = parser.parse_args()
    s = quick_settings() if args.quick else Settings()
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    loadavg_at_start = os.getloadavg()
    busy_at_start = busy_cpus()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="dtr-bench-ckpt-"))
    try:
        measured = measure(s, root)
        file_system = file_system_of(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta = {
        **run_facts(),
        "torch": torch.__version__,
        "boto3": boto3.__version__,
        "moto": moto.__version__,
        "etcd": measured.pop("etcd"),
        "file_system": file_system,
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30),
        "quick": args.quick,
        "settings": dataclasses.asdict(s),
        "wall_s": time.monotonic() - started,
        "loadavg_at_start": loadavg_at_start,
        "busy_cpus_before_start": busy_at_start,
        "loadavg_at_end": os.getloadavg(),
    }
    payload = {"meta": meta, **measured}
    text = render(payload)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "checkpoint.json").write_text(json.dumps(payload, indent=2) + "\n")
        (RESULTS / "checkpoint.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
