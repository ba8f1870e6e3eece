"""examples/train_mlp.py, run as a newcomer runs it: two copies against a real cluster.

The example is the first code most users copy, so it is tested as a program
(subprocesses, flags, exit codes, printed lines), not imported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.etcd import RunningEtcd
from helpers import wait_until

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_mlp.py"
EPOCHS = 2
RUN_TIMEOUT_S = 60.0
EPOCH_LINE = re.compile(
    r"^epoch (?P<epoch>\d+): generation (?P<generation>\d+), shards (?P<owned>\d+)/(?P<total>\d+), "
    r"samples (?P<samples>\d+), loss (?P<loss>[0-9.]+), stale (?P<stale>True|False)$",
    re.MULTILINE,
)


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=1, etcd=etcd, job=f"ex-{uuid.uuid4().hex[:10]}") as started:
        yield started


def start_worker(cluster: LocalCluster, worker_id: str, logs: Path) -> subprocess.Popen[str]:
    """One copy of the example, configured through flags only (no DTR_* from our environment).

    Output goes to files, not pipes: a child that fills a pipe nobody reads
    while we wait would block, and the test would time out for no reason.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}
    with (logs / f"{worker_id}.out").open("w") as out, (logs / f"{worker_id}.err").open("w") as err:
        return subprocess.Popen(
            [
                *(sys.executable, str(SCRIPT)),
                *("--coordinators", cluster.coordinators, "--job", cluster.job),
                *("--worker-id", worker_id, "--epochs", str(EPOCHS)),
                *("--num-samples", "2048", "--shards", "16", "--batch-size", "64"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            env=env,
        )


def test_two_copies_of_the_example_run_side_by_side_and_the_loss_falls(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    workers = {name: start_worker(cluster, name, tmp_path) for name in ("w0", "w1")}
    try:
        wait_until(
            lambda: all(p.poll() is not None for p in workers.values()),
            RUN_TIMEOUT_S,
            "both copies of the example to exit",
        )
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()  # only our own child, by its handle
                process.wait()
    outputs = {
        name: ((tmp_path / f"{name}.out").read_text(), (tmp_path / f"{name}.err").read_text())
        for name in workers
    }

    for name, (stdout, stderr) in outputs.items():
        assert workers[name].returncode == 0, f"{name} failed:\n{stdout}\n{stderr}"
        epochs = [m.groupdict() for m in EPOCH_LINE.finditer(stdout)]
        assert [int(e["epoch"]) for e in epochs] == list(range(EPOCHS)), stdout
        assert all(e["stale"] == "False" and int(e["total"]) == 16 for e in epochs), stdout
        assert all(int(e["samples"]) > 0 for e in epochs), stdout
        losses = [float(e["loss"]) for e in epochs]
        assert losses[-1] < losses[0], f"{name}: the loss did not fall: {losses}"
        assert re.search(rf"^done: {EPOCHS} epochs, final loss {losses[-1]:.4f}$", stdout, re.M)
        assert f"joined job {cluster.job} as {name}" in stderr


TUTORIAL = SCRIPT.parent / "tutorial" / "with_dtr.py"


def run_tutorial(cluster: LocalCluster, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """docs/tutorial.md's script, configured the way the tutorial says: DTR_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}
    env |= {
        "DTR_COORDINATORS": cluster.coordinators,
        "DTR_JOB": cluster.job,
        "DTR_WORKER_ID": "w0",
        "DTR_STATE_DIR": str(tmp_path / "state"),
    }
    return subprocess.run(
        [sys.executable, str(TUTORIAL), "--epochs", "1", "--checkpoint", tmp_path.as_uri()],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def test_the_tutorial_script_trains_and_a_second_run_resumes_from_its_checkpoint(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    steps = []
    for _ in range(2):
        done = run_tutorial(cluster, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        found = re.search(r"^epoch 0: step (\d+), loss [0-9.]+$", done.stdout, re.M)
        assert found, done.stdout
        steps.append(int(found.group(1)))
    assert steps[1] > steps[0], "the second run did not resume from the first run's checkpoint"
