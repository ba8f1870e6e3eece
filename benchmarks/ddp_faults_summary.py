"""The targets of ``ddp_faults.py`` and their verdicts, from the trials' rows.

Pure, like ``ddp_faults_report.py`` (which turns one trial's events into
its row's figures); ``tests/unit/test_ddp_faults_report.py`` tests both.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from ddp_faults_report import PHASES

#: Target: median total time lost to a rank failure, dtr over c10d, at most this.
RATIO_MAX = 1.2
#: Target: no step gap around a leader kill longer than the lease TTL plus this.
GAP_SLACK_S = 1.0
BREAKDOWN_KEYS = (*PHASES, "back_s", "total_s")
RESTART_SPLIT = ("detect_s", "agents_rendezvous_s", "spawn_s")
#: CPU seconds our processes used, over a trial and its recovery (ddp_faults_job.run_job).
CPU_KEYS = (
    *("agent_cpu_s", "coordinator_cpu_s", "rank_cpu_s"),
    *("agent_cpu_recovery_s", "coordinator_cpu_recovery_s", "rank_cpu_recovery_s"),
)


def summarize(rows: Sequence[dict[str, Any]], lease_ttl_s: float) -> dict[str, Any]:
    """Medians per backend, the targets and their verdicts, from the trials' rows.

    Only trials that completed (``ok``) count in the medians; a failed
    trial is a FAIL of the ratio target whatever the medians say, since a
    fault the job did not survive has no finite cost.
    """
    rank_rows = [r for r in rows if r["kind"] == "rank failure"]

    def done(backend: str) -> list[dict[str, Any]]:
        return [r for r in rank_rows if r["backend"] == backend and r["ok"]]

    per_backend = {
        backend: {
            "trials": sum(1 for r in rank_rows if r["backend"] == backend),
            "completed": len(done(backend)),
            **medians(done(backend), (*BREAKDOWN_KEYS, *RESTART_SPLIT, *CPU_KEYS)),
        }
        for backend in ("dtr", "c10d")
    }
    dtr_total = per_backend["dtr"].get("total_s")
    c10d_total = per_backend["c10d"].get("total_s")
    ratio = round(dtr_total / c10d_total, 3) if dtr_total and c10d_total else None
    failed = [r for r in rank_rows if not r["ok"]]
    ratio_ok = None if ratio is None else ratio <= RATIO_MAX and not failed
    leader_rows = [r for r in rows if r["kind"] == "leader kill" and "restarts" in r]
    leader_failed = [r for r in rows if r["kind"] == "leader kill" and not r["ok"]]
    restarts = max((r["restarts"] for r in leader_rows), default=None)
    gap = max((r["longest_gap_s"] for r in leader_rows), default=None)
    gap_max = lease_ttl_s + GAP_SLACK_S
    return {
        "rank_failure": per_backend,
        "targets": {
            "total_ratio": {
                "value": ratio,
                "at_most": RATIO_MAX,
                "failed_trials": len(failed),
                "verdict": verdict(ratio_ok),
            },
            "leader_kill_restarts": {
                "value": restarts,
                "at_most": 0,
                "trials": len(leader_rows),
                "verdict": verdict(
                    None if restarts is None else restarts == 0 and not leader_failed
                ),
            },
            "leader_kill_longest_gap_s": {
                "value": gap,
                "at_most": gap_max,
                "trials": len(leader_rows),
                "verdict": verdict(None if gap is None else gap <= gap_max),
            },
        },
    }


def medians(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """The median of each key over the rows that have it as a number."""
    out: dict[str, float] = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if values:
            out[key] = round(statistics.median(values), 3)
    return out


def verdict(ok: bool | None) -> str:
    """PASS, FAIL, or n/a when there was nothing to judge."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")
