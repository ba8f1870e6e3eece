"""``slow-etcd-leadership``: a slow etcd within the keep-alive budget costs no leadership.

docs/failure-semantics.md ("A slow etcd"): round trips up to about 1.2 s
cost no leadership, because keep-alives are sent without waiting for earlier
ones and each may take the rest of the renew deadline. A leader that gives
its term up under such an etcd and takes the same term back milliseconds
later is invisible to every other checker: the claims the status poller
samples every 0.5 s (slowed by the same etcd) find a leader, and the job
trains on. The replica itself says it, though: ``stepping down: ...`` at
WARNING in its log. This check reads those lines and flags each one that
falls inside an ``etcd-slow`` or ``client-cancel`` fault (both slow every
replica's etcd proxies) whose round trip is within the budget, unless a
fault that gives a leader a reason to step down (``LEADER_KINDS``: its
process killed or paused, its etcd cut off or a member lost, the job
restarted) was active then or shortly before; a worker's or the storage's
fault excuses nothing.

It is what sees the ``short-keepalive`` mutant (``dtr.mutants``): with the
pre-fix 0.2 s keep-alive timeout, a 0.4 s round trip times out every
keep-alive and the leader steps down again and again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .checker_base import MAX_VIOLATIONS, CheckResult, Violation
from .history import Event, History, read_history

NAME = "slow-etcd-leadership"

#: The largest added round trip that must cost no leadership (docs/failure-semantics.md).
ROUND_TRIP_BUDGET_S = 1.2
#: Chunks delayed before a heal still arrive late for one round trip after it.
AFTER_HEAL_S = 1.0
#: How long another fault may still explain a step-down after it healed: a
#: renew deadline (2 s) plus a lease TTL's worth of re-election on a loaded machine.
OTHER_FAULT_MARGIN_S = 5.0
#: Faults that slow every replica's etcd proxies, with ``delay_s`` one way.
SLOW_KINDS = frozenset({"etcd-slow", "client-cancel"})
#: Faults that give a leader a reason to step down (it lost its process, its
#: etcd or its lease); a worker's or the storage's fault never does.
LEADER_KINDS = frozenset(
    {
        "leader-kill",
        "replica-kill",
        "zombie-leader",
        "partition-leader-etcd",
        "etcd-member-kill",
        "job-restart",
    }
)

_STEP_DOWN = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*stepping down: (.*)$")


@dataclass(frozen=True)
class Window:
    """One fault, from its injection to its heal (run clock, seconds)."""

    kind: str
    start: float
    end: float
    delay_s: float | None


@dataclass(frozen=True)
class StepDown:
    replica: str
    at: float  # run clock
    reason: str


def check_slow_etcd_in(work_dir: Path, history: History) -> CheckResult:
    """Read the run's nemesis history and replica logs under ``work_dir``; judge them."""
    wall_zero = time.time() - history.clock()
    faults = fault_windows(read_history([work_dir / "history" / "nemesis.jsonl"]))
    downs = [
        d
        for log in sorted((work_dir / "logs").glob("replica-*.log"))
        for d in step_downs(log, wall_zero)
    ]
    return check_slow_etcd(faults, downs)


def check_slow_etcd(faults: Sequence[Window], downs: Sequence[StepDown]) -> CheckResult:
    """Flag each step-down inside a within-budget slow etcd that no other fault explains."""
    slow = [
        f for f in faults if f.kind in SLOW_KINDS and 2 * (f.delay_s or 0) <= ROUND_TRIP_BUDGET_S
    ]
    others = [f for f in faults if f.kind in LEADER_KINDS]
    violations: list[str] = []
    checked = 0
    for window in slow:
        checked += 1
        inside = [
            d
            for d in downs
            if window.start <= d.at <= window.end + AFTER_HEAL_S
            and not any(o.start <= d.at <= o.end + OTHER_FAULT_MARGIN_S for o in others)
        ]
        if inside:
            first = inside[0]
            violations.append(
                f"{len(inside)} step-down(s) during {window.kind} t={window.start:.1f}-"
                f"{window.end:.1f}s (round trip {2 * (window.delay_s or 0):.3f} s, within the "
                f"{ROUND_TRIP_BUDGET_S} s budget); first: {first.replica} at t={first.at:.2f}s: "
                f"{first.reason}"
            )
    kept = tuple(Violation(v) for v in violations[:MAX_VIOLATIONS])
    left = max(0, len(violations) - MAX_VIOLATIONS)
    return CheckResult(NAME, not violations, checked, kept, left_off=left)


def fault_windows(events: Iterable[Event]) -> list[Window]:
    """Each injected fault's window; one never healed lasts to the end of the run."""
    started: dict[str, Event] = {}
    windows: list[Window] = []
    for event in events:
        if event.process != "nemesis" or event.op_id is None:
            continue
        if event.type == "ok":
            started[event.op_id] = event
        elif event.type == "info" and event.op_id in started:
            windows.append(_window(started.pop(event.op_id), event.time))
    windows += [_window(e, float("inf")) for e in started.values()]
    return windows


def _window(injected: Event, end: float) -> Window:
    value = injected.value
    delay = value.get("delay_s")
    return Window(
        str(value.get("kind")),
        injected.time,
        end,
        float(delay) if isinstance(delay, int | float) else None,
    )


def step_downs(log: Path, wall_zero: float) -> list[StepDown]:
    """The ``stepping down`` lines of one replica's log, on the run clock."""
    found = []
    with log.open(errors="replace") as lines:
        for line in lines:
            match = _STEP_DOWN.match(line)
            if match:
                wall = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found.append(StepDown(log.stem, wall - wall_zero, match[2].strip()))
    return found
