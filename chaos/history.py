"""The chaos history: every client operation and every fault, one JSON object per line.

Modelled on Jepsen: a client records ``invoke`` before an operation and one
of ``ok`` (it happened), ``fail`` (it certainly did not) or ``info`` (unknown
outcome: a timeout, a crash) after it, with the same ``op_id``. The nemesis
records its faults the same way (``f`` = "kill", "pause", "partition", …;
``invoke`` when it starts, ``ok`` when the fault is in place, ``info`` when
it healed). Checkers (``dtr.chaos.checkers``) are pure functions of a
history, so a failing run can be re-checked, and a checker tested, from the
file alone.

Times are seconds on the harness's monotonic clock since the run started
(``History.clock``); processes on the same machine share ``CLOCK_MONOTONIC``,
so a worker process can stamp its own events with ``time.monotonic() -
start``, given the harness's start instant.

Event fields (``Event``):

- ``time``: float, seconds since the start of the run;
- ``process``: who acted: ``worker:<id>``, ``replica:<id>``, ``nemesis``,
  ``harness``;
- ``type``: ``invoke`` | ``ok`` | ``fail`` | ``info``;
- ``f``: the operation, e.g. ``register``, ``get_shards``, ``barrier``,
  ``save``, ``commit``, ``load``, ``train``, ``status``, ``kill``;
- ``value``: a JSON object with the operation's arguments or results (see
  the checkers for what each ``f`` carries);
- ``op_id``: pairs an invoke with its completion; ``term`` and
  ``generation``: the leader term and membership generation the answer
  carried, where known.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dtr.errors import InvalidArgument

EventType = Literal["invoke", "ok", "fail", "info"]
EVENT_TYPES: frozenset[str] = frozenset({"invoke", "ok", "fail", "info"})


@dataclass(frozen=True)
class Event:
    """One line of the history."""

    time: float
    process: str
    type: EventType
    f: str
    value: dict[str, Any] = field(default_factory=dict)
    op_id: str | None = None
    term: int | None = None
    generation: int | None = None

    def to_json(self) -> str:
        # Not dataclasses.asdict: it deep-copies ``value`` on every event, which
        # was a third of a process of hundreds of simulated workers' CPU time.
        fields = {
            "time": self.time,
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "value": self.value,
            "op_id": self.op_id,
            "term": self.term,
            "generation": self.generation,
        }
        return json.dumps({k: v for k, v in fields.items() if v is not None}, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Event:
        raw = json.loads(line)
        if not isinstance(raw, dict) or raw.get("type") not in EVENT_TYPES:
            raise InvalidArgument(f"not a history event: {line[:200]!r}")
        return cls(
            time=float(raw["time"]),
            process=str(raw["process"]),
            type=raw["type"],
            f=str(raw["f"]),
            value=dict(raw.get("value") or {}),
            op_id=raw.get("op_id"),
            term=raw.get("term"),
            generation=raw.get("generation"),
        )


class History:
    """An append-only JSONL history file, safe to record into from many threads."""

    def __init__(self, path: Path, *, start: float | None = None) -> None:
        self.path = path
        #: The run's zero on the monotonic clock; child processes are told it.
        self.start = time.monotonic() if start is None else start
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")
        self._next_op = 0

    def clock(self) -> float:
        """Seconds since the run started (the ``time`` of events recorded now)."""
        return time.monotonic() - self.start

    def record(self, event: Event) -> Event:
        with self._lock:
            self._file.write(event.to_json() + "\n")
            self._file.flush()
        return event

    def op_id(self, process: str) -> str:
        with self._lock:
            self._next_op += 1
            return f"{process}#{self._next_op}"

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_history(paths: Iterable[Path]) -> list[Event]:
    """Every event of the given files, ordered by time (a stable merge of per-process files)."""
    events: list[Event] = []
    for path in paths:
        events.extend(_read(path))
    return sorted(events, key=lambda e: e.time)


def _read(path: Path) -> Iterator[Event]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield Event.from_json(line)
            except (ValueError, KeyError, TypeError) as err:
                if number > 1 and not line.endswith("\n"):
                    return  # a torn last line: the process died mid-write
                raise InvalidArgument(f"{path}:{number}: {err}") from err
