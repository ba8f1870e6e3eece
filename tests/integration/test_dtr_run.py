"""``dtr run`` end to end: the real ``dtr`` console script becomes torchrun on dtr's rendezvous.

One agent, two gloo ranks (``--nproc-per-node 2``) of
``examples/torchrun/allreduce.py``, against real coordinators on loopback:
the user types only torchrun's own flags and the script; the endpoint comes
from ``DTR_COORDINATORS`` and the job from ``--job``. Every rank must print
the all-reduced sum of a healthy 2-rank group (3), and the rendezvous must
be the coordinators' (its keys are in etcd under the job).
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
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from helpers import run_in_own_session

pytest.importorskip("torch")
pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "torchrun" / "allreduce.py"
DTR = Path(sys.executable).with_name("dtr")


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=2, etcd=etcd, job=f"run-{uuid.uuid4().hex[:8]}") as started:
        yield started


def test_dtr_run_is_torchrun_on_the_coordinators_rendezvous(
    cluster: LocalCluster, etcd: RunningEtcd
) -> None:
    env = {**os.environ, "DTR_COORDINATORS": cluster.coordinators, "OMP_NUM_THREADS": "1"}
    env.pop("DTR_JOB", None)
    argv = [str(DTR), "run", "--job", cluster.job, "--nnodes", "1", "--nproc-per-node", "2"]
    argv += ["--max-restarts", "0", "--local-addr", "127.0.0.1", str(SCRIPT)]
    done = run_in_own_session(argv, env, timeout_s=180)
    assert done.returncode == 0, done.stdout + done.stderr
    # Both ranks share torchrun's stdout: a line's text and its newline are separate
    # writes, so two ranks' lines can run together; look for each report in the text.
    ranks = sorted(re.findall(r"rank (\d+) of 2: all-reduced sum 3", done.stdout))
    assert ranks == ["0", "1"], done.stdout
    store = EtcdStore(etcd.endpoints)
    try:
        keys = [kv.key for kv in store.get_prefix(JobKeys(cluster.job).prefix).kvs]
    finally:
        store.close()
    state = f"/rendezvous/{cluster.job}/state"  # the run id defaults to the job
    assert any(key.endswith(state) for key in keys), keys


def test_dtr_run_refuses_another_backend_before_starting_anything(cluster: LocalCluster) -> None:
    env = {**os.environ, "DTR_COORDINATORS": cluster.coordinators}
    argv = [str(DTR), "run", "--rdzv-backend", "c10d", "--nnodes", "1", str(SCRIPT)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("dtr run: error: --rdzv-backend=c10d"), done.stderr
