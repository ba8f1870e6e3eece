"""The chaos history file: events round-trip, processes merge by time, torn lines are tolerated."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dtr.chaos.history import Event, History, read_history
from dtr.errors import InvalidArgument


def test_events_round_trip_through_the_jsonl_file(tmp_path: Path) -> None:
    with History(tmp_path / "h.jsonl") as history:
        op = history.op_id("worker:w0")
        sent = [
            history.record(Event(0.5, "worker:w0", "invoke", "barrier", {"name": "b"}, op)),
            history.record(
                Event(0.75, "worker:w0", "ok", "barrier", {"name": "b"}, op, term=7, generation=3)
            ),
        ]
    assert read_history([tmp_path / "h.jsonl"]) == sent


def test_files_of_several_processes_merge_in_time_order(tmp_path: Path) -> None:
    with History(tmp_path / "a.jsonl") as a, History(tmp_path / "b.jsonl") as b:
        a.record(Event(2.0, "worker:a", "ok", "train", {"step": 2}))
        b.record(Event(1.0, "worker:b", "ok", "train", {"step": 1}))
        a.record(Event(3.0, "worker:a", "ok", "train", {"step": 3}))
    merged = read_history([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert [e.time for e in merged] == [1.0, 2.0, 3.0]


def test_concurrent_recorders_never_interleave_lines(tmp_path: Path) -> None:
    with History(tmp_path / "h.jsonl") as history:

        def record(process: str) -> None:
            for step in range(200):
                history.record(Event(history.clock(), process, "ok", "train", {"step": step}))

        threads = [threading.Thread(target=record, args=(f"worker:{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(read_history([tmp_path / "h.jsonl"])) == 800


def test_a_torn_last_line_of_a_killed_process_is_dropped_and_other_garbage_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(Event(1.0, "worker:w0", "ok", "train", {"step": 1}).to_json() + '\n{"time": 2')
    assert len(read_history([path])) == 1
    path.write_text('{"type": "nonsense"}\n')
    with pytest.raises(InvalidArgument, match="not a history event"):
        read_history([path])
