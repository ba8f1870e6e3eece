"""dtr.chaos.workers without processes: what a (re)started worker is given, torn histories.

A worker the nemesis kills must come back as the same worker: the same id,
commit queue, checkpoints and history file. Starting processes is the
integration tests' job; here only the command line and the files are read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtr.chaos.history import read_history
from dtr.chaos.workers import WorkerPool, WorkloadConfig, drop_torn_line
from dtr.errors import InvalidArgument

CONFIG = WorkloadConfig(
    coordinators="127.0.0.1:1,127.0.0.1:2",
    job="job-1",
    checkpoint_uri="file:///tmp/ckpt",
    start=12.5,
    steps=100,
    step_time_s=0.01,
)


def test_a_worker_is_always_started_with_its_own_id_queue_and_history(tmp_path: Path) -> None:
    pool = WorkerPool(["w0", "w1"], CONFIG, tmp_path)
    argv = pool.argv("w1")
    assert argv == pool.argv("w1")  # a restart gets exactly the same command line
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags["--worker-id"] == "w1"
    assert flags["--queue"] == str(tmp_path / "queues" / "w1.sqlite")
    assert flags["--history"] == str(tmp_path / "history" / "w1.jsonl")
    assert flags["--start"] == "12.5" and flags["--steps"] == "100"
    assert flags["--step-time-s"] == "0.01"
    assert not pool.is_running("w1") and pool.pid("w1") is None


@pytest.mark.parametrize("ids", [[], ["w0", "w0"], ["bad id"]])
def test_worker_ids_must_be_distinct_valid_names(ids: list[str], tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        WorkerPool(ids, CONFIG, tmp_path)


def test_a_line_torn_by_a_kill_is_cut_before_the_restart_appends(tmp_path: Path) -> None:
    path = tmp_path / "w0.jsonl"
    whole = '{"f": "train", "process": "worker:w0", "time": 1.0, "type": "ok"}\n'
    path.write_text(whole + '{"f": "tra')
    drop_torn_line(path)
    assert path.read_text() == whole
    drop_torn_line(path)  # an intact file is left alone
    assert path.read_text() == whole
    with path.open("a") as appended:
        appended.write(whole)
    assert len(read_history([path])) == 2
    drop_torn_line(tmp_path / "missing.jsonl")
