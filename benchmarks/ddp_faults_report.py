"""The pure part of ``ddp_faults.py``: the training script's event lines -> what a fault cost.

Separate from the harness so that a unit test can feed it event lines
(``tests/unit/test_ddp_faults_report.py``) without torchrun or a cluster.
Event records are those of ``examples/ddp/train.py --events DIR``: one JSON
object a line, each with ``event``, ``t`` (wall clock), ``rank``, ``pid``
and ``restart``; ``step`` events carry ``step``, ``resumed`` its ``step``.

A process is known by its pid, not its rank: after a restart torch may hand
the ranks out the other way round, and a rank's file then holds lines of
processes on both agents. The processes started after a fault are the
"incarnations"; those that went on to train are the final ones (an
incarnation that failed before its first step, say a gloo connect refused,
is an extra restart and its time counts in ``restart``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The phases of a rank failure, in order; they add up to ``back_s`` (kill -> reached again).
PHASES = ("restart_s", "rendezvous_s", "load_s", "replay_s")


class IncompleteTrial(ValueError):
    """The events do not show the whole recovery (the job never trained again, say)."""


@dataclass(frozen=True)
class Event:
    """One event line."""

    event: str
    t: float
    rank: int
    pid: int
    restart: int
    step: int | None
    param_sha256: str | None = None

    @classmethod
    def parse(cls, line: str) -> Event:
        record: dict[str, Any] = json.loads(line)
        step = record.get("step")
        return cls(
            event=str(record["event"]),
            t=float(record["t"]),
            rank=int(record["rank"]),
            pid=int(record["pid"]),
            restart=int(record.get("restart") or 0),
            step=int(step) if step is not None else None,
            param_sha256=record.get("param_sha256"),
        )


def parse_lines(lines: Iterable[str]) -> list[Event]:
    """Every complete event line, sorted by time; a torn last line (a killed writer) is skipped."""
    events = []
    for line in lines:
        if not line.strip():
            continue
        try:
            events.append(Event.parse(line))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by SIGKILL: the harness reads while ranks write
    return sorted(events, key=lambda e: e.t)


def read_events(directory: Path) -> list[Event]:
    """The events of every ``rank-*.jsonl`` under ``directory``."""
    lines: list[str] = []
    for path in sorted(directory.glob("rank-*.jsonl")):
        lines += path.read_text(errors="replace").splitlines()
    return parse_lines(lines)


@dataclass(frozen=True)
class Breakdown:
    """What one rank failure cost, in seconds from the kill, and the steps it threw away.

    ``restart_s``: kill -> the last final incarnation's ``start`` (failure
    detection, the agents' re-rendezvous, spawning; failed incarnations too).
    ``rendezvous_s``: -> every final rank ``joined`` (imports, process group,
    dtr Worker registration). ``load_s``: -> every final rank ``resumed``.
    ``replay_s``: -> every final rank has redone the step the group had
    reached before the kill. ``back_s`` is their sum. ``total_s``: kill ->
    every final rank has done one step past its resumed step (training again).
    From the agents' logs, ``restart_s`` splits into ``detect_s`` (kill -> the
    later agent starts its rendezvous), ``agents_rendezvous_s`` (-> the last
    "Rendezvous complete" before the start: the rendezvous backend's part)
    and ``spawn_s`` (-> the start); None without those log lines.
    """

    restart_s: float
    rendezvous_s: float
    load_s: float
    replay_s: float
    back_s: float
    total_s: float
    reached_step: int
    resumed_step: int
    incarnations: int
    max_restart_count: int
    detect_s: float | None = None
    agents_rendezvous_s: float | None = None
    spawn_s: float | None = None

    def as_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _by_pid(events: Iterable[Event]) -> dict[int, list[Event]]:
    grouped: dict[int, list[Event]] = {}
    for e in events:
        grouped.setdefault(e.pid, []).append(e)
    return grouped


def _first(events: Sequence[Event], name: str, pid: int) -> Event:
    for e in events:
        if e.event == name:
            return e
    raise IncompleteTrial(f"process {pid} has no {name!r} event")


def rank_failure(
    events: Sequence[Event],
    kill_t: float,
    world: int,
    agent_marks: Sequence[Sequence[Mark]] = (),
) -> Breakdown:
    """The breakdown of one rank failure at ``kill_t``, for a group of ``world`` ranks.

    ``agent_marks``: per agent, ``parse_agent_log``'s marks (optional).
    Raises ``IncompleteTrial`` when the events do not show ``world`` new
    processes training again after the kill.
    """
    processes = _by_pid(events)
    before = [
        e
        for pid_events in processes.values()
        if pid_events[0].event == "start" and pid_events[0].t <= kill_t
        for e in pid_events
    ]
    steps_before = [e.step for e in before if e.event == "step" and e.step is not None]
    if not steps_before:
        raise IncompleteTrial("no step before the kill")
    reached = max(steps_before)  # a survivor may log the last step just after the kill
    after = {
        pid: evs for pid, evs in processes.items() if evs[0].event == "start" and evs[0].t > kill_t
    }
    trained = {pid: evs for pid, evs in after.items() if any(e.event == "step" for e in evs)}
    final: dict[int, list[Event]] = {}
    for pid, evs in sorted(trained.items(), key=lambda item: item[1][0].t):
        rank = _first(evs, "step", pid).rank
        final[rank] = evs  # the latest incarnation of a rank that trained wins
    if len(final) != world:
        raise IncompleteTrial(
            f"{len(final)} of {world} ranks trained again after the kill "
            f"({len(after)} processes started after it)"
        )
    starts, joins, resumes, replays, trainings = [], [], [], [], []
    resumed_steps = []
    for pid_events in final.values():
        pid = pid_events[0].pid
        starts.append(pid_events[0].t)
        joins.append(_first(pid_events, "joined", pid).t)
        resumed = _first(pid_events, "resumed", pid)
        resumes.append(resumed.t)
        resumed_step = resumed.step or 0
        resumed_steps.append(resumed_step)
        steps = [e for e in pid_events if e.event == "step" and e.step is not None]
        past = [e.t for e in steps if e.step is not None and e.step > resumed_step]
        if not past:
            raise IncompleteTrial(f"process {pid} did no step past its resumed step")
        trainings.append(past[0])
        if resumed_step >= reached:
            replays.append(resumed.t)
        else:
            redone = [e.t for e in steps if e.step is not None and e.step >= reached]
            if not redone:
                raise IncompleteTrial(f"process {pid} never got back to step {reached}")
            replays.append(redone[0])
    start, joined, resumed_t = max(starts), max(joins), max(resumes)
    replayed, training = max(replays), max(trainings)
    return Breakdown(
        restart_s=round(start - kill_t, 3),
        rendezvous_s=round(joined - start, 3),
        load_s=round(resumed_t - joined, 3),
        replay_s=round(replayed - resumed_t, 3),
        back_s=round(replayed - kill_t, 3),
        total_s=round(training - kill_t, 3),
        reached_step=reached,
        resumed_step=max(resumed_steps),
        incarnations=len(after),
        max_restart_count=max(e.restart for evs in final.values() for e in evs),
        **_split_restart(agent_marks, kill_t, start),
    )


#: What an agent's log says, as (wall clock, RENDEZVOUSING or COMPLETE).
Mark = tuple[float, str]
RENDEZVOUSING, COMPLETE = "rendezvousing", "complete"
_MARKERS = {"Rendezvous'ing worker group": RENDEZVOUSING, "Rendezvous complete for": COMPLETE}


def parse_agent_log(lines: Iterable[str], year: int) -> list[Mark]:
    """The rendezvous marks in a torchrun agent's log (``LOGLEVEL=INFO``).

    torch's lines start ``I1205 12:48:19.146000 PID file:line] ...`` in local
    time without the year, which the caller gives (the run's).
    """
    marks = []
    for line in lines:
        kind = next((k for text, k in _MARKERS.items() if text in line), None)
        if kind is None or len(line) < 22 or line[0] not in "IWE":
            continue
        try:
            when = dt.datetime.strptime(f"{year}{line[1:21]}", "%Y%m%d %H:%M:%S.%f")
        except ValueError:
            continue
        marks.append((when.timestamp(), kind))  # naive: local time, as torch wrote it
    return marks


def _split_restart(
    agents: Sequence[Sequence[Mark]], kill_t: float, start: float
) -> dict[str, float | None]:
    """``restart_s`` split at the later agent's rendezvous start and the last round's end."""
    began = [
        min((t for t, k in marks if k == RENDEZVOUSING and t > kill_t), default=None)
        for marks in agents
    ]
    if not agents or any(t is None for t in began):
        return {}
    detected = max(t for t in began if t is not None)
    ended = [t for marks in agents for t, k in marks if k == COMPLETE and detected <= t <= start]
    if not ended:
        return {}
    complete = max(ended)
    return {
        "detect_s": round(detected - kill_t, 3),
        "agents_rendezvous_s": round(complete - detected, 3),
        "spawn_s": round(start - complete, 3),
    }


@dataclass(frozen=True)
class LeaderKill:
    """Training across a coordinator leader's crash at ``kill_t``.

    ``restarts``: processes started after the kill (0: the group never
    restarted). ``longest_gap_s``: the longest wait between consecutive
    steps of one process, over the pairs that end after the kill and begin
    before ``kill_t + window_s``. ``gap_before_s``: the same over the pairs
    that end before the kill (what a gap is without a fault).
    """

    restarts: int
    longest_gap_s: float
    gap_before_s: float
    median_step_s: float
    steps_after_kill: int

    def as_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def leader_kill(events: Sequence[Event], kill_t: float, window_s: float) -> LeaderKill:
    """Restarts and step gaps around a leader kill; ``IncompleteTrial`` if nothing trained after."""
    processes = _by_pid(events)
    restarts = sum(1 for evs in processes.values() if evs[0].event == "start" and evs[0].t > kill_t)
    around, before = [], []
    steps_after = 0
    for evs in processes.values():
        times = [e.t for e in evs if e.event == "step"]
        steps_after += sum(1 for t in times if t > kill_t)
        for a, b in itertools.pairwise(times):
            if b <= kill_t:
                before.append(b - a)
            elif a < kill_t + window_s:
                around.append(b - a)
    if not around:
        raise IncompleteTrial("no step after the leader kill")
    return LeaderKill(
        restarts=restarts,
        longest_gap_s=round(max(around), 3),
        gap_before_s=round(max(before), 3) if before else 0.0,
        median_step_s=round(statistics.median(before or around), 4),
        steps_after_kill=steps_after,
    )


def finished(events: Sequence[Event], world: int) -> tuple[int, bool]:
    """How many ranks logged ``done`` (their last incarnation), and whether their hashes agree."""
    last: dict[int, Event] = {}
    for e in events:
        if e.event == "done":
            last[e.rank] = e
    hashes = {e.param_sha256 for e in last.values()}
    return len(last), len(last) == world and len(hashes) == 1 and None not in hashes
