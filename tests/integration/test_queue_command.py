"""``dtr queue list|clear`` run as a real subprocess on a real queue file (issue 15 item 5).

The queue is written by ``CommitQueue`` exactly as a worker leaves it: one
record set aside (made for another life of the job), one pending, one done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtr.worker.commit_queue import CommitOutcome, CommitQueue, CommitRecord, queue_file

pytestmark = pytest.mark.integration
OLD_LIFE, NEW_LIFE = "cluster-1/uid-a", "cluster-2/uid-b"


def record(step: int, life: str) -> CommitRecord:
    return CommitRecord(
        job="train",
        step=step,
        worker_id="w0",
        generation=1,
        uri=f"file:///ckpt/step-{step}/w0.{life[-1]}.dtr",
        size_bytes=10,
        checksum_algorithm="crc32c",
        checksum_hex="0badf00d",
        format_version=1,
        job_life=life,
        incarnation=1,
    )


def dtr(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dtr ARGS`` with the state directory and job in the environment, as a user sets them."""
    env = {**os.environ, "DTR_STATE_DIR": str(state_dir), "DTR_JOB": "train"}
    env.pop("DTR_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "dtr", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = queue_file("train", "w0", tmp_path)
    path.parent.mkdir(parents=True)
    with CommitQueue(path) as queue:
        queue.append(record(1, OLD_LIFE))
        done = queue.append(record(1, NEW_LIFE))
        queue.append(record(2, NEW_LIFE))
        queue.mark_done(done, CommitOutcome.ACCEPTED)
        assert queue.set_aside_other_lives(NEW_LIFE) == 1
    return tmp_path


def test_list_shows_counts_and_rows_as_json_and_as_a_table(state_dir: Path) -> None:
    listed = dtr(state_dir, "queue", "list", "--worker-id", "w0", "--json")
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    assert shown["counts"] == {"pending": 1, "set_aside": 1, "done": 1}
    assert [(r["step"], r["state"], r["job_life"]) for r in shown["records"]] == [
        (1, "set_aside", OLD_LIFE),
        (1, "done", NEW_LIFE),
        (2, "pending", NEW_LIFE),
    ]
    table = dtr(state_dir, "queue", "list", "--worker-id", "w0")
    assert table.returncode == 0, table.stderr
    assert "1 pending, 1 set aside, 1 done" in table.stdout.splitlines()[0]
    assert OLD_LIFE in table.stdout


def test_clear_removes_set_aside_rows_and_pending_ones_only_with_their_own_flag(
    state_dir: Path,
) -> None:
    nothing = dtr(state_dir, "queue", "clear", "--worker-id", "w0")
    assert nothing.returncode == 1
    assert nothing.stderr.count("\n") == 1 and "--set-aside, --pending" in nothing.stderr
    cleared = dtr(state_dir, "queue", "clear", "--worker-id", "w0", "--set-aside")
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.startswith("cleared 1 set-aside rows")
    with CommitQueue(queue_file("train", "w0", state_dir)) as queue:
        assert queue.counts() == {"pending": 1, "set_aside": 0, "done": 1}
    assert dtr(state_dir, "queue", "clear", "--worker-id", "w0", "--pending").returncode == 0
    with CommitQueue(queue_file("train", "w0", state_dir)) as queue:
        assert queue.counts() == {"pending": 0, "set_aside": 0, "done": 1}


def test_a_missing_queue_is_one_line_on_stderr_and_is_not_created(tmp_path: Path) -> None:
    missing = dtr(tmp_path, "queue", "list", "--worker-id", "nobody")
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "no commit queue at" in missing.stderr
    assert not queue_file("train", "nobody", tmp_path).exists()
