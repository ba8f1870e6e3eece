"""Write ``ddp_faults.json`` and ``ddp_faults.md`` from the trials' rows (``ddp_faults.py``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddp_faults_summary import BREAKDOWN_KEYS, CPU_KEYS, RESTART_SPLIT, summarize

LABELS = {
    "restart_s": "restart: kill -> new processes start",
    "detect_s": "... of which detection: kill -> the later agent starts its rendezvous",
    "agents_rendezvous_s": "... of which the agents' rendezvous (the backend's part)",
    "spawn_s": "... of which spawning: rendezvous complete -> processes start",
    "rendezvous_s": "rendezvous: start -> joined (imports, process group, dtr Worker)",
    "load_s": "load: joined -> resumed (agreed checkpoint loaded)",
    "replay_s": "replay: resumed -> the pre-kill step reached again",
    "back_s": "back where it was: kill -> pre-kill step reached again",
    "total_s": "**total lost: kill -> every rank trained a step past its resumed step**",
    "agent_cpu_s": "CPU s the two torchrun agents used over the whole trial",
    "coordinator_cpu_s": "CPU s the 3 coordinators used over the whole trial",
    "rank_cpu_s": "CPU s the ranks' processes used over the whole trial",
    "agent_cpu_recovery_s": "CPU s the two agents used from the kill to training again",
    "coordinator_cpu_recovery_s": "CPU s the coordinators used from the kill to training again",
    "rank_cpu_recovery_s": "CPU s the ranks' processes used from the kill to training again",
}


def write_results(
    results: Path, name: str, facts: dict[str, Any], rows: Sequence[dict[str, Any]], ttl: float
) -> None:
    summary = summarize(rows, ttl)
    data = {"meta": facts, "trials": list(rows), **summary}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    text = "\n".join(markdown(facts, rows, summary))
    (results / f"{name}.md").write_text(text)
    print(text)


def _f(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def markdown(
    facts: dict[str, Any], rows: Sequence[dict[str, Any]], summary: dict[str, Any]
) -> list[str]:
    s = facts["settings"]
    per = summary["rank_failure"]
    targets = summary["targets"]
    ratio = targets["total_ratio"]
    restarts = targets["leader_kill_restarts"]
    gap = targets["leader_kill_longest_gap_s"]
    lines = [
        "# What faults cost a DDP job under torchrun: dtr's rendezvous vs c10d",
        "",
        f"- date: {facts['date']}; commit `{facts['commit']}`",
        f"- machine: {facts['cpu_count']} cores, {facts['platform']}, python {facts['python']}; "
        f"load average {facts['load_average_before'][0]} before, "
        f"{facts['load_average_after'][0]} after (1 min)",
        f"- command: `{facts['command']}` (wall time {facts['wall_s']} s)",
        f"- job: `{facts['script']}`, {facts['layout']}; `--step-time {s['step_time']}`, "
        f"`--save-every {s['save_every']}`",
        "",
        "How it was measured: after an unreported fault-free job of each backend, each trial is a "
        "fresh torchrun job (its own rendezvous id, "
        "dataset and checkpoint folder). Once the checkpoint of step "
        f"{s['kill_checkpoint']} was saved and the group was {s['replay_steps']} steps "
        "further, rank 1's process got SIGKILL; the phases come from the processes' own event "
        "lines (wall clock), each the moment the last rank got there; the restart's split comes "
        "from the agents' own log lines (`LOGLEVEL=INFO`, millisecond stamps). The trials "
        "alternate dtr, c10d, dtr, ... Medians over the trials that completed; `total` is the "
        "brief's measure (training again), `back where it was` adds the replayed steps.",
        "",
        "## Rank failure",
        "",
        "| phase (s) | dtr median | c10d median | dtr / c10d |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key in (*BREAKDOWN_KEYS[:1], *RESTART_SPLIT, *BREAKDOWN_KEYS[1:], *CPU_KEYS):
        d, c = per["dtr"].get(key), per["c10d"].get(key)
        ratio_of = (
            d / c if isinstance(d, int | float) and isinstance(c, int | float) and c else None
        )
        lines.append(f"| {LABELS[key]} | {_f(d)} | {_f(c)} | {_f(ratio_of, 2)} |")
    lines.append(
        f"| trials completed | {per['dtr']['completed']} of {per['dtr']['trials']} "
        f"| {per['c10d']['completed']} of {per['c10d']['trials']} | |"
    )
    lines += [
        "",
        f"Target: median total time lost, dtr / c10d <= {ratio['at_most']}x: "
        f"**{_f(ratio['value'], 2)}x, {ratio['verdict']}**"
        + (f" ({ratio['failed_trials']} trial(s) failed)" if ratio["failed_trials"] else "")
        + ".",
        "",
        "## Leader kill (dtr)",
        "",
        f"The coordinator leader got SIGKILL once the group reached step "
        f"{s['leader_kill_step']}; the lease TTL is {facts['lease_ttl_s']} s. A gap is the "
        "wait between consecutive steps of one process, over the steps from the kill to "
        f"{facts['lease_ttl_s'] + 5} s after it.",
        "",
        "| trial | processes restarted | longest gap s | longest gap before the kill s "
        "| median step s | new leader after s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["kind"] == "leader kill":
            lines.append(
                f"| {r['trial']} | {r.get('restarts', '-')} | {_f(r.get('longest_gap_s'))} "
                f"| {_f(r.get('gap_before_s'))} | {_f(r.get('median_step_s'), 4)} "
                f"| {_f(r.get('failover_s'))} |"
            )
    lines += [
        "",
        f"Targets: no process restarted: **{restarts['value']}, {restarts['verdict']}**; "
        f"longest gap <= TTL + 1 s = {gap['at_most']} s: "
        f"**{_f(gap['value'])} s, {gap['verdict']}**.",
        "",
        "## Trials",
        "",
        "| kind | backend | # | ok | exit codes | total s | resumed at step | reached step "
        "| processes started after the kill | wall s |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['backend']} | {r['trial']} | {'yes' if r['ok'] else 'NO'} "
            f"| {r['exit_codes']} | {_f(r.get('total_s'))} | {r.get('resumed_step', '-')} "
            f"| {r.get('reached_step', '-')} "
            f"| {r.get('incarnations', r.get('restarts', '-'))} | {r['wall_s']} |"
        )
    errors = [
        f"- {r['kind']} {r['backend']} #{r['trial']}: {r['error']}" for r in rows if "error" in r
    ]
    if errors:
        lines += ["", "Errors:", "", *errors]
    lines.append("")
    return lines
