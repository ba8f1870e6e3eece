"""CheckpointManager end to end: real coordinators, real files, real processes killed.

Workers save real torch state to ``file://`` storage and commit through real
coordinator replicas. Crashes are real: a worker process (checkpoint_child.py)
is killed with SIGKILL mid-write or mid-partition and started again on the
same commit queue; a full disk is a file-size limit on that process.
"""

from __future__ import annotations

import logging
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dtr.chaos.cluster import LocalCluster
from dtr.errors import CheckpointError, InvalidArgument, NoCheckpoint
from dtr.etcd import RunningEtcd
from dtr.worker import CheckpointManager, Worker
from dtr.worker.commit_queue import CommitOutcome, CommitQueue
from dtr.worker.replicated import step_prefix
from helpers import ProxiedCluster, proxied_cluster, wait_until

pytestmark = pytest.mark.integration

CHILD = Path(__file__).with_name("checkpoint_child.py")
#: A part's name: unique per save (incarnation and a random nonce), never written twice.
PART = r"step-{step:020d}/{worker}\.\d{{10}}-[0-9a-f]{{16}}\.dtr"


def parts_of(root: Path, step: int, worker: str) -> list[Path]:
    """The part objects ``worker`` wrote for ``step`` under the checkpoint directory."""
    pattern = PART.format(step=step, worker=re.escape(worker))
    return [p for p in root.glob("step-*/*") if re.fullmatch(pattern, str(p.relative_to(root)))]


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=1, etcd=etcd, job=f"k-{uuid.uuid4().hex[:10]}") as started:
        yield started


class Child:
    """checkpoint_child.py as a process: commands in, answer lines out (read on a thread)."""

    def __init__(self, *args: str, log: Path) -> None:
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def expect(self, prefix: str, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
            pytest.fail(f"expected {prefix!r} from the child, got {line!r}")
        pytest.fail(f"no {prefix!r} from the child within {timeout_s} s (log: {self.log.name})")

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.send("exit")
            self.process.wait(30)
        self.log.close()


def child(cluster_coordinators: str, job: str, root: Path, *extra: str) -> Child:
    args = (cluster_coordinators, job, "w0", f"file://{root}/ckpt", str(root / "queue.sqlite"))
    return Child(*args, *extra, log=root / "child.log")


def model_state(seed: int) -> dict[str, object]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "opt": optimizer.state_dict(), "epoch": seed}


def assert_same(loaded: object, expected: object) -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(loaded, torch.Tensor) and torch.equal(loaded, expected)
    elif isinstance(expected, dict):
        assert isinstance(loaded, dict) and loaded.keys() == expected.keys()
        for key, value in expected.items():
            assert_same(loaded[key], value)
    elif isinstance(expected, list | tuple):
        assert type(loaded) is type(expected) and len(loaded) == len(expected)
        for got, value in zip(loaded, expected, strict=True):
            assert_same(got, value)
    else:
        assert loaded == expected


def test_saves_load_back_and_a_corrupt_part_falls_back_to_the_previous_step(
    cluster: LocalCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"file://{tmp_path}/ckpt"
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        CheckpointManager(worker, uri, queue_path=tmp_path / "q.sqlite") as manager,
    ):
        with pytest.raises(NoCheckpoint):
            manager.load_latest()
        assert manager.load_latest(default=(None, 0)) == (None, 0)
        for step in (10, 20):
            result = manager.save_async(model_state(step), step).result(timeout=30)
            assert result.size_bytes > 0
            assert re.search(PART.format(step=step, worker="w0") + "$", result.uri)
        manager.wait(timeout_s=30)
        state, step = manager.load_latest()
        assert step == 20
        assert_same(state, model_state(20))

        (part,) = parts_of(tmp_path / "ckpt", 20, "w0")
        data = bytearray(part.read_bytes())
        data[-1] ^= 0xFF
        part.write_bytes(bytes(data))
        with caplog.at_level(logging.WARNING, logger="dtr.worker.checkpoint"):
            state, step = manager.load_latest()
        assert step == 10
        assert_same(state, model_state(10))
        assert "checkpoint step 20 does not load" in caplog.text


def test_a_worker_that_joined_later_loads_another_members_part(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    uri = f"file://{tmp_path}/ckpt"
    with Worker(cluster.coordinators, worker_id="first", job=cluster.job) as first:
        with CheckpointManager(first, uri, queue_path=tmp_path / "first.sqlite") as manager:
            manager.save_async(model_state(1), 100).result(timeout=30)
            manager.wait(timeout_s=30)
        with (
            Worker(cluster.coordinators, worker_id="later", job=cluster.job) as later,
            CheckpointManager(later, uri, queue_path=tmp_path / "later.sqlite") as manager,
        ):
            state, step = manager.load_latest()
            assert step == 100
            assert_same(state, model_state(1))


def test_bad_input_gets_typed_errors_and_commits_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    with Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker:
        with pytest.raises(InvalidArgument, match="unsupported storage URI"):
            CheckpointManager(worker, "ftp://somewhere/ckpt", queue_path=tmp_path / "q.sqlite")
        with pytest.raises(InvalidArgument, match="max_in_flight"):
            CheckpointManager(worker, f"file://{tmp_path}", max_in_flight=0)
        blocked = tmp_path / "a-file"
        blocked.write_text("not a directory")
        with CheckpointManager(
            worker, f"file://{blocked}/ckpt", queue_path=tmp_path / "q.sqlite"
        ) as manager:
            with pytest.raises(InvalidArgument, match=r"state\['fn'\]: cannot checkpoint"):
                manager.save_async({"fn": lambda: None}, 1)
            with pytest.raises(InvalidArgument, match="step"):
                manager.save_async({}, -1)
            with pytest.raises(CheckpointError, match="Not a directory"):
                manager.save_async({"x": torch.ones(3)}, 1).result(timeout=30)
            assert manager.commits_queued == 0
            assert manager.last_committed_step is None


def test_a_worker_killed_mid_write_leaves_no_part_and_commits_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    worker = child(cluster.coordinators, cluster.job, tmp_path)
    try:
        worker.expect("ready")
        worker.send("save 1 1")
        worker.expect("saved 1")
        worker.send("wait")
        worker.expect("committed")
        worker.send("save 2 768")
        step_dir = tmp_path / "ckpt" / step_prefix(2)
        wait_until(
            lambda: step_dir.is_dir() and any(p.name.startswith(".") for p in step_dir.iterdir()),
            60,
            "the write of step 2 to start",
        )
        worker.kill()
    finally:
        worker.close()
    assert parts_of(tmp_path / "ckpt", 2, "w0") == []
    with CommitQueue(tmp_path / "queue.sqlite") as commits:
        assert [entry.record.step for entry in commits.history()] == [1]
    assert cluster.status().latest_checkpoint.step == 1


def test_a_full_disk_fails_the_save_and_nothing_is_committed_for_it(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    worker = child(cluster.coordinators, cluster.job, tmp_path, str(8 << 20))
    try:
        worker.expect("ready")
        worker.send("save 1 1")
        worker.expect("saved 1")
        worker.send("save 2 16")
        failure = worker.expect("failed 2")
        assert "CheckpointError" in failure and "too large" in failure.lower()
        worker.send("wait")  # a failed save is never silent: the next wait() raises it once
        assert "too large" in worker.expect("wait failed CheckpointError").lower()
        worker.send("wait")
        worker.expect("committed")
        worker.send("load")
        assert worker.expect("loaded") == "loaded 1 1.0"
    finally:
        worker.close()
    assert parts_of(tmp_path / "ckpt", 2, "w0") == []
    assert cluster.status().latest_checkpoint.step == 1


@pytest.fixture
def proxied(etcd: RunningEtcd) -> Iterator[ProxiedCluster]:
    with proxied_cluster(etcd, 1, heartbeat_timeout_s=60.0) as started:
        yield started


def test_commits_queued_in_a_partition_survive_a_restart_and_arrive_in_order_once_each(
    proxied: ProxiedCluster, tmp_path: Path
) -> None:
    cluster, (proxy,) = proxied.cluster, proxied.proxies
    first = child(cluster.coordinators, cluster.job, tmp_path)
    try:
        first.expect("ready")
        proxy.blackhole()
        for step in (1, 2):
            first.send(f"save {step} 1")
            first.expect(f"saved {step}")
        first.kill()  # the commits of steps 1 and 2 are only in the on-disk queue
    finally:
        first.close()
    with CommitQueue(tmp_path / "queue.sqlite") as commits:
        assert [(e.record.step, e.outcome) for e in commits.history()] == [(1, None), (2, None)]

    connections = proxy.connections_accepted
    second = child(cluster.coordinators, cluster.job, tmp_path)  # restarted while cut off
    try:
        wait_until(lambda: proxy.connections_accepted > connections, 60, "the restart to dial")
        proxy.heal()
        second.expect("ready")
        second.send("save 3 1")
        second.expect("saved 3")
        second.send("wait")
        second.expect("committed")
        second.send("load")
        assert second.expect("loaded") == "loaded 3 3.0"
    finally:
        second.close()
    with CommitQueue(tmp_path / "queue.sqlite") as commits:
        history = commits.history()
    # Every record got a verdict, in order. The restart is a new incarnation of a
    # live id, which is a membership change: the dead incarnation's records of
    # the old generation are SUPERSEDED (a coordinator without that rule accepts them).
    verdicts = {CommitOutcome.ACCEPTED, CommitOutcome.SUPERSEDED}
    assert [e.record.step for e in history] == [1, 2, 3]
    assert history[0].outcome in verdicts and history[1].outcome is history[0].outcome
    assert history[2].outcome is CommitOutcome.ACCEPTED
    done = [e.done_at for e in history]
    assert done == sorted(done)
    accepted = [str(e.record.step) for e in history if e.outcome is CommitOutcome.ACCEPTED]
    recorded = [
        line
        for line in cluster.replicas[0].log_path.read_text().splitlines()
        if "part of w0 recorded" in line
    ]
    assert [line.split("checkpoint step ")[1].split(":")[0] for line in recorded] == accepted


def test_checkpoints_round_trip_through_s3_and_plain_boto3_reads_the_same_bytes(
    cluster: LocalCluster, tmp_path: Path, s3_server: str
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    bucket = f"ckpt-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    options = {
        "endpoint_url": s3_server,
        "part_size_bytes": 5 << 20,
        "multipart_threshold_bytes": 5 << 20,
    }
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        CheckpointManager(
            worker,
            f"s3://{bucket}/run-7",
            queue_path=tmp_path / "q.sqlite",
            storage_options=options,
        ) as manager,
    ):
        state = {"big": torch.arange(3 << 20, dtype=torch.float32), "small": model_state(3)}
        result = manager.save_async(state, 300).result(timeout=60)
        expected = f"s3://{bucket}/run-7/" + PART.format(step=300, worker="w0")
        assert re.fullmatch(expected, result.uri)
        key = result.uri.removeprefix(f"s3://{bucket}/")
        manager.wait(timeout_s=30)
        loaded, step = manager.load_latest()
        assert step == 300
        assert_same(loaded, state)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert len(body) == result.size_bytes > 12 << 20
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_replicated_state_is_written_once_committed_by_everyone_and_loads_anywhere(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    uri = f"file://{tmp_path}/ckpt"
    with (
        Worker(
            cluster.coordinators, worker_id="w0", job=cluster.job, heartbeat_interval_s=0.2
        ) as w0,
        Worker(
            cluster.coordinators, worker_id="w1", job=cluster.job, heartbeat_interval_s=0.2
        ) as w1,
    ):
        wait_until(lambda: w0.generation == w1.generation, 30, "one generation")
        with (
            CheckpointManager(
                w0, uri, queue_path=tmp_path / "0.sqlite", replicated=True, writer=True
            ) as m0,
            CheckpointManager(
                w1, uri, queue_path=tmp_path / "1.sqlite", replicated=True, writer=False
            ) as m1,
        ):
            follower = m1.save_async(model_state(7), 70)  # waits for the writer's part
            leader = m0.save_async(model_state(7), 70)
            assert follower.result(timeout=30).uri == leader.result(timeout=30).uri
            m0.wait(timeout_s=30)
            m1.wait(timeout_s=30)
            names = m1.storage.list()
            token = r"replicated\.\d{10}-[0-9a-f]{16}"
            assert len(names) == 2
            assert re.fullmatch(f"{step_prefix(70)}{token}\\.dtr", names[0])
            assert names[1] == names[0].removesuffix(".dtr") + ".json"
            for manager in (m0, m1):
                state, step = manager.load_latest()
                assert step == 70
                assert_same(state, model_state(7))
            lonely = CheckpointManager(
                w1,
                uri,
                queue_path=tmp_path / "2.sqlite",
                replicated=True,
                writer=False,
                replica_wait_s=0.5,
            )
            with lonely, pytest.raises(CheckpointError, match="did not appear"):
                lonely.save_async({}, 80).result(timeout=30)


def test_own_parts_of_steps_no_longer_kept_are_deleted_and_nobody_elses(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    root = tmp_path / "ckpt"
    foreign = root / "step-00000000000000000010" / "w9.dtr"  # another worker's part
    leftover = root / "step-00000000000000000005" / "w0.dtr"  # an earlier process's
    for path in (foreign, leftover):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"part")
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        CheckpointManager(
            worker, f"file://{root}", keep=2, queue_path=tmp_path / "q.sqlite"
        ) as manager,
    ):
        for step in (10, 20, 30, 40):
            manager.save_async(model_state(step), step).result(timeout=30)
            manager.wait(timeout_s=30)

        def own_steps() -> list[int]:
            return sorted(s for s in (10, 20, 30, 40) if parts_of(root, s, "w0"))

        wait_until(lambda: own_steps() == [30, 40] and not leftover.exists(), 30, "old parts gone")
        assert foreign.exists(), "another worker's part was deleted"
        assert manager.load_latest()[1] == 40
