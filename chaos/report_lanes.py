"""What the report's timeline shows, derived from a history: lanes of spans and marks.

Like the checkers, these are pure functions of the events: times stay in
seconds and looks are named by style, never drawn. ``report_timeline`` turns
a ``Timeline`` into an SVG and ``report`` wraps it in the HTML document;
nothing here knows pixels and nothing there reads events.

Size is bounded here, not hoped for: a run of hundreds of simulated workers
shows at most ``MAX_WORKER_LANES`` of them (those the nemesis hurt or that
saw a failure first) and folds the rest into one lane, and training steps
become a per-bucket count instead of one element per step.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace

from .checker_base import worker_id
from .history import Event
from .nemesis import PROCESS as NEMESIS

HARNESS = "harness"
#: Worker lanes drawn one by one; more workers share a single folded lane.
MAX_WORKER_LANES = 24
#: Training steps are counted per bucket of this many seconds (wider on long runs).
TRAIN_BUCKET_S = 0.5
MAX_BUCKETS = 400
#: Worker marks by (f, type): what a worker did that the picture shows.
WORKER_MARKS = {
    ("barrier", "ok"): "barrier",
    ("barrier", "fail"): "barrier-fail",
    ("barrier", "info"): "unknown",
    ("save", "ok"): "save",
    ("save", "fail"): "save-fail",
    ("commit", "ok"): "commit",
    ("commit", "info"): "unknown",
}
#: Marks a folded lane keeps: the ones that say something went wrong, or a step completed.
FOLDED_MARKS = frozenset({"barrier-fail", "save-fail", "killed", "commit-complete"})


@dataclass(frozen=True)
class Span:
    """Something that lasted: a fault in place, a leader's term, a worker process alive.

    ``key`` picks the colour within the style (a fault's kind, a term's
    number); ``row`` stacks spans that overlap in one lane (two leaders at
    once must both show).
    """

    start_s: float
    end_s: float
    style: str
    key: str = ""
    label: str = ""
    title: str = ""
    row: int = 0


@dataclass(frozen=True)
class Mark:
    """Something that happened at an instant: a barrier, a commit, a kill, a step change."""

    at_s: float
    style: str
    label: str = ""
    title: str = ""


@dataclass(frozen=True)
class Density:
    """Events counted per ``bucket_s`` from the start of the run (training progress)."""

    bucket_s: float
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Lane:
    name: str
    spans: tuple[Span, ...] = ()
    marks: tuple[Mark, ...] = ()
    density: Density | None = None
    title: str = ""

    @property
    def rows(self) -> int:
        return 1 + max((span.row for span in self.spans), default=0)


@dataclass(frozen=True)
class Timeline:
    """The lanes, top to bottom, over ``[0, end_s]`` seconds of the run."""

    end_s: float
    lanes: tuple[Lane, ...]


def build_timeline(
    events: Sequence[Event],
    *,
    max_worker_lanes: int = MAX_WORKER_LANES,
    featured: Collection[str] = (),
) -> Timeline:
    """Faults, leader, one lane per worker (folded past the cap), checkpoints, membership.

    ``featured`` workers (the run's real training processes, beside hundreds
    of simulated ones) always get a lane of their own.
    """
    end_s = max((e.time for e in events), default=0.0)
    end_s = max(end_s, 1.0)
    lanes = (
        fault_lane(events, end_s),
        leader_lane(events),
        *worker_lanes(events, end_s, max_worker_lanes, featured),
        checkpoint_lane(events),
        membership_lane(events),
    )
    return Timeline(end_s, lanes)


def fault_lane(events: Iterable[Event], end_s: float) -> Lane:
    """A bar per fault from in place (``ok``) to healed (``info``); a skipped one is a mark."""
    by_op: dict[str, dict[str, Event]] = defaultdict(dict)
    for event in events:
        if event.process == NEMESIS and event.op_id is not None:
            by_op[event.op_id].setdefault(event.type, event)
    spans: list[Span] = []
    marks: list[Mark] = []
    for op in by_op.values():
        if "ok" in op:
            spans.append(_fault_span(op["ok"], op.get("info"), end_s))
        elif "fail" in op:
            failed = op["fail"]
            kind = str(failed.value.get("kind", failed.f))
            title = f"{kind} skipped at {failed.time:.1f} s: {failed.value.get('error', '')}"
            marks.append(Mark(failed.time, "skipped", kind, title))
    return Lane("faults", stack_rows(spans), tuple(sorted(marks, key=_at)))


def _fault_span(placed: Event, healed: Event | None, end_s: float) -> Span:
    kind = str(placed.value.get("kind", placed.f))
    label = f"{kind} {placed.value.get('target', '')}".strip()
    until = healed.time if healed is not None else end_s
    if healed is None:
        outcome = "never healed"
    elif healed.value.get("healed") is False:
        outcome = f"heal failed: {healed.value.get('error', '')}"
    else:
        outcome = "healed"
    title = f"{label}: in place {placed.time:.2f}-{until:.2f} s, {outcome}"
    style = "fault" if outcome == "healed" else "fault-unhealed"
    return Span(placed.time, until, style, kind, label, title)


def leader_observations(events: Iterable[Event]) -> Iterable[tuple[float, int, str]]:
    """(time, term, replica): writes acknowledged, and replicas probed claiming leadership."""
    for event in events:
        if event.type != "ok":
            continue
        if event.f == "write" and event.term is not None and "replica" in event.value:
            yield event.time, event.term, str(event.value["replica"])
        elif event.f == "claim" and event.process == HARNESS and event.value.get("is_leader"):
            term = event.value.get("term", event.term)
            if term is not None and "replica" in event.value:
                yield event.time, int(term), str(event.value["replica"])


def leader_lane(events: Iterable[Event]) -> Lane:
    """A span per (term, replica) from its first observation to its last."""
    seen: dict[tuple[int, str], list[float]] = {}
    for at, term, replica in leader_observations(events):
        first_last = seen.setdefault((term, replica), [at, at])
        first_last[0], first_last[1] = min(first_last[0], at), max(first_last[1], at)
    spans = [
        Span(
            first,
            last,
            "term",
            str(term),
            f"term {term} · {replica}",
            _term_title(term, replica, first, last),
        )
        for (term, replica), (first, last) in seen.items()
    ]
    return Lane("leader", stack_rows(spans), title="who led: acknowledged writes and claims")


def _term_title(term: int, replica: str, first: float, last: float) -> str:
    return f"term {term} · {replica}: observed leading {first:.2f}-{last:.2f} s"


def stack_rows(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Spans by start, each on the first row free at its start, so overlaps never hide."""
    row_ends: list[float] = []
    stacked: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start_s, s.end_s)):
        row = next((i for i, end in enumerate(row_ends) if end < span.start_s), len(row_ends))
        if row == len(row_ends):
            row_ends.append(span.end_s)
        row_ends[row] = span.end_s
        stacked.append(replace(span, row=row))
    return tuple(stacked)


def worker_lanes(
    events: Sequence[Event], end_s: float, max_lanes: int, featured: Collection[str] = ()
) -> list[Lane]:
    """A lane per worker, natural order; past ``max_lanes``, the rest share one folded lane."""
    by_worker: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        wid = worker_id(event.process)
        if wid is not None:
            by_worker[wid].append(event)
    kills = kill_times(events)
    bucket_s = max(TRAIN_BUCKET_S, end_s / MAX_BUCKETS)
    shown, folded = choose_workers(by_worker, _targeted(events), max_lanes, featured)
    lanes = [worker_lane(w, by_worker[w], kills.get(w, []), bucket_s, end_s) for w in shown]
    if folded:
        lanes.append(folded_lane(folded, by_worker, kills, bucket_s, end_s))
    return lanes


def choose_workers(
    by_worker: dict[str, list[Event]],
    hurt: set[str],
    max_lanes: int,
    featured: Collection[str] = (),
) -> tuple[list[str], list[str]]:
    """(shown, folded): featured, then hurt and failing first, then by name; shown in name order."""

    def dull(wid: str) -> bool:
        return wid not in hurt and not any(e.type == "fail" for e in by_worker[wid])

    ranked = sorted(by_worker, key=lambda w: (w not in featured, dull(w), natural_key(w)))
    if len(ranked) <= max_lanes:
        return sorted(ranked, key=natural_key), []
    return sorted(ranked[:max_lanes], key=natural_key), sorted(ranked[max_lanes:], key=natural_key)


def natural_key(text: str) -> tuple[tuple[int, str], ...]:
    """Sort key reading digit runs as numbers: ``w2`` before ``w10``, ``s0-9`` before ``s0-17``."""
    return tuple(
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", text)
    )


def kill_times(events: Iterable[Event]) -> dict[str, list[float]]:
    """worker id -> the times the nemesis had it killed (``kill`` ok, by target)."""
    kills: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.process == NEMESIS and event.f == "kill" and event.type == "ok":
            kills[str(event.value.get("target", ""))].append(event.time)
    return {target: sorted(times) for target, times in kills.items()}


def _targeted(events: Iterable[Event]) -> set[str]:
    return {
        str(e.value.get("target", "")) for e in events if e.process == NEMESIS and e.type == "ok"
    }


def worker_lane(
    wid: str, events: Sequence[Event], kills: Sequence[float], bucket_s: float, end_s: float
) -> Lane:
    """Alive spans (one per incarnation), training density, its operations, its kills."""
    spans = tuple(
        Span(run[0].time, run[-1].time, "alive", title=f"{wid} alive {_between(run)}")
        for run in incarnations(events, kills)
    )
    train = density(_trained(events), bucket_s, end_s)
    return Lane(wid, spans, worker_marks(wid, events, kills), train, f"worker {wid}")


def folded_lane(
    folded: Sequence[str],
    by_worker: dict[str, list[Event]],
    kills: dict[str, list[float]],
    bucket_s: float,
    end_s: float,
) -> Lane:
    """The workers past the cap together: summed training, and only their notable marks."""
    marks: list[Mark] = []
    train: list[float] = []
    for wid in folded:
        own = worker_marks(wid, by_worker[wid], kills.get(wid, []))
        marks.extend(mark for mark in own if mark.style in FOLDED_MARKS)
        train.extend(_trained(by_worker[wid]))
    named = ", ".join(folded[:20]) + (", …" if len(folded) > 20 else "")
    name = f"{len(folded)} more workers"
    return Lane(name, (), tuple(sorted(marks, key=_at)), density(train, bucket_s, end_s), named)


def worker_marks(wid: str, events: Iterable[Event], kills: Iterable[float]) -> tuple[Mark, ...]:
    """Its barriers, saves and commits, and the nemesis's kills of it, by time."""
    marks = [mark for event in events if (mark := worker_mark(event)) is not None]
    marks += [Mark(at, "killed", title=f"{wid} killed at {at:.2f} s") for at in kills]
    return tuple(sorted(marks, key=_at))


def _trained(events: Iterable[Event]) -> list[float]:
    return [e.time for e in events if e.f == "train" and e.type == "ok"]


def _between(run: Sequence[Event]) -> str:
    return f"{run[0].time:.1f}-{run[-1].time:.1f} s"


def incarnations(events: Sequence[Event], kills: Sequence[float]) -> list[list[Event]]:
    """The worker's events split at each kill: one list per process lifetime that left events."""
    runs: list[list[Event]] = [[] for _ in range(len(kills) + 1)]
    for event in events:
        runs[bisect.bisect_right(kills, event.time)].append(event)
    return [run for run in runs if run]


def worker_mark(event: Event) -> Mark | None:
    """The mark for a barrier, save or commit outcome; None for what the picture skips."""
    style = WORKER_MARKS.get((event.f, event.type))
    if style is None:
        return None
    if style == "commit" and event.value.get("step_complete"):
        style = "commit-complete"
    value = json.dumps(event.value, sort_keys=True)
    return Mark(event.time, style, title=f"{event.f} {event.type} at {event.time:.2f} s: {value}")


def density(times: Iterable[float], bucket_s: float, end_s: float) -> Density:
    counts = [0] * (int(end_s / bucket_s) + 1)
    for at in times:
        counts[min(max(int(at / bucket_s), 0), len(counts) - 1)] += 1
    return Density(bucket_s, tuple(counts))


def checkpoint_lane(events: Iterable[Event]) -> Lane:
    """A mark per change of the job's latest complete step, as the harness polled it."""
    marks: list[Mark] = []
    last: int | None = None
    for event in events:
        if not (event.process == HARNESS and event.f == "status" and event.type == "ok"):
            continue
        step = event.value.get("latest_step")
        if step == last:
            continue
        if step is None:
            marks.append(Mark(event.time, "checkpoint-lost", "none", f"latest step {last} -> none"))
        else:
            marks.append(
                Mark(
                    event.time,
                    "checkpoint",
                    f"step {step}",
                    f"latest complete step {step} at {event.time:.2f} s",
                )
            )
        last = step
    return Lane("checkpoints", marks=tuple(marks), title="the job's latest complete step")


def membership_lane(events: Iterable[Event]) -> Lane:
    """A mark per membership generation change the harness saw."""
    marks: list[Mark] = []
    last: object = None
    for event in events:
        if not (event.process == HARNESS and event.f == "membership" and event.type == "ok"):
            continue
        generation = event.value.get("generation")
        if generation is None or generation == last:
            continue
        members = [str(m) for m in event.value.get("members", ())]
        label = f"gen {generation} ({len(members)} member{'' if len(members) == 1 else 's'})"
        marks.append(Mark(event.time, "generation", label, f"{label}: {', '.join(members)}"))
        last = generation
    return Lane("membership", marks=tuple(marks), title="membership generations")


def _at(mark: Mark) -> float:
    return mark.at_s
