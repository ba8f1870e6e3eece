"""The composed DDP job (examples/ddp/train.py) under the real ``dtr run``, with a rank killed.

One torchrun agent, two gloo ranks, real coordinators and etcd on loopback.
A run without faults is the reference: both ranks end with the same
parameters. Then a run whose rank 1 is SIGKILLed once a checkpoint step is
complete: torchrun restarts the group, both ranks resume from the same
complete step and finish. Since the shards depend only on the members (the
same two worker ids) and the checkpoint holds the position in the epoch,
resuming is exact: the killed run ends with the reference's parameters, bit
for bit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.coordinator.checkpoints import CompleteRecord
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from helpers import is_process_alive, stop_gracefully, wait_until

pytest.importorskip("torch")
pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "ddp" / "train.py"
DTR = Path(sys.executable).with_name("dtr")
STEPS, SAVE_EVERY = 120, 20
STEP_TIME_S = 0.05  # 120 steps last about 6 s: time to kill a rank mid-run
RUN_TIMEOUT_S = 150.0  # a first start, a restart and 120 steps take about 20 s on 2 cores


def is_our_rank(pid: int) -> bool:
    """Whether ``pid`` is alive and still a rank of the job (a pid can be reused)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return is_process_alive(pid) and str(SCRIPT).encode() in command


@dataclass
class Run:
    """One ``dtr run`` of the job and what its ranks wrote."""

    process: subprocess.Popen[bytes]
    job: str
    events: Path
    output: Path
    store: EtcdStore

    def latest_complete_step(self) -> int:
        latest = self.store.get(JobKeys(self.job).latest_checkpoint)
        return CompleteRecord.decode(latest.value).step if latest else 0

    def is_complete(self, step: int) -> bool:
        return self.store.get(JobKeys(self.job).checkpoint_complete(step)) is not None

    def records(self, rank: int) -> list[dict[str, Any]]:
        path = self.events / f"rank-{rank}.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]  # a line being written

    def last_process(self, rank: int) -> list[dict[str, Any]]:
        """The records of the newest process of ``rank`` (its last ``start`` on)."""
        records = self.records(rank)
        starts = [i for i, r in enumerate(records) if r["event"] == "start"]
        return records[starts[-1] :] if starts else []

    def wait(self) -> int:
        wait_until(lambda: self.process.poll() is not None, RUN_TIMEOUT_S, "the job to end")
        return self.process.returncode

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM torchrun (it stops its ranks), SIGKILL it if it hangs, then any rank left."""
        stop_gracefully(self.process)
        for rank in (0, 1):
            for record in self.records(rank):
                if record["event"] == "start" and is_our_rank(record["pid"]):
                    os.kill(record["pid"], signal.SIGKILL)


@contextmanager
def job_run(etcd: RunningEtcd, work: Path, *script_args: str) -> Iterator[Run]:
    """``dtr run`` of the job on a cluster of its own (a job's checkpoints are its own)."""
    job = f"ddp-{uuid.uuid4().hex[:8]}"
    # Retention would drop the record of the step the group resumed from before we look.
    keep = ("--keep-checkpoints", "100")
    with (
        LocalCluster.start(replicas=2, etcd=etcd, job=job, extra_args=keep) as cluster,
        EtcdStore(etcd.endpoints) as store,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DTR_", "TORCHELASTIC"))}
        env |= {"DTR_COORDINATORS": cluster.coordinators, "OMP_NUM_THREADS": "1"}
        env["DTR_STATE_DIR"] = str(work / "state")  # the ranks' commit queues
        env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)  # dtr's handler sets it itself
        argv = [str(DTR), "run", "--job", job, "--nnodes", "1", "--nproc-per-node", "2"]
        argv += ["--max-restarts", "2", "--local-addr", "127.0.0.1", str(SCRIPT)]
        argv += ["--steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--seed", "3"]
        argv += ["--checkpoint", (work / "checkpoints").as_uri(), "--events", str(work / "events")]
        output = work / "output.txt"
        with output.open("wb") as out:
            process = subprocess.Popen(
                [*argv, *script_args], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        run = Run(process, job, work / "events", output, store)
        try:
            yield run
        finally:
            run.stop()


def finished(run: Run) -> list[str]:
    """Both ranks' final hashes, after checking the run ended well and said so."""
    assert run.wait() == 0, run.text()[-4000:]
    hashes = []
    for rank in (0, 1):
        done = [r for r in run.last_process(rank) if r["event"] == "done"]
        assert len(done) == 1 and done[0]["step"] == STEPS, run.text()[-4000:]
        steps = [r["step"] for r in run.last_process(rank) if r["event"] == "step"]
        resumed = next(r["step"] for r in run.last_process(rank) if r["event"] == "resumed")
        assert steps == list(range(resumed + 1, STEPS + 1)), "a step was skipped or repeated"
        hashes.append(done[0]["param_sha256"])
        # Two ranks share torchrun's stdout, and their lines can run together.
        assert f"rank {rank} param_sha256 {hashes[-1]}" in run.text()
    return hashes


@dataclass(frozen=True)
class Outcome:
    """What a finished run left behind."""

    hashes: list[str]
    resumed_steps: list[int]
    latest_complete_step: int
    output: str


@pytest.fixture(scope="module")
def reference(etcd: RunningEtcd, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """A run without faults (and without simulated compute: quick)."""
    with job_run(etcd, tmp_path_factory.mktemp("reference")) as run:
        hashes = finished(run)
        resumed = [
            r["step"] for rank in (0, 1) for r in run.records(rank) if r["event"] == "resumed"
        ]
        return Outcome(hashes, resumed, run.latest_complete_step(), run.text())


def test_a_run_without_faults_ends_with_the_same_model_on_both_ranks(reference: Outcome) -> None:
    assert reference.resumed_steps == [0, 0]  # one fresh start each
    assert reference.hashes[0] == reference.hashes[1]
    assert reference.latest_complete_step == STEPS  # the last save is committed by both
    assert re.search(r"^step 100 loss \d+\.\d{4}$", reference.output, re.MULTILINE)


def test_a_killed_rank_restarts_the_group_at_a_complete_step_and_training_ends_the_same(
    etcd: RunningEtcd, tmp_path: Path, reference: Outcome
) -> None:
    with job_run(etcd, tmp_path, "--step-time", str(STEP_TIME_S)) as run:

        def committed_or_ended() -> bool:
            return run.latest_complete_step() >= SAVE_EVERY or run.process.poll() is not None

        wait_until(committed_or_ended, RUN_TIMEOUT_S, "a complete checkpoint step")
        committed = run.latest_complete_step()
        (victim,) = [r for r in run.records(1) if r["event"] == "start"]
        assert committed >= SAVE_EVERY and is_our_rank(victim["pid"]), run.text()[-4000:]
        os.kill(victim["pid"], signal.SIGKILL)  # a rank of ours, by the pid it wrote

        hashes = finished(run)
        resumed = [
            next(r for r in run.last_process(rank) if r["event"] == "resumed") for rank in (0, 1)
        ]
        assert all(r["restart"] >= 1 for r in resumed), resumed  # torchrun restarted the group
        step = resumed[0]["step"]
        assert resumed[1]["step"] == step, resumed
        first_life = [r for r in run.records(0) + run.records(1) if r["restart"] == 0]
        saved = max(r["step"] for r in first_life if r["event"] == "saved")  # before the restart
        assert committed <= step <= saved and step % SAVE_EVERY == 0, resumed
        assert run.is_complete(step)
    # The shards depend only on the members, the same two ids: resuming is exact.
    assert hashes[0] == hashes[1] == reference.hashes[0]
