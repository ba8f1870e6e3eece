"""The markdown of ``benchmarks/coordinator.py``: tables, targets and verdicts from the JSON.

Pure: ``render(payload)`` takes what ``coordinator.json`` holds and returns
the text of ``coordinator.md``, so the report can be re-rendered from a
saved JSON without running anything.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

Result = dict[str, Any]
THROUGHPUT_RATIO_MIN = 0.8
HEARTBEAT_P99_MAX_MS = 5.0
SHARDS_P99_MAX_MS = 10.0
BARRIER_RATIO_MAX = 1.5
SIGTERM_MAX_S = 0.5


def verdict(value: float, limit: float, *, at_least: bool = False) -> str:
    """The verdict on one figure: "met", or by how much it missed ("missed by 2.1 (+42%)")."""
    ok = value >= limit if at_least else value <= limit
    if ok:
        return "met"
    return f"**missed** by {abs(value - limit):.3g} ({(value - limit) / limit:+.0%})"


def _pick(rows: list[Result], **match: object) -> Result:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    raise KeyError(f"no row with {match}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def header(meta: Result) -> list[str]:
    s, cpus = meta["settings"], meta["cpus"]
    return [
        "# dtr coordinator benchmark",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu_count']} cores (os.cpu_count()), {meta['platform']}",
        f"- python {meta['python']}, grpcio {meta['grpcio']}, protobuf {meta['protobuf']}, "
        f"numpy {meta['numpy']}, etcd {meta['etcd']}",
        f"- command: `{meta['command']}` (wall time {meta['wall_s']:.0f} s; load average "
        f"at start {meta['loadavg_at_start'][0]:.2f})",
        f"- setup: 3 coordinator replicas and 1 etcd member (LocalCluster), all on 127.0.0.1; "
        f"{s['workers']:,} registered workers simulated by one load-generator process "
        f"(asyncio, grpc.aio, {s['channels']} channels); a dataset of {s['shards']:,} shards. "
        "`bare` is a grpc.aio server answering the same messages with no logic, in its own "
        "process.",
        f"- CPUs: load generator pinned to {cpus['load_generator']}, the measured server (dtr "
        f"leader or bare) to {cpus['servers']}; etcd, followers and this script unpinned.",
        "",
    ]


def leadership_note(leader: Result) -> list[str]:
    if leader["term_before"] == leader["term_after"]:
        return [
            f"Leader {leader['replica']} held term {leader['term_before']} through figures 1-4 "
            "(checked before and after).",
            "",
        ]
    return [
        f"**Leadership changed during figures 1-4 (term {leader['term_before']} → "
        f"{leader['term_after']}): those figures are not valid; rerun.**",
        "",
    ]


def targets_table(p: Result) -> list[str]:
    rows = ["| figure | target | measured | verdict |", "| --- | --- | ---: | --- |"]
    for mode in ("unary", "stream"):
        ratio = throughput_summary(p["heartbeat_throughput"], mode)["ratio"]
        rows.append(
            f"| 1. heartbeat throughput, {mode} | dtr/bare ≥ {THROUGHPUT_RATIO_MIN:.0%} "
            f"| {ratio:.0%} | {verdict(ratio, THROUGHPUT_RATIO_MIN, at_least=True)} |"
        )
    for mode in ("unary", "stream"):
        p99 = _pick(p["heartbeat_latency"], mode=mode, server="dtr")["p99_ms"]
        rows.append(
            f"| 2. heartbeat p99, open loop, {mode} | ≤ {HEARTBEAT_P99_MAX_MS:g} ms "
            f"| {p99:.2f} ms | {verdict(p99, HEARTBEAT_P99_MAX_MS)} |"
        )
    p99 = _pick(p["get_shards"], server="dtr")["p99_ms"]
    rows.append(
        f"| 3. GetShards p99 | ≤ {SHARDS_P99_MAX_MS:g} ms | {p99:.2f} ms "
        f"| {verdict(p99, SHARDS_P99_MAX_MS)} |"
    )
    first = max(p["get_shards_first_call"]["first_ms"])
    rows.append(
        f"| 3. GetShards, first call after a generation change (worst) | ≤ "
        f"{SHARDS_P99_MAX_MS:g} ms (same bound, informative) | {first:.1f} ms "
        f"| {verdict(first, SHARDS_P99_MAX_MS)} |"
    )
    dtr, bare = _barrier_medians(p["barrier"])
    rows.append(
        f"| 4. barrier, last arrival → last release | dtr/bare ≤ {BARRIER_RATIO_MAX:g}x "
        f"| {dtr / bare:.2f}x | {verdict(dtr / bare, BARRIER_RATIO_MAX)} |"
    )
    for ttl in sorted({r["lease_ttl_s"] for r in p["failover"]}, reverse=True):
        for signal, limit in (("SIGKILL", ttl + 1.0), ("SIGTERM", SIGTERM_MAX_S)):
            worst = max(
                r["seconds"]
                for r in p["failover"]
                if r["lease_ttl_s"] == ttl and r["signal"] == signal
            )
            rows.append(
                f"| 5. failover, {signal}, lease TTL {ttl} s (worst of runs) | ≤ {limit:g} s "
                f"| {worst:.2f} s | {verdict(worst, limit)} |"
            )
    return ["## Targets", "", *rows, ""]


def throughput_summary(rows: list[Result], mode: str) -> Result:
    """Medians over the rounds per server, the ratio of medians, and each round's ratio."""

    def runs(server: str) -> list[Result]:
        return [r for r in rows if r["mode"] == mode and r["server"] == server]

    def median(server: str, field: str) -> float:
        return float(statistics.median(r[field] for r in runs(server)))

    dtr, bare = median("dtr", "calls_per_s"), median("bare", "calls_per_s")
    return {
        "dtr": dtr,
        "bare": bare,
        "ratio": dtr / bare,
        "round_ratios": [
            d["calls_per_s"] / b["calls_per_s"]
            for d, b in zip(runs("dtr"), runs("bare"), strict=True)
        ],
        **{
            f"{server}_{field}": median(server, field)
            for server in ("dtr", "bare")
            for field in ("server_cpu_us_per_call", "server_cpu", "loadgen_cpu")
        },
        "errors": sum(r["errors"] for r in rows if r["mode"] == mode),
        "rounds": len(runs("dtr")),
    }


def throughput_table(rows: list[Result]) -> list[str]:
    rounds = throughput_summary(rows, "unary")["rounds"]
    lines = [
        "## 1. Heartbeat throughput (closed loop, every worker in flight at once)",
        "",
        f"{rounds} rounds alternating dtr and bare; medians over the rounds. Calls answered",
        "per second in each measuring window (after a warm-up), and the CPU each side used",
        "in it (1.0 = one core). `CPU µs/call` is the server's CPU per answered call, the",
        "comparison that does not depend on which process saturated first.",
        "",
        "| mode | dtr calls/s | bare calls/s | dtr/bare | per-round dtr/bare "
        "| dtr CPU µs/call | bare CPU µs/call | server CPU dtr / bare "
        "| load-generator CPU dtr / bare | errors |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("unary", "stream"):
        t = throughput_summary(rows, mode)
        lines.append(
            f"| {mode} | {t['dtr']:,.0f} | {t['bare']:,.0f} | {t['ratio']:.0%} "
            f"| {', '.join(f'{r:.0%}' for r in t['round_ratios'])} "
            f"| {t['dtr_server_cpu_us_per_call']:.0f} | {t['bare_server_cpu_us_per_call']:.0f} "
            f"| {t['dtr_server_cpu']:.2f} / {t['bare_server_cpu']:.2f} "
            f"| {t['dtr_loadgen_cpu']:.2f} / {t['bare_loadgen_cpu']:.2f} | {t['errors']} |"
        )
    return [*lines, ""]


def latency_table(rows: list[Result]) -> list[str]:
    first = rows[0]
    lines = [
        f"## 2. Heartbeat latency (open loop, {first['workers']:,} workers x 1 beat every "
        f"{first['period_s']:g} s for {first['duration_s']:g} s)",
        "",
        "Latency runs from each beat's *scheduled* send time to its answer, so a late send",
        "counts (no coordinated omission). `send lag` is how late the load generator itself",
        "sent: part of every latency, the same for both servers.",
        "",
        "| mode | server | beats | p50 ms | p90 ms | p99 ms | max ms | send lag p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['server']} | {r['count']:,} | {_ms(r['p50_ms'])} "
            f"| {_ms(r['p90_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['max_ms'])} "
            f"| {_ms(r['send_lag']['p99_ms'])} | {r['errors']} |"
        )
    return [*lines, ""]


def shards_table(rows: list[Result], first: Result, shards: int) -> list[str]:
    lines = [
        f"## 3. GetShards ({shards:,} shards, closed loop)",
        "",
        "| server | concurrency | calls/s | p50 ms | p99 ms | max ms | shards per reply "
        "| server CPU µs/call |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['calls_per_s']:,.0f} "
            f"| {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {_ms(r['max_ms'])} "
            f"| {r['shards_per_reply_min']}-{r['shards_per_reply_max']} "
            f"| {r['server_cpu_us_per_call']:.0f} |"
        )
    runs = ", ".join(f"{v:.1f}" for v in first["first_ms"])
    again = ", ".join(f"{v:.2f}" for v in first["second_ms"])
    lines += [
        "",
        "First call after a generation change (a re-registration that changes one worker's",
        "capacity; the leader's assignment cache is keyed by generation, so this call runs",
        f"`assign_shards` over every live member): {runs} ms; the next call: {again} ms.",
        "",
    ]
    return lines


def _barrier_medians(rows: list[Result]) -> tuple[float, float]:
    def median(server: str) -> float:
        return float(statistics.median(r["last_release_s"] for r in rows if r["server"] == server))

    return median("dtr"), median("bare")


def barrier_table(rows: list[Result], workers: int) -> list[str]:
    dtr, bare = _barrier_medians(rows)
    lines = [
        f"## 4. Barrier ({workers:,} workers)",
        "",
        f"{workers - 1:,} arrivals are sent and waited for (on dtr: until all are persisted in",
        "etcd); then the last arrival is sent. Time from that send to the last of the",
        f"{workers:,} answers. Fresh barrier name per repetition.",
        "",
        "| server | repetition | last arrival → last release ms | statuses | arrivals in etcd "
        "| released in etcd | opening s |",
        "| --- | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    counters: dict[str, int] = {}
    for r in rows:
        counters[r["server"]] = counters.get(r["server"], 0) + 1
        statuses = ", ".join(
            f"{k.removeprefix('BARRIER_STATUS_')} {v}" for k, v in r["statuses"].items()
        )
        lines.append(
            f"| {r['server']} | {counters[r['server']]} | {r['last_release_s'] * 1000:.1f} "
            f"| {statuses} | {r['persisted'] if r['persisted'] is not None else '-'} "
            f"| {r.get('released_in_etcd', '-')} | {r['open_s']:.2f} |"
        )
    lines += [
        "",
        f"Median: dtr {dtr * 1000:.1f} ms, bare {bare * 1000:.1f} ms, ratio {dtr / bare:.2f}x.",
        "",
    ]
    return lines


def failover_table(rows: list[Result], meta: Result) -> list[str]:
    lines = [
        "## 5. Failover: leader signalled → first acknowledged write",
        "",
        "The write is a RegisterDataset of a fresh name, first sent to the old leader, then",
        "wherever a `dtr-leader` hint points (at once) or to the next replica (after "
        f"{meta['retry_pause_s'] * 1000:.0f} ms); {meta['attempt_timeout_s']:g} s per attempt. "
        "The signalled replica is restarted between repetitions.",
        "",
        "| lease TTL s | signal | median s | max s | runs s | attempts | target |",
        "| ---: | --- | ---: | ---: | --- | --- | --- |",
    ]
    groups: dict[tuple[int, str], list[Result]] = {}
    for r in rows:
        groups.setdefault((r["lease_ttl_s"], r["signal"]), []).append(r)
    for (ttl, signal), runs in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        seconds = [r["seconds"] for r in runs]
        limit = ttl + 1.0 if signal == "SIGKILL" else SIGTERM_MAX_S
        lines.append(
            f"| {ttl} | {signal} | {statistics.median(seconds):.2f} | {max(seconds):.2f} "
            f"| {', '.join(f'{v:.2f}' for v in seconds)} "
            f"| {', '.join(str(r['attempts']) for r in runs)} | ≤ {limit:g} s: "
            f"{verdict(max(seconds), limit)} |"
        )
    return [*lines, ""]


def render(payload: Result) -> str:
    meta = payload["meta"]
    registration = payload["registration"]
    workers = meta["settings"]["workers"]
    sections: list[Callable[[], list[str]]] = [
        lambda: header(meta),
        lambda: leadership_note(payload["leader"]),
        lambda: targets_table(payload),
        lambda: [
            "## Registration",
            "",
            f"{workers:,} concurrent RegisterWorker calls (each a fenced etcd transaction that "
            f"also moves the generation) took {registration['seconds']:.2f} s "
            f"({workers / registration['seconds']:,.0f}/s); generation "
            f"{registration['generation']} after.",
            "",
        ],
        lambda: throughput_table(payload["heartbeat_throughput"]),
        lambda: latency_table(payload["heartbeat_latency"]),
        lambda: shards_table(
            payload["get_shards"], payload["get_shards_first_call"], meta["settings"]["shards"]
        ),
        lambda: barrier_table(payload["barrier"], workers),
        lambda: failover_table(payload["failover"], meta),
    ]
    return "\n".join(line for section in sections for line in section())
