"""End to end: real ``torchrun`` agents rendezvous through real dtr coordinators.

Two agents on loopback (``--nnodes=2``, one gloo worker each) run
``torchrun_child.py``, which all-reduces ``rank + 1`` (the sum of a healthy
2-node group is 3). The tests fail a worker, and kill the coordinator leader
in the middle of a rendezvous, and check that the group forms again and
finishes. ``--rdzv-backend=dtr`` is found through the package's
``torchrun.handlers`` entry point: nothing in torch is patched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.etcd import RunningEtcd
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from helpers import is_process_alive, stop_gracefully, wait_until

pytest.importorskip("torch")
pytestmark = pytest.mark.integration

CHILD = Path(__file__).with_name("torchrun_child.py")
FORM_TIMEOUT_S = 120.0


class Agent:
    """One ``torchrun`` agent process (the node ``name``), stopped by its own PID."""

    def __init__(
        self,
        cluster: LocalCluster,
        rdzv_id: str,
        name: str,
        out: Path,
        *,
        backend: tuple[str, str] | None = None,
        share_agent_store: bool = True,
    ) -> None:
        """``backend`` (name, endpoint) replaces dtr's, to compare with torch's own."""
        self.name, self.out = name, out
        rdzv_backend, endpoint = backend or ("dtr", cluster.coordinators)
        self.log = out / f"agent-{name}.log"
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--rdzv-backend={rdzv_backend}",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={rdzv_id}",
            f"--rdzv-conf=job={cluster.job},join_timeout={int(FORM_TIMEOUT_S)}",
            "--max-restarts=2",
            "--monitor-interval=0.2",
            "--local-addr=127.0.0.1",
            str(CHILD),
            str(out),
        ]
        env = {**os.environ, "DTR_TEST_NODE": name, "OMP_NUM_THREADS": "1"}
        if not share_agent_store:
            env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def workers(self, kind: str = "ready") -> list[dict[str, int]]:
        """What this agent's workers reported (``ready`` or ``done``), oldest first."""
        paths = sorted(self.out.glob(f"{kind}-{self.name}-*.json"), key=lambda p: p.stat().st_mtime)
        return [json.loads(path.read_text()) for path in paths]

    def newest(self, kind: str = "ready") -> dict[str, int] | None:
        reports = self.workers(kind)
        return reports[-1] if reports else None

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"agent {self.name} still running after {timeout_s} s:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def stop(self) -> None:
        """SIGTERM the agent (it stops its workers), SIGKILL it if it hangs, then its workers."""
        stop_gracefully(self.process)
        for facts in self.workers():
            if is_process_alive(facts["pid"]):
                os.kill(facts["pid"], signal.SIGKILL)


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=3, etcd=etcd, job=f"t-{uuid.uuid4().hex[:10]}") as started:
        yield started


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


def wait_formed(agents: list[Agent], old_pids: set[int] = frozenset()) -> list[dict[str, int]]:
    """Each agent's newest worker, once every agent has one not in ``old_pids`` that all-reduced."""

    def formed() -> bool:
        for agent in agents:
            if agent.process.poll() is not None:
                pytest.fail(f"agent {agent.name} exited early:\n{agent.tail()}")
        newest = [agent.newest() for agent in agents]
        return all(w is not None and w["pid"] not in old_pids for w in newest)

    wait_until(formed, FORM_TIMEOUT_S, f"a new worker on each of {len(agents)} agents")
    workers = [agent.newest() for agent in agents]
    assert all(w is not None for w in workers)
    assert sorted(w["rank"] for w in workers if w) == list(range(len(agents)))
    assert all(w and w["world"] == 2 and w["total"] == 3 for w in workers)  # 1 + 2
    return [w for w in workers if w]


def finish(agents: list[Agent]) -> None:
    """Let the workers finish; every agent exits 0 after a last all-reduce."""
    (agents[0].out / "go").touch()
    for agent in agents:
        assert agent.wait_exit(FORM_TIMEOUT_S) == 0, agent.tail()
        done = agent.newest("done")
        assert done is not None and done["total"] == 3 and done["world"] == 2


def test_two_agents_rendezvous_and_reform_after_a_worker_fails(
    cluster: LocalCluster, agents: list[Agent], tmp_path: Path
) -> None:
    rdzv_id = f"run-{uuid.uuid4().hex[:8]}"
    # With the agent's TCPStore shared across rounds (torch's default), a new
    # round's gloo group can read the last round's stale addresses and fail
    # once more, with c10d exactly as with dtr (docs/torchrun.md). Without
    # it, each round's workers bootstrap through dtr's store: a cleaner test.
    agents += [
        Agent(cluster, rdzv_id, name, tmp_path, share_agent_store=False) for name in ("a", "b")
    ]
    first = wait_formed(agents)

    os.kill(first[0]["pid"], signal.SIGKILL)  # agent a's worker dies; a restarts it
    # b sees a waiting for the next round and restarts its worker too.
    again = wait_formed(agents, {w["pid"] for w in first})
    assert [w["restart"] for w in again] == [1, 0]  # a counted a restart; b only followed
    finish(agents)


def test_rendezvous_survives_a_leader_kill_while_one_agent_waits(
    cluster: LocalCluster, agents: list[Agent], tmp_path: Path
) -> None:
    rdzv_id = f"run-{uuid.uuid4().hex[:8]}"
    agents.append(Agent(cluster, rdzv_id, "a", tmp_path))
    leader = cluster.leader()

    def state_written() -> bool:
        with grpc.insecure_channel(leader.address) as channel:
            request = pb.GetRendezvousStateRequest(
                header=pb.RequestHeader(job=cluster.job), rendezvous_id=rdzv_id
            )
            return bool(pb_grpc.CoordinatorStub(channel).GetRendezvousState(request).present)

    wait_until(state_written, FORM_TIMEOUT_S, "agent a to join the rendezvous")
    leader.kill()
    cluster.wait_new_leader(leader)
    agents.append(Agent(cluster, rdzv_id, "b", tmp_path))
    wait_formed(agents)
    finish(agents)
