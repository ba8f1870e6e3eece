"""dtr.chaos.nemesis_workers: when ``worker-pause`` sees a worker holding a barrier arrival.

The pause must catch a worker inside a barrier call, judged from the tail of
the history it writes; a history cut mid-line (being written) must not fool it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtr.chaos.history import Event, EventType, History
from dtr.chaos.nemesis_workers import holds_arrival


def write(path: Path, *events: tuple[EventType, str]) -> None:
    with History(path, start=0.0) as history:
        for kind, f in events:
            history.record(Event(1.0, "worker:w0", kind, f, {"name": "step-20"}))


@pytest.mark.parametrize(
    ("events", "holding"),
    [
        ([("invoke", "barrier")], True),
        ([("invoke", "barrier"), ("ok", "train")], True),  # the train of another thread
        ([("invoke", "barrier"), ("ok", "barrier")], False),
        ([("invoke", "barrier"), ("fail", "barrier"), ("ok", "train")], False),
        ([("ok", "train")], False),
    ],
)
def test_only_a_barrier_invoke_without_outcome_holds_an_arrival(
    tmp_path: Path, events: list[tuple[EventType, str]], holding: bool
) -> None:
    path = tmp_path / "w0.jsonl"
    write(path, *events)
    assert holds_arrival(path) is holding


def test_a_torn_last_line_and_a_missing_history_hold_nothing_wrongly(tmp_path: Path) -> None:
    path = tmp_path / "w0.jsonl"
    assert holds_arrival(path) is False
    write(path, ("invoke", "barrier"))
    with path.open("a") as file:
        file.write('{"f": "barrier", "type": "o')  # an outcome being written
    assert holds_arrival(path) is True
