"""Benchmark dtr.ring: balance, movement on join/leave, and speed.

Run as ``.venv/bin/python benchmarks/ring.py`` (``make bench``). Writes
``benchmarks/results/ring.json`` (every number) and ``ring.md`` (the tables).
Counts are fixed and a time budget caps the join/leave trials, so the run
stays under three minutes on two cores.

"moved/ideal" is the fraction of shards whose owner changed divided by the
least any scheme must move: the leaver's fair share ``c/C`` on a leave, the
joiner's ``c/(C + c)`` on a join. Loads are divided by each member's fair
share ``num_shards * c / C``, so the columns also hold for unequal capacities.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
from bench_paths import RESULTS, run_facts
from numpy.typing import NDArray

from dtr.ring import assign_shards, owner_array

TIMING_RUNS = 5
TRIALS = 8


@dataclass(frozen=True)
class Case:
    """One configuration: equal capacities unless ``capacities`` cycles others."""

    members: int
    shards: int
    load_factor: float | None
    capacities: tuple[float, ...] = (1.0,)

    def membership(self) -> dict[str, float]:
        cycle = self.capacities
        return {f"w{i:04d}": cycle[i % len(cycle)] for i in range(self.members)}


@dataclass(frozen=True)
class Row:
    """Measured numbers for one case; ratios are means over ``trials``, then the worst."""

    members: int
    shards: int
    mode: str
    capacities: str
    max_over_mean: float
    min_over_mean: float
    join_moved_over_ideal: float
    join_moved_over_ideal_max: float
    leave_moved_over_ideal: float
    leave_moved_over_ideal_max: float
    trials: int
    assign_s: float


def mode_name(load_factor: float | None, vnodes: int = 150) -> str:
    return f"plain ({vnodes} vnodes)" if load_factor is None else f"bounded {load_factor:g}"


def owners_by_name(members: Mapping[str, float], case: Case) -> NDArray[np.str_]:
    """Owner ids per shard, as strings, so assignments over different members compare."""
    ownership = owner_array(members, "bench", case.shards, load_factor=case.load_factor)
    return np.array(ownership.members)[ownership.owners]


def median_seconds(run: Callable[[], object], repeats: int = TIMING_RUNS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def moved_ratios(case: Case, deadline: float) -> tuple[list[float], list[float]]:
    """Moved/ideal for joins of new members and leaves of evenly spread members."""
    members = case.membership()
    total = sum(members.values())
    base = owners_by_name(members, case)
    ids = sorted(members)
    joins: list[float] = []
    leaves: list[float] = []
    for trial in range(TRIALS):
        if trial and time.monotonic() > deadline:
            break
        leaver = ids[(trial * len(ids)) // TRIALS]
        rest = {m: c for m, c in members.items() if m != leaver}
        moved = np.mean(base != owners_by_name(rest, case))
        leaves.append(float(moved) / (members[leaver] / total))
        grown = {**members, f"joiner{trial}": 1.0}
        moved = np.mean(base != owners_by_name(grown, case))
        joins.append(float(moved) / (1.0 / (total + 1.0)))
    return joins, leaves


def measure(case: Case, deadline: float) -> Row:
    members = case.membership()
    result = assign_shards(members, "bench", case.shards, load_factor=case.load_factor)
    loads = np.array([len(result[m]) for m in sorted(members)])
    fair = case.shards * np.array([members[m] for m in sorted(members)]) / sum(members.values())
    joins, leaves = moved_ratios(case, deadline)
    seconds = median_seconds(
        lambda: assign_shards(members, "bench", case.shards, load_factor=case.load_factor)
    )
    return Row(
        members=case.members,
        shards=case.shards,
        mode=mode_name(case.load_factor),
        capacities="equal" if len(case.capacities) == 1 else "/".join(map(str, case.capacities)),
        max_over_mean=float(np.max(loads / fair)),
        min_over_mean=float(np.min(loads / fair)),
        join_moved_over_ideal=statistics.mean(joins),
        join_moved_over_ideal_max=max(joins),
        leave_moved_over_ideal=statistics.mean(leaves),
        leave_moved_over_ideal_max=max(leaves),
        trials=len(leaves),
        assign_s=seconds,
    )


def main_cases() -> list[Case]:
    cases = [Case(n, 100_000, lf) for lf in (None, 1.05) for n in (10, 100, 1_000)]
    cases += [Case(100, 100_000, lf, (1.0, 2.0, 4.0)) for lf in (None, 1.05)]
    return cases


def tradeoff_cases() -> list[Case]:
    return [Case(n, 100_000, lf) for n in (1_000, 100) for lf in (None, 1.02, 1.05, 1.1, 1.25)]


@dataclass(frozen=True)
class LargeRow:
    """1,000,000 shards over 1,000 members: the coordinator's worst expected case."""

    mode: str
    assign_shards_s: float
    owner_array_s: float
    max_over_mean: float
    min_over_mean: float


def large_rows() -> list[LargeRow]:
    members = {f"w{i:04d}": 1.0 for i in range(1_000)}
    rows = []
    for lf in (None, 1.05):
        args = (members, "bench", 1_000_000)
        loads = np.bincount(owner_array(*args, load_factor=lf).owners, minlength=len(members))
        rows.append(
            LargeRow(
                mode=mode_name(lf),
                assign_shards_s=median_seconds(partial(assign_shards, *args, load_factor=lf)),
                owner_array_s=median_seconds(partial(owner_array, *args, load_factor=lf)),
                max_over_mean=float(loads.max() / loads.mean()),
                min_over_mean=float(loads.min() / loads.mean()),
            )
        )
    return rows


def markdown_table(rows: list[Row]) -> list[str]:
    lines = [
        "| members | shards | mode | capacities | max/mean | min/mean "
        "| join moved/ideal (worst) | leave moved/ideal (worst) | assign s |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.members:,} | {r.shards:,} | {r.mode} | {r.capacities} "
            f"| {r.max_over_mean:.3f} | {r.min_over_mean:.3f} "
            f"| {r.join_moved_over_ideal:.2f} ({r.join_moved_over_ideal_max:.2f}) "
            f"| {r.leave_moved_over_ideal:.2f} ({r.leave_moved_over_ideal_max:.2f}) "
            f"| {r.assign_s:.4f} |"
        )
    return lines


def render(
    meta: dict[str, object], main: list[Row], trade: list[Row], large: list[LargeRow]
) -> str:
    lines = [
        "# dtr.ring benchmark",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu_count']} cores (os.cpu_count()), {meta['platform']}",
        f"- python {meta['python']}, numpy {meta['numpy']}",
        f"- command: `{meta['command']}` (wall time {meta['wall_s']:.0f} s)",
        "",
        "Loads are relative to each member's fair share; moved/ideal is the fraction of",
        "shards that changed owner over `c/C` (leave) or `c/(C + c)` (join), the mean of",
        f"up to {TRIALS} joins / leaves, worst in brackets. `assign s` is the median of",
        f"{TIMING_RUNS} calls of `assign_shards` (dict output included), on one core.",
        "With 100 shards per member, the plain ring's max/mean adds the sampling noise",
        "of 100 shards to the spread of 150 vnodes; the 10^6-shard table shows the",
        "ring's own spread.",
        "",
        "## Balance, movement and time",
        "",
        *markdown_table(main),
        "",
        "## Load factor trade-off (100 and 1,000 shards per member)",
        "",
        *markdown_table(trade),
        "",
        "## 1,000,000 shards over 1,000 members",
        "",
        "| mode | assign_shards s | owner_array s | max/mean | min/mean |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[
            f"| {r.mode} | {r.assign_shards_s:.3f} | {r.owner_array_s:.3f} "
            f"| {r.max_over_mean:.3f} | {r.min_over_mean:.3f} |"
            for r in large
        ],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="stop adding join/leave trials after this many seconds",
    )
    args = parser.parse_args()
    started = time.monotonic()
    deadline = started + args.budget_s
    main_rows = [measure(c, deadline) for c in main_cases()]
    trade_rows = [measure(c, deadline) for c in tradeoff_cases()]
    large = large_rows()
    meta: dict[str, object] = {
        **run_facts(),
        "numpy": np.__version__,
        "wall_s": time.monotonic() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "main": [asdict(r) for r in main_rows],
        "tradeoff": [asdict(r) for r in trade_rows],
        "large": [asdict(r) for r in large],
    }
    (RESULTS / "ring.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / "ring.md").write_text(render(meta, main_rows, trade_rows, large))
    print(render(meta, main_rows, trade_rows, large))


if __name__ == "__main__":
    main()
