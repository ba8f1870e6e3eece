"""The chaos run's HTML report: one self-contained page a person can open after a run.

``render_report`` is pure: the ``results.json`` dict and the merged history
in, one HTML document out, with inline CSS and an inline SVG timeline
(``report_lanes`` says what it shows, ``report_timeline`` draws it) and no
script or fetch, so the file can be mailed, archived with the run or opened
offline. Every string that came from a history or a result is escaped: a
worker id or an error message is data, never markup. ``write_report`` is the
only I/O: it reads ``work_dir/history/*.jsonl`` and replaces the page
atomically, so a reader never sees half a report.

Top to bottom: the verdict and how to replay it, the timeline, the
invariants, then the facts behind them (failover, faults, operations,
workers). The terminal summary (``summary.py``) says the same in text.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .history import Event, read_history
from .report_lanes import build_timeline
from .report_timeline import legend_html, render_svg

if TYPE_CHECKING:
    from .runner import RunResult

__all__ = ["render_report", "write_report"]

#: Violations shown per failed check; the rest are in results.json.
SHOWN_VIOLATIONS = 5
#: The outcomes' column order in the operations table; others follow by name.
OUTCOME_ORDER = ("ok", "fail", "info", "unknown")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.verdict { display: inline-block; padding: 0.15em 0.6em; border-radius: 4px;
  color: white; font-weight: bold; font-size: 1.3em; letter-spacing: 0.05em; }
.verdict.passed { background: #2e7d32; } .verdict.failed { background: #c62828; }
.facts { color: #555; } code, pre { background: #f4f4f4; padding: 0.1em 0.3em; }
.picture { overflow-x: auto; border: 1px solid #ddd; }
.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4em 1.4em; }
.legend li { font-size: 0.85em; } .legend svg { vertical-align: middle; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; }
tr.bad td { background: #fdecea; } .bad-mark { color: #c62828; font-weight: bold; }
.ok-mark { color: #2e7d32; } ul.violations { margin: 0; padding-left: 1.2em; }
pre { white-space: pre-wrap; font-size: 0.85em; }
"""


def render_report(result: dict[str, Any], events: Sequence[Event]) -> str:
    """The HTML page of one run: ``result`` as results.json holds it, ``events`` merged by time."""
    passed = bool(result.get("passed"))
    title = f"dtr chaos: {result.get('scenario')} seed {result.get('seed')}: " + (
        "PASSED" if passed else "FAILED"
    )
    timeline = build_timeline(events, featured=set(result.get("workers", {})))
    sections = [
        _header(result),
        "<h2>Timeline</h2>",
        f'<div class="picture">{render_svg(timeline)}</div>',
        legend_html(timeline),
        _invariants(result.get("checks", [])),
        _failover(result.get("failover", {})),
        _faults(result.get("faults", [])),
        _operations(result.get("operations", {})),
        _workers(result.get("workers", {})),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def write_report(path: Path, result: RunResult) -> Path:
    """Render ``result`` with its run's history into ``path``, replaced atomically; returns it."""
    events = read_history(sorted((result.work_dir / "history").glob("*.jsonl")))
    page = render_report(result.as_dict(), events)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(page)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide a report meant to be shared
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def replay_command(result: dict[str, Any]) -> str:
    """The command that runs this schedule again.

    ``--duration`` always: the schedule and the steps depend on it, and giving
    the scenario's own duration changes nothing, so the command never needs
    the scenario registry (a run of a scenario file names that file instead).
    """
    command = f"dtr chaos run {result.get('scenario')} --seed {result.get('seed')}"
    duration = result.get("duration_s")
    if isinstance(duration, int | float):
        command += f" --duration {duration:.15g}"
    return command


def _header(result: dict[str, Any]) -> str:
    passed = bool(result.get("passed"))
    verdict = "PASSED" if passed else "FAILED"
    elapsed = result.get("elapsed_s")
    facts = [
        f"seed {result.get('seed')}",
        f"elapsed {_seconds(elapsed) or '?'}",
        f"{_seconds(result.get('duration_s'))} of faults, "
        f"up to {_seconds(result.get('settle_s'))} to settle",
        f"{result.get('steps')} steps per worker",
    ]
    return (
        f"<h1>Chaos run: {_e(result.get('scenario'))}</h1>\n"
        f'<p><span class="verdict {verdict.lower()}">{verdict}</span></p>\n'
        f'<p class="facts">{_e(" · ".join(facts))}<br>work dir '
        f"<code>{_e(result.get('work_dir'))}</code></p>\n"
        f"<p>Replay: <code>{_e(replay_command(result))}</code></p>"
    )


def _invariants(checks: Iterable[dict[str, Any]]) -> str:
    rows = []
    for check in checks:
        ok = bool(check.get("ok"))
        mark = '<span class="ok-mark">pass</span>' if ok else '<span class="bad-mark">FAIL</span>'
        cells = [
            _e(check.get("name")),
            mark,
            _num(check.get("checked")),
            _num(check.get("unchecked")),
            _violations(check),
        ]
        rows.append(_row(cells, bad=not ok))
    head = ["invariant", "result", "checked", "unchecked", "violations"]
    return "<h2>Invariants</h2>\n" + _table(head, rows)


def _violations(check: dict[str, Any]) -> str:
    """The first violations with the events that show them; a count of the rest."""
    violations = list(check.get("violations", []))
    if not violations:
        return ""
    items = []
    for violation in violations[:SHOWN_VIOLATIONS]:
        shown = "\n".join(json.dumps(e, sort_keys=True) for e in violation.get("events", []))
        detail = f"<details><summary>events</summary><pre>{_e(shown)}</pre></details>"
        items.append(f"<li>{_e(violation.get('message'))}{detail if shown else ''}</li>")
    more = len(violations) - SHOWN_VIOLATIONS + int(check.get("left_off") or 0)
    if more > 0:
        items.append(f"<li>… and {more} more (see results.json)</li>")
    return '<ul class="violations">' + "".join(items) + "</ul>"


def _failover(failover: dict[str, Any]) -> str:
    times = failover.get("times_s") or []
    listed = ", ".join(f"{t:.2f} s" for t in times) or "none measured"
    unmeasured = int(failover.get("unmeasured") or 0)
    return (
        "<h2>Failover</h2>\n<p>From a leader fault in place to the first write acknowledged "
        "at a newer term.</p>\n"
        + _table(
            ["p50", "max", "measured", "without a later write"],
            [
                _row(
                    [
                        _num(_seconds(failover.get("p50_s"))),
                        _num(_seconds(failover.get("max_s"))),
                        _e(listed),
                        _num(unmeasured),
                    ],
                    bad=unmeasured > 0,
                )
            ],
        )
    )


def _faults(faults: Iterable[dict[str, Any]]) -> str:
    rows = []
    for fault in faults:
        started, healed = fault.get("started_s"), fault.get("healed_s")
        held = None if healed is None or started is None else healed - started
        cells = [
            _e(fault.get("kind")),
            _e(fault.get("target")),
            _num(_seconds(started)),
            _num(_seconds(healed)),
            _num(_seconds(held)),
            _e(fault.get("outcome")),
            _e(fault.get("detail")),
        ]
        rows.append(_row(cells, bad=fault.get("outcome") not in ("healed", "skipped")))
    head = ["kind", "target", "started", "healed", "held", "outcome", "detail"]
    return "<h2>Faults</h2>\n" + (_table(head, rows) if rows else "<p>No faults.</p>")


def _operations(operations: dict[str, dict[str, int]]) -> str:
    seen = {outcome for counts in operations.values() for outcome in counts}
    columns = [o for o in OUTCOME_ORDER if o in seen] + sorted(seen - set(OUTCOME_ORDER))
    rows = [
        _row([_e(f), *(_num(counts.get(o, 0)) for o in columns)], bad=bool(counts.get("fail")))
        for f, counts in operations.items()
    ]
    return "<h2>Operations by outcome</h2>\n" + _table(["operation", *columns], rows)


def _workers(workers: dict[str, dict[str, Any]]) -> str:
    rows = []
    for wid, outcome in workers.items():
        code = outcome.get("exit_code")
        stopped = bool(outcome.get("stopped_at_deadline"))
        cells = [
            _e(wid),
            _num(outcome.get("restarts")),
            _num(code),
            _e(", ".join(str(c) for c in outcome.get("exit_codes", []))),
            "stopped at the deadline" if stopped else "",
        ]
        rows.append(_row(cells, bad=code not in (0, None) and not stopped))
    head = ["worker", "restarts", "exit code", "exit codes", ""]
    return "<h2>Workers</h2>\n" + _table(head, rows)


def _table(head: Sequence[str], rows: Sequence[str]) -> str:
    """A table of already-escaped rows under escaped column names."""
    header = "".join(f"<th>{_e(name)}</th>" for name in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row(cells: Iterable[str], *, bad: bool = False) -> str:
    """One row of cells that are already HTML; a bad row is highlighted."""
    inner = "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells)
    return f'<tr class="bad">{inner}</tr>' if bad else f"<tr>{inner}</tr>"


def _num(value: object) -> str:
    return f'<td class="num">{_e("" if value is None else value)}</td>'


def _seconds(value: object) -> str | None:
    return None if not isinstance(value, int | float) else f"{value:.2f} s"


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)
