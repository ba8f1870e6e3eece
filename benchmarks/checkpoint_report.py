"""The markdown of ``benchmarks/checkpoint.py``: targets, verdicts and runs, from the JSON.

Pure: ``render(payload)`` takes what ``checkpoint.json`` holds and returns the
text of ``checkpoint.md``, so the report can be re-rendered from a saved JSON
without running anything.
"""

from __future__ import annotations

import statistics
from typing import Any

from checkpoint_s3 import SMALL_PARTS
from coordinator_report import verdict

Result = dict[str, Any]
STALL_VS_TORCH_SAVE_MAX = 0.10
STALL_VS_DCP_MAX = 1.0
LOST_VS_DCP_MAX = 0.5
THROUGHPUT_VS_RAW_MIN = 0.8
S3_VS_UPLOAD_FILE_MIN = 0.9
STEADY_VS_BARE_COPY_MAX = 1.25
FIRST_VS_TORCH_SAVE_MAX = 0.25
GB = 1e9


def _row(figure: str, dtr: str, reference: str, *, ratio: float, target: str, verdict: str) -> str:
    return f"| {figure} | {dtr} | {reference} | {ratio:.3f} | {target} | {verdict} |"


def figures(p: Result) -> Result:
    """The headline numbers, each a dtr value, a reference value and their ratio."""
    saves, load, s3 = p["saves"]["medians"], p["load"]["medians"], p["s3"]
    size = p["saves"]["bytes"]
    rate = {
        who: statistics.median(r["bytes_per_s"] for r in s3["runs"] if r["who"] == who)
        for who in {r["who"] for r in s3["runs"]}
    }
    return {
        "stall_vs_torch_save": saves["dtr"]["stall_s"] / saves["torch.save"]["stall_s"],
        "stall_vs_dcp": saves["dtr"]["stall_s"] / saves["dcp"]["stall_s"],
        "lost_vs_dcp": load["dtr"]["lost_s"] / load["dcp"]["lost_s"],
        "throughput_vs_raw": saves["raw write"]["durable_s"] / saves["dtr"]["durable_s"],
        "torch_save_vs_raw": saves["raw write"]["durable_s"] / saves["torch.save"]["durable_s"],
        "dcp_vs_raw": saves["raw write"]["durable_s"] / saves["dcp"]["durable_s"],
        "s3_vs_upload_file": rate["dtr"] / rate["upload_file"],
        "rate": {who: size / m["durable_s"] for who, m in saves.items()},
        "s3_rate": rate,
    }


def targets_table(p: Result) -> list[str]:
    f, saves, load = figures(p), p["saves"]["medians"], p["load"]["medians"]
    stall = saves["dtr"]["stall_s"]
    rate, s3_rate = f["rate"], f["s3_rate"]
    return [
        "| figure | dtr | reference | ratio | target | verdict |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        _row(
            "(1a) stall of `save_async` vs `torch.save` + fsync",
            f"{stall:.3f} s",
            f"{saves['torch.save']['stall_s']:.3f} s",
            ratio=f["stall_vs_torch_save"],
            target=f"≤ {STALL_VS_TORCH_SAVE_MAX:g}",
            verdict=verdict(f["stall_vs_torch_save"], STALL_VS_TORCH_SAVE_MAX),
        ),
        _row(
            "(1b) stall of `save_async` vs `dcp.async_save` (reused stager)",
            f"{stall:.3f} s",
            f"{saves['dcp']['stall_s']:.3f} s",
            ratio=f["stall_vs_dcp"],
            target=f"≤ {STALL_VS_DCP_MAX:g}",
            verdict=verdict(f["stall_vs_dcp"], STALL_VS_DCP_MAX),
        ),
        _row(
            "(2) compute lost by a training loop, one save (start → durable)",
            f"{load['dtr']['lost_s']:.3f} s",
            f"{load['dcp']['lost_s']:.3f} s (dcp)",
            ratio=f["lost_vs_dcp"],
            target=f"≤ {LOST_VS_DCP_MAX:g}",
            verdict=verdict(f["lost_vs_dcp"], LOST_VS_DCP_MAX),
        ),
        _row(
            "(3) end-to-end local throughput vs raw `os.write` + fsync",
            f"{rate['dtr'] / GB:.2f} GB/s",
            f"{rate['raw write'] / GB:.2f} GB/s",
            ratio=f["throughput_vs_raw"],
            target=f"≥ {THROUGHPUT_VS_RAW_MIN:g}",
            verdict=verdict(f["throughput_vs_raw"], THROUGHPUT_VS_RAW_MIN, at_least=True),
        ),
        _row(
            "(3, orientation) `torch.save` + fsync vs raw write",
            "-",
            f"{rate['torch.save'] / GB:.2f} GB/s",
            ratio=f["torch_save_vs_raw"],
            target="-",
            verdict="-",
        ),
        _row(
            "(3, orientation) `dcp.async_save` → durable vs raw write",
            "-",
            f"{rate['dcp'] / GB:.2f} GB/s",
            ratio=f["dcp_vs_raw"],
            target="-",
            verdict="-",
        ),
        _row(
            f"(4) S3 upload, {p['s3']['size_bytes'] >> 20} MiB object: `S3Storage.write` "
            "vs boto3 `upload_file`",
            f"{s3_rate['dtr'] / 1e6:.0f} MB/s",
            f"{s3_rate['upload_file'] / 1e6:.0f} MB/s",
            ratio=f["s3_vs_upload_file"],
            target=f"≥ {S3_VS_UPLOAD_FILE_MIN:g}",
            verdict=verdict(f["s3_vs_upload_file"], S3_VS_UPLOAD_FILE_MIN, at_least=True),
        ),
        _row(
            "(4, orientation) the same with 8 MiB parts x10 (`open_storage` options)",
            f"{s3_rate[SMALL_PARTS] / 1e6:.0f} MB/s",
            f"{s3_rate['upload_file'] / 1e6:.0f} MB/s",
            ratio=s3_rate[SMALL_PARTS] / s3_rate["upload_file"],
            target="-",
            verdict="-",
        ),
        *count_target_rows(p.get("counts", [])),
    ]


def count_target_rows(counts: list[Result]) -> list[str]:
    """(5): the steady stall against a bare copy, the first save against a synchronous one.

    The steady ratios are medians of each round's ratio (the save over the
    mean of the copies timed just before and after it), not ratios of medians.
    """
    if not counts:
        return []
    rows: list[str] = []
    for c in counts:
        m = c["medians"]
        rows.append(
            _row(
                f"(5a) steady stall vs a bare copy of the same bytes (one tensor), {_tensors(c)}",
                f"{m['dtr']:.3f} s",
                f"{m['flat copy']:.3f} s",
                ratio=m["dtr / flat copy"],
                target=f"≤ {STEADY_VS_BARE_COPY_MAX:g}",
                verdict=verdict(m["dtr / flat copy"], STEADY_VS_BARE_COPY_MAX),
            )
        )
    for c in counts:
        first = _first(c, prepared=True)["stall_s"]
        sync = c["medians"]["torch.save"]
        rows.append(
            _row(
                f"(5b) first save after `prepare()` vs `torch.save` + fsync, {_tensors(c)}",
                f"{first:.3f} s",
                f"{sync:.3f} s",
                ratio=first / sync,
                target=f"≤ {FIRST_VS_TORCH_SAVE_MAX:g}",
                verdict=verdict(first / sync, FIRST_VS_TORCH_SAVE_MAX),
            )
        )
    for c in counts:
        m = c["medians"]
        rows.append(
            _row(
                f"(5c, orientation) steady stall vs `_foreach_copy_` of the same tensors, "
                f"{_tensors(c)}",
                f"{m['dtr']:.3f} s",
                f"{m['bare copy']:.3f} s",
                ratio=m["dtr / bare copy"],
                target="-",
                verdict="-",
            )
        )
    for c in counts:
        cold = _first(c, prepared=False)["stall_s"]
        sync = c["medians"]["torch.save"]
        rows.append(
            _row(
                f"(5c, orientation) first save without `prepare()` vs `torch.save` + fsync, "
                f"{_tensors(c)}",
                f"{cold:.3f} s",
                f"{sync:.3f} s",
                ratio=cold / sync,
                target="-",
                verdict="-",
            )
        )
    return rows


def _tensors(c: Result) -> str:
    return f"{c['tensors']:,} tensors"


def _first(c: Result, *, prepared: bool) -> Result:
    return next(r for r in c["first"] if r["prepared"] is prepared)


def header(p: Result) -> list[str]:
    meta, state = p["meta"], p["state"]
    s = meta["settings"]
    return [
        "# dtr checkpoint benchmark",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu_count']} cores (os.cpu_count()), {meta['memory_gib']:.0f} GiB "
        f"RAM, {meta['platform']}; checkpoints on {meta['file_system']}",
        f"- python {meta['python']}, torch {meta['torch']}, boto3 {meta['boto3']}, "
        f"moto {meta['moto']}, etcd {meta['etcd']}",
        f"- command: `{meta['command']}` (wall time {meta['wall_s']:.0f} s; load average "
        f"{meta['loadavg_at_start'][0]:.2f} at start, {meta['loadavg_at_end'][0]:.2f} at the end; "
        f"{meta['busy_cpus_before_start']:.2f} CPUs busy in the second before the start)",
        f"- state: {state['bytes'] / (1 << 30):.3f} GiB in {state['tensors']} float32 tensors "
        f"({s['big_tensors']} x {s['big_bytes'] >> 20} MiB, {s['small_tensors']} x "
        f"{s['small_bytes'] >> 10} KiB)",
        "- setup: a `CheckpointManager` (file:// storage in a temporary directory, crc32c, "
        "`max_in_flight=1`, reused for every save) over a `Worker` of a 1-replica "
        "`LocalCluster` with its own etcd, all on 127.0.0.1; nothing pinned.",
        "- dcp: `torch.distributed.checkpoint.async_save(state, checkpoint_id=dir, "
        "async_stager=stager)` without a process group (torch warns and saves as a single "
        "process), its default `FileSystemWriter` (fsyncs), one "
        "`DefaultStager(StagingOptions(False, False, False, False))` reused for every save so "
        "its staged CPU storages are cached and reused. "
        + _blocking_stager_note(p.get("blocking_stager_problem")),
        "",
    ]


def _blocking_stager_note(problem: str | None) -> str:
    if problem is None:
        return "(`BlockingAsyncStager(cache_staged_state_dict=True)` also works here.)"
    return (
        "`BlockingAsyncStager(cache_staged_state_dict=True)` cannot run on this machine: it "
        f"pins its cache, and staging raised `{problem}`."
    )


def warm_up_section(p: Result) -> list[str]:
    state, cold = p["state"], p["saves"]["cold"]
    return [
        "## Warm-up",
        "",
        f"Creating the state (`torch.rand`, the first touch of its "
        f"{state['bytes'] / (1 << 30):.2f} GiB) took {state['first_touch_s']:.2f} s. The first "
        "save of each kind, untimed, was far slower than the warm ones below: the first GiB "
        "touched on a fresh machine is slow (page faults; dtr's staging buffer and dcp's "
        "staged copies are allocated then; the cold dtr save was also the run's first write "
        "to this disk). Every figure below is from warm saves: the manager and dcp's stager "
        "are reused.",
        "",
        "| first save | stall s | durable s |",
        "| --- | ---: | ---: |",
        *[f"| {r['who']} | {r['stall_s']:.3f} | {r['durable_s']:.3f} |" for r in cold],
        "",
    ]


def saves_section(p: Result) -> list[str]:
    saves = p["saves"]
    size = saves["bytes"]
    lines = [
        "## (1) and (3): saves one after another",
        "",
        f"Each save writes {size / GB:.3f} GB (dtr's part: header + data; the raw write "
        "writes exactly those bytes, read back from dtr's part). `stall` is how long the "
        "call blocked the caller; `durable` is from the call to the data being fsynced "
        "(dtr: `future.result()`, which also waits for the commit record in the fsynced "
        "SQLite queue; dcp: the upload future). Synchronous saves stall for their whole "
        f"duration. Order rotated each round; medians of {len(saves['runs']) // 4} rounds.",
        "",
        "| rep | save | stall s | durable s | GB/s to durable | CPU s |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in saves["runs"]:
        lines.append(
            f"| {r['rep']} | {r['who']} | {r['stall_s']:.3f} | {r['durable_s']:.3f} "
            f"| {size / r['durable_s'] / GB:.2f} | {r['cpu_s']:.2f} |"
        )
    lines += [
        "",
        "| median | stall s | durable s | CPU s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for who, m in saves["medians"].items():
        lines.append(f"| {who} | {m['stall_s']:.3f} | {m['durable_s']:.3f} | {m['cpu_s']:.2f} |")
    return [*lines, ""]


def load_section(p: Result) -> list[str]:
    load = p["load"]
    rate, spread = load["quiet_steps_per_s"], load["quiet_spread"]
    lines = [
        "## (2) Compute lost by a training loop running beside one save",
        "",
        "A thread runs 512x512 float32 matmuls back to back, `torch.set_num_threads(1)` "
        "called on that thread (under OpenMP the main thread's setting does not reach "
        "other threads: MKL would run the matmul on both cores), "
        "and starts the save itself between two steps, as a training script would, so "
        "the call's stall counts as lost compute too. Lost = window - steps done in it / "
        "the quiet rate, the window running from the save's start to durable. Quiet rate: "
        f"the median of {len(load['rate_windows'])} windows of nothing but the loop (one "
        f"before each save, and separate ones), {rate:.1f} steps/s; they spread by "
        f"{spread:.1%} (noise: about that fraction of each window). `save CPU` is this "
        "process's CPU time in the window minus the loop thread's: what the save burnt "
        "on the other core (or took from the loop's).",
        "",
        "| rep | save | call (stall) s | window s | steps | at quiet rate | lost s | save CPU s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in load["saves"]:
        lines.append(
            f"| {r['rep']} | {r['who']} | {r['call_s']:.3f} | {r['window_s']:.3f} "
            f"| {r['steps']} | {r['expected_steps']:.0f} | {r['lost_s']:.3f} "
            f"| {r['save_cpu_s']:.2f} |"
        )
    lines += [
        "",
        "| median | call s | window s | lost s | save CPU s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for who, m in load["medians"].items():
        lines.append(
            f"| {who} | {m['call_s']:.3f} | {m['window_s']:.3f} | {m['lost_s']:.3f} "
            f"| {m['save_cpu_s']:.2f} |"
        )
    return [*lines, ""]


def s3_section(p: Result) -> list[str]:
    s3 = p["s3"]
    lines = [
        "## (4) S3 upload path",
        "",
        f"{s3['size_bytes'] >> 20} MiB to one bucket of a `moto_server` on 127.0.0.1. dtr: "
        "`S3Storage.write` with its defaults (64 MiB parts, 4 at a time, CRC-32C of the "
        "whole object first, SHA-256 per part, `head_object` after) of 64 MiB memoryviews; "
        "reference: `upload_file` of a page-cached file of the same bytes, default "
        "`TransferConfig` (8 MiB parts, 10 threads). Server CPU is the moto process's "
        "user+system time during the upload: close to one core for the whole upload means "
        "the emulator (a Python server), not the loopback network, sets the pace.",
        "",
        "| rep | upload | s | MB/s | server CPU s | client CPU s |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in s3["runs"]:
        lines.append(
            f"| {r['rep']} | {r['who']} | {r['seconds']:.2f} | {r['bytes_per_s'] / 1e6:.0f} "
            f"| {r['server_cpu_s']:.2f} | {r['client_cpu_s']:.2f} |"
        )
    return [*lines, ""]


def counts_section(p: Result) -> list[str]:
    counts = p.get("counts", [])
    if not counts:
        return []
    size = counts[0]["bytes"]
    lines = [
        "## (5) Stall against the number of tensors; the first save",
        "",
        f"Three states of {size / (1 << 20):.0f} MiB each: "
        + ", ".join(
            f"{c['tensors']:,} float32 tensors of {c['bytes'] / c['tensors'] / 1024:,.0f} KiB"
            for c in counts
        )
        + ". For each, a fresh `CheckpointManager` (a fresh staging pool, as in a new "
        "process) saves once without `prepare()`; another fresh one calls "
        "`prepare(state)` (`prepare() call`: how long the call blocked), waits for it "
        "(`prepare ready`: the helper thread has allocated and touched the buffer) and saves "
        "(`first save after prepare`). That second manager then saves in paired rounds: "
        "`flat copy` (the state's bytes as one tensor, `copy_` into a reused tensor: the "
        "floor for any number of tensors) and `bare copy` (one `torch._foreach_copy_` of "
        "the state's tensors into reused tensors of the same shapes: a stager's copy with "
        "nothing else) are timed, then one dtr save (its stall; durable and old parts "
        "deleted before anything else is timed), then both copies again. A round's ratio is "
        "its stall over the mean of the two copies around it; the table gives medians of "
        f"stalls and of ratios over {_rounds(counts)} rounds. Then `torch.save` + fsync "
        "(synchronous: the stall is the save) and `dcp.async_save` with a reused "
        f"`DefaultStager` (its first save untimed), {_sync_rounds(counts)} of each, "
        "alternating. All figures are seconds of stall.",
        "",
        "| tensors | dtr steady | flat copy | dtr / flat | bare copy | dtr / bare "
        "| torch.save + fsync | dcp | first save, no prepare | prepare() call | prepare ready "
        "| first save after prepare |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in counts:
        m, cold, warm = c["medians"], _first(c, prepared=False), _first(c, prepared=True)
        lines.append(
            f"| {c['tensors']:,} | {m['dtr']:.3f} | {m['flat copy']:.3f} | "
            f"{m['dtr / flat copy']:.2f} | {m['bare copy']:.3f} | {m['dtr / bare copy']:.2f} | "
            f"{m['torch.save']:.3f} | {m['dcp']:.3f} | {cold['stall_s']:.3f} | "
            f"{warm['prepare_call_s']:.3f} | {warm['prepare_ready_s']:.3f} | "
            f"{warm['stall_s']:.3f} |"
        )
    lines += [
        "",
        "| tensors | rep | flat copy before | bare copy before | dtr stall | bare copy after "
        "| flat copy after | dtr / flat |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in counts:
        for r in c["rounds"]:
            flat, bare = r["flat copy"], r["bare copy"]
            lines.append(
                f"| {c['tensors']:,} | {r['rep']} | {flat[0]:.3f} | {bare[0]:.3f} | "
                f"{r['dtr']:.3f} | {bare[1]:.3f} | {flat[1]:.3f} | "
                f"{r['dtr'] / statistics.fmean(flat):.2f} |"
            )
    lines += [
        "",
        "| tensors | rep | save | stall s | durable s |",
        "| ---: | ---: | --- | ---: | ---: |",
    ]
    for c in counts:
        for r in c["synchronous"]:
            lines.append(
                f"| {c['tensors']:,} | {r['rep']} | {r['who']} | {r['stall_s']:.3f} "
                f"| {r['durable_s']:.3f} |"
            )
    return [*lines, ""]


def _rounds(counts: list[Result]) -> str:
    rounds = sorted(len(c["rounds"]) for c in counts)
    return f"{rounds[0]} to {rounds[-1]}" if rounds[0] != rounds[-1] else str(rounds[0])


def _sync_rounds(counts: list[Result]) -> str:
    return str(max(r["rep"] for c in counts for r in c["synchronous"]) + 1)


def render(p: Result) -> str:
    lines = [
        *header(p),
        "## Targets",
        "",
        *targets_table(p),
        "",
        *warm_up_section(p),
        *saves_section(p),
        *load_section(p),
        *s3_section(p),
        *counts_section(p),
    ]
    return "\n".join(lines)
