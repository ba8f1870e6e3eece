"""A torchrun restart is one rendezvous round and one membership generation, end to end.

One agent, two gloo ranks of ``round_child.py`` under ``torchrun
--rdzv-backend=dtr`` against real coordinators. Rank 1 crashes once, so
torchrun stops the group and starts it again in a new rendezvous round. Each
round's ranks must register as that round: the same generation for both
ranks of a round, exactly one generation more for the next round (no bump
per rank, none for the crashed rank apart from its round's), and each rank's
second process a new incarnation of its id.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.etcd import RunningEtcd
from helpers import run_in_own_session

pytest.importorskip("torch")
pytestmark = pytest.mark.integration

CHILD = Path(__file__).with_name("round_child.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    # A heartbeat timeout far above a restart: no death is declared on its own.
    with LocalCluster.start(
        replicas=2, etcd=etcd, job=f"rt-{uuid.uuid4().hex[:8]}", heartbeat_timeout_s=60.0
    ) as started:
        yield started


def test_each_torchrun_restart_is_one_round_and_one_generation(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DTR_COORDINATORS": cluster.coordinators,
        "DTR_JOB": cluster.job,
        "OMP_NUM_THREADS": "1",
    }
    env.pop("DTR_WORKER_ID", None)
    before = cluster.status().generation
    argv = [str(TORCHRUN), "--nnodes=1", "--nproc-per-node=2", "--max-restarts=1"]
    argv += ["--rdzv-backend=dtr", f"--rdzv-endpoint={cluster.coordinators}"]
    argv += [f"--rdzv-id=rt-{uuid.uuid4().hex[:6]}", "--local-addr=127.0.0.1"]
    argv += [str(CHILD), str(tmp_path)]
    done = run_in_own_session(argv, env, timeout_s=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted(reports) == ["0-0", "0-1", "1-0", "1-1"], reports
    first = [reports["0-0"], reports["0-1"]]
    second = [reports["1-0"], reports["1-1"]]
    assert {r["generation"] for r in first} == {before + 1}
    assert {r["generation"] for r in second} == {before + 2}
    assert {r["incarnation"] for r in first} == {1}
    assert {r["incarnation"] for r in second} == {2}
    assert len({r["round"] for r in first}) == 1
    assert len({r["round"] for r in second}) == 1
    assert second[0]["round"] > first[0]["round"]
    # One rendezvous life (its state key's create revision) for both rounds.
    assert len({r["life"] for r in first + second}) == 1
    assert first[0]["life"] > 0
    assert first[0]["worker_id"] == second[0]["worker_id"]
