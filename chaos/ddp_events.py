"""The DDP job's own record: the training script's events per rank, read back and grouped.

The script (``examples/ddp/train.py``, module ``dtr.examples.train``)
appends one JSON object per line to ``DIR/rank-<RANK>.jsonl`` when given
``--events DIR``: ``start``, ``joined``, ``resumed``, ``step``, ``saved`` and
``done``, each with the wall-clock time ``t`` and the process's ``rank``,
``world``, ``pid``, ``restart`` (torchrun's restart count) and ``round``
(dtr's rendezvous round, when the handler set one). This module turns those
lines into what the harness reasons about:

- ``RankProcess``: one rank's process, from ``start`` to its last line;
- ``Formation``: one world torchrun formed, the processes that started as
  its ranks (grouped by ``round``, or, without one, a new formation begins
  when a rank already seen starts again);
- ``to_history``: the same facts as chaos history events on the harness's
  clock (``load`` invoke at ``joined``, ok at ``resumed``; ``train`` per
  step), under ``worker:<id>`` with the id a ``Worker`` takes by default in
  a rank (``<host>-rank<RANK>``), so the history checkers (loads, liveness)
  judge the DDP job as they judge the independent workers.

Pure functions of the lines, apart from ``read_rank_events``: the live view
calls it while the files grow (a line being written is skipped).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .history import Event

#: The fields every record carries; the rest are the event's own.
COMMON = ("event", "t", "rank", "world", "pid", "restart", "round")
EVENTS_GLOB = "rank-*.jsonl"


@dataclass(frozen=True)
class RankEvent:
    """One line of a rank's file; ``t`` is wall-clock seconds (``time.time()``)."""

    event: str
    t: float
    rank: int
    world: int
    pid: int
    restart: int
    round: str | None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int | None:
        value = self.fields.get("step")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def parse_line(line: str | bytes) -> RankEvent | None:
    """The event of one line, None for one that is not a complete record."""
    try:
        raw = json.loads(line)
        event = RankEvent(
            event=str(raw["event"]),
            t=float(raw["t"]),
            rank=int(raw["rank"]),
            world=int(raw["world"]),
            pid=int(raw["pid"]),
            restart=int(raw.get("restart") or 0),
            round=None if raw.get("round") is None else str(raw["round"]),
            fields={k: v for k, v in raw.items() if k not in COMMON},
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return event


def read_rank_events(folder: Path) -> list[RankEvent]:
    """Every complete record of ``folder/rank-*.jsonl``, by time (none: no folder yet)."""
    events: list[RankEvent] = []
    for path in sorted(folder.glob(EVENTS_GLOB)) if folder.is_dir() else []:
        data = path.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].splitlines():
            event = parse_line(line)
            if event is not None:
                events.append(event)
    return sorted(events, key=lambda e: e.t)


@dataclass
class RankProcess:
    """One rank's process: when it started, joined, resumed from where, stepped, finished."""

    pid: int
    rank: int
    world: int
    restart: int
    round: str | None
    started: float
    joined: float | None = None
    resumed: int | None = None
    #: (time, step, loss) of every step it trained.
    steps: list[tuple[float, int, float]] = field(default_factory=list)
    done_step: int | None = None
    param_sha256: str | None = None
    last_t: float = 0.0

    @property
    def first_step_t(self) -> float | None:
        return self.steps[0][0] if self.steps else None

    @property
    def last_step(self) -> int | None:
        return self.steps[-1][1] if self.steps else None


@dataclass
class Formation:
    """One world torchrun formed: its ranks' processes (the first of each rank)."""

    world: int
    round: str | None
    processes: dict[int, RankProcess] = field(default_factory=dict)

    @property
    def started(self) -> float:
        return min(p.started for p in self.processes.values())

    @property
    def resumed(self) -> int | None:
        """The step its ranks resumed from (the lowest reported; None: none reported yet)."""
        steps = [p.resumed for p in self.processes.values() if p.resumed is not None]
        return min(steps) if steps else None

    @property
    def complete(self) -> bool:
        """Every rank of the world started."""
        return set(self.processes) == set(range(self.world))

    @property
    def stepping_at(self) -> float | None:
        """When the last of its ranks trained its first step (None: not every rank has)."""
        if not self.complete:
            return None
        firsts = [p.first_step_t for p in self.processes.values()]
        return None if any(t is None for t in firsts) else max(t for t in firsts if t is not None)


def processes(events: Iterable[RankEvent]) -> list[RankProcess]:
    """Every rank process, in start order (a process seen without its ``start`` counts too)."""
    found: dict[tuple[int, int], RankProcess] = {}
    for e in sorted(events, key=lambda e: e.t):
        key = (e.pid, e.rank)
        process = found.get(key)
        if process is None:
            process = RankProcess(e.pid, e.rank, e.world, e.restart, e.round, e.t)
            found[key] = process
        process.last_t = e.t
        if e.event == "joined":
            process.joined = e.t
        elif e.event == "resumed":
            process.resumed = e.step if e.step is not None else 0
        elif e.event == "step" and e.step is not None:
            process.steps.append((e.t, e.step, _loss(e.fields.get("loss"))))
        elif e.event == "done":
            process.done_step = e.step
            sha = e.fields.get("param_sha256")
            process.param_sha256 = sha if isinstance(sha, str) else None
    return sorted(found.values(), key=lambda p: p.started)


def formations(procs: Sequence[RankProcess]) -> list[Formation]:
    """The worlds torchrun formed, in order: by ``round`` where the script reported it.

    Without a round, a formation is a run of processes that started one
    after another with the same world size and each rank at most once.
    """
    formed: list[Formation] = []
    by_round: dict[str, Formation] = {}
    for p in sorted(procs, key=lambda p: p.started):
        if p.round is not None:
            current = by_round.get(p.round)
            if current is None:
                current = by_round[p.round] = Formation(p.world, p.round)
                formed.append(current)
        else:
            current = formed[-1] if formed and formed[-1].round is None else None
            if current is None or p.rank in current.processes or p.world != current.world:
                current = Formation(p.world, None)
                formed.append(current)
        current.processes.setdefault(p.rank, p)
    return formed


def rank0_losses(procs: Sequence[RankProcess]) -> list[tuple[float, int, float]]:
    """(time, step, loss) of every step rank 0 trained, in time order, across its restarts."""
    return sorted(s for p in procs if p.rank == 0 for s in p.steps)


def recovered_after(formed: Sequence[Formation], at: float) -> Formation | None:
    """The first world formed after ``at`` in which every rank trained a step (None: none)."""
    for formation in formed:
        if formation.started > at and formation.stepping_at is not None:
            return formation
    return None


def last_step_before(procs: Sequence[RankProcess], at: float) -> int | None:
    """The highest step any rank had trained by ``at``."""
    steps = [step for p in procs for t, step, _ in p.steps if t <= at]
    return max(steps) if steps else None


def longest_gap(procs: Sequence[RankProcess], start: float, end: float) -> float | None:
    """The longest wait between two of rank 0's steps that overlaps ``[start, end]``.

    A step time before ``start`` counts as the gap's beginning: a step that
    was already late when the fault struck is what the fault cost.
    """
    times = [t for t, _, _ in rank0_losses(procs)]
    gaps = [b - a for a, b in itertools.pairwise(times) if b >= start and a <= end]
    return max(gaps) if gaps else None


# --- the same facts as chaos history events -------------------------------------------

_NOT_HOSTNAME = re.compile(r"[^A-Za-z0-9._-]")


def rank_worker_id(rank: int, hostname: str | None = None) -> str:
    """The id ``Worker()`` takes in rank ``rank`` on this host (``worker.default_worker_id``)."""
    host = hostname if hostname is not None else socket.gethostname()
    return f"{_NOT_HOSTNAME.sub('-', host).lstrip('._-')[:64] or 'worker'}-rank{rank}"


def to_history(events: Sequence[RankEvent], wall_zero: float) -> list[Event]:
    """The rank events as chaos history events, at ``t - wall_zero`` on the harness's clock.

    ``joined`` / ``resumed`` are a ``load``'s invoke and ok (step 0, a fresh
    start, is ``None``: nothing loaded); every ``step`` is a ``train`` ok.
    """
    converted: list[Event] = []
    for e in events:
        process = f"worker:{rank_worker_id(e.rank)}"
        op_id = f"{process}#load-{e.pid}"
        at = e.t - wall_zero
        if e.event == "joined":
            converted.append(Event(at, process, "invoke", "load", {}, op_id))
        elif e.event == "resumed":
            step = e.step or None
            converted.append(Event(at, process, "ok", "load", {"step": step}, op_id))
        elif e.event == "step" and e.step is not None:
            value: dict[str, Any] = {"step": e.step}
            loss = _loss(e.fields.get("loss"))
            if not math.isnan(loss):  # a loss was reported
                value["loss"] = loss
            converted.append(Event(at, process, "ok", "train", value))
    return converted


def _loss(value: object) -> float:
    """A reported loss as a float; NaN when the record holds none."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float("nan")
