"""The long soak: chaos scenarios back to back, summed up in one committed result.

Run as ``.venv/bin/python benchmarks/soak.py`` (``make soak``). Options:
``--minutes`` (30 by default, shared evenly by the scenarios), ``--scenarios``
(``soak-fleet,soak-job`` by default: between them every nemesis kind),
``--seed``, ``--work-dir`` (each run's history, logs, ``results.json`` and
``report.html`` stay in a folder of its own there) and ``--out``
(``benchmarks/results``). Writes ``soak.json`` (every number, every run's
result) and ``soak.md`` (the summary the README quotes):
the date, commit and command; faults by kind (injected, healed, skipped);
failover p50 / p99 / max over every leader fault; the settle time after the
last heal; violations by checker. The exit status is 0 only when every run
passed every check.

Why two scenarios and not one: ``disk-full`` fills a tmpfs under a
``file://`` checkpoint store and ``slow-storage`` delays the proxy in front
of an S3 server, so no single run can hold both, and ``job-restart`` stops
every process of the job, which the simulated fleet of ``rack-failure``
(processes of hundreds of workers each) is not built to rejoin. Each run is
an ordinary ``dtr chaos run``; nothing here changes what it checks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench_paths import git_commit

from dtr.chaos.report import write_report
from dtr.chaos.runner import RunResult, run_scenario
from dtr.chaos.scenario_files import get_scenario
from dtr.chaos.summary import format_summary

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIOS = ("soak-fleet", "soak-job")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS))
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "soak")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error(f"--minutes must be in (0, 1440]; got {args.minutes}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    scenarios = [get_scenario(name) for name in names]  # refuses unknown names first
    seconds_each = args.minutes * 60 / len(scenarios)
    results: list[RunResult] = []
    for index, scenario in enumerate(scenarios):
        work_dir = args.work_dir / f"{index}-{scenario.name}"
        print(f"soak: {scenario.name} for {seconds_each:.0f} s, seed {args.seed}", flush=True)
        result = run_scenario(
            scenario,
            seed=args.seed,
            work_dir=work_dir,
            duration_s=seconds_each,
            progress=lambda line: print(f"  {line}", flush=True),
        )
        print(format_summary(result), flush=True)
        print(f"report: {write_report(work_dir / 'report.html', result)}", flush=True)
        results.append(result)
    summary = summarize(results, command=_command(argv), minutes=args.minutes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "soak.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0 if summary["passed"] else 1


def summarize(results: list[RunResult], *, command: str, minutes: float) -> dict[str, Any]:
    """Every run folded into the figures the README quotes, plus each run's own result."""
    faults: dict[str, Counter[str]] = defaultdict(Counter)
    violations: Counter[str] = Counter()
    failovers: list[float] = []
    unmeasured = 0
    settles: list[float] = []
    for result in results:
        for fault in result.faults:
            faults[fault.kind.value][fault.outcome] += 1
        for check in result.checks:
            if not check.ok:
                violations[check.name] += len(check.violations) + check.left_off
        failovers += result.failovers.times_s
        unmeasured += result.failovers.unmeasured
        if result.settled_s is not None:
            settles.append(result.settled_s)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": command,
        "minutes": minutes,
        "passed": all(r.passed for r in results),
        "faults_by_kind": {k: dict(sorted(v.items())) for k, v in sorted(faults.items())},
        "failover_s": _spread(failovers) | {"unmeasured": unmeasured},
        "settle_s": max(settles, default=None),
        "violations_by_checker": dict(sorted(violations.items())),
        "checks": sorted({check.name for r in results for check in r.checks}),
        "runs": [r.as_dict() for r in results],
    }


def _spread(times: list[float]) -> dict[str, Any]:
    if not times:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    # "inclusive": the 99th percentile of what was measured, never beyond its maximum
    p99 = statistics.quantiles(times, n=100, method="inclusive")[98] if len(times) > 1 else times[0]
    return {
        "count": len(times),
        "p50": round(statistics.median(times), 3),
        "p99": round(p99, 3),
        "max": round(max(times), 3),
    }


def markdown(summary: dict[str, Any]) -> str:
    """The committed table: what ran, what struck, how fast it healed, what broke."""
    fo = summary["failover_s"]
    lines = [
        "# Soak",
        "",
        f"- date: {summary['date']}; commit `{summary['commit']}`",
        f"- command: `{summary['command']}`",
        f"- {summary['minutes']:g} minutes over {len(summary['runs'])} runs: "
        + ", ".join(
            f"{r['scenario']} (seed {r['seed']}, {r['duration_s']:g} s of faults, "
            f"{'PASS' if r['passed'] else 'FAIL'})"
            for r in summary["runs"]
        ),
        f"- verdict: **{'PASS' if summary['passed'] else 'FAIL'}**",
        "",
        "| fault kind | injected | healed | skipped |",
        "| --- | --- | --- | --- |",
    ]
    for kind, outcomes in summary["faults_by_kind"].items():
        injected = sum(n for outcome, n in outcomes.items() if outcome != "skipped")
        lines.append(
            f"| {kind} | {injected} | {outcomes.get('healed', 0)} | {outcomes.get('skipped', 0)} |"
        )
    unmeasured = f"; {fo['unmeasured']} without a later write" if fo["unmeasured"] else ""
    lines += [
        "",
        f"Failover (leader fault to the first write at a newer term): {fo['count']} measured, "
        f"p50 {_s(fo['p50'])}, p99 {_s(fo['p99'])}, max {_s(fo['max'])}{unmeasured}.",
        f"Settle (last heal to every worker training again): {_s(summary['settle_s'])} "
        "(the slowest run).",
        "",
        "| checker | violations |",
        "| --- | --- |",
    ]
    for name in summary["checks"]:
        lines.append(f"| {name} | {summary['violations_by_checker'].get(name, 0)} |")
    return "\n".join(lines) + "\n"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _command(argv: list[str] | None) -> str:
    given = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "benchmarks/soak.py", *given])


if __name__ == "__main__":
    sys.exit(main())
