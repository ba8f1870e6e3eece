"""One torchrun round, one membership generation, on real coordinators (coordinator/rounds.py).

Ranks register the way a ``Worker`` under ``torchrun --rdzv-backend=dtr``
does (``RegisterWorker`` with its ``RendezvousRound``), each from its own
thread and client. The leader must hold every rank until the whole round has
asked, then write them in one transaction: the generation moves by exactly
one per round, a round that lost an agent declares the missing ranks dead in
that same write, a rank of a replaced round is refused, and a round that is
forming when the leader dies still forms, once, on the next leader.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.errors import StaleRound
from dtr.etcd import RunningEtcd
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.worker.client import CoordinatorClient
from dtr.worker.rendezvous_round import ATTEMPT_TIMEOUT_S, RoundSeat
from helpers import wait_until

pytestmark = pytest.mark.integration

RDZV = "train-run"


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=2, etcd=etcd, job=f"rounds-{uuid.uuid4().hex[:8]}") as started:
        yield started


class Ranks:
    """Registers ranks like ``Worker._register`` does, one thread and client each."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.sent: dict[int, threading.Event] = {}
        self.life = 1

    def register(self, rank: int, round_: int, world: int, pid: int) -> pb.RegisterWorkerResponse:
        """Ask until the round is whole, as ``register_in_round`` does."""
        client = CoordinatorClient(
            self.cluster.coordinators,
            job=self.cluster.job,
            caller_id=f"rank{rank}",
            policy=RetryPolicy(deadline_s=60),
        )
        seat = RoundSeat(RDZV, round_, world, rank, life=self.life)
        request = pb.RegisterWorkerRequest(
            worker_id=f"node-rank{rank}",
            capacity=1.0,
            host="node",
            pid=pid,
            rendezvous_round=seat.message(),
        )
        try:
            for _ in range(30):
                self.sent.setdefault(rank, threading.Event()).set()
                answer: pb.RegisterWorkerResponse = client.call(
                    "RegisterWorker",
                    lambda: pb.RegisterWorkerRequest.FromString(request.SerializeToString()),
                    operation="register rank",
                    mutating=True,
                    attempt_timeout_s=ATTEMPT_TIMEOUT_S,
                )
                if not answer.round_pending:
                    return answer
            raise AssertionError(f"rank {rank}: round {round_} never formed")
        finally:
            client.close()

    def start(
        self, rank: int, round_: int, world: int, pid: int
    ) -> Future[pb.RegisterWorkerResponse]:
        return self.pool.submit(self.register, rank, round_, world, pid)

    def round(self, round_: int, world: int, pid: int) -> list[pb.RegisterWorkerResponse]:
        futures = [self.start(rank, round_, world, pid + rank) for rank in range(world)]
        return [f.result(timeout=90) for f in futures]


def members(cluster: LocalCluster) -> dict[str, tuple[bool, int]]:
    return {w.id: (w.alive, w.incarnation) for w in cluster.status().workers}


def test_each_round_is_one_generation_and_a_smaller_round_retires_the_missing_ranks(
    cluster: LocalCluster,
) -> None:
    ranks = Ranks(cluster)
    before = cluster.status().generation

    # Round 0: three of four ranks wait; nothing is written until the fourth asks.
    waiting = [ranks.start(rank, 0, 4, 1000 + rank) for rank in range(3)]
    wait_until(lambda: len(ranks.sent) == 3, timeout_s=30, what="three ranks asking")
    assert not any(f.done() for f in waiting)
    assert members(cluster) == {}
    assert cluster.status().generation == before
    last = ranks.start(3, 0, 4, 1003)
    answers = [f.result(timeout=60) for f in [*waiting, last]]
    assert {a.header.generation for a in answers} == {before + 1}
    assert {a.incarnation for a in answers} == {1}
    assert members(cluster) == {f"node-rank{r}": (True, 1) for r in range(4)}

    # Round 1: torchrun restarted the group after an agent left: two ranks.
    answers = ranks.round(1, 2, pid=2000)
    assert {a.header.generation for a in answers} == {before + 2}
    assert members(cluster) == {
        "node-rank0": (True, 2),
        "node-rank1": (True, 2),
        "node-rank2": (False, 1),  # declared dead by the round's own write
        "node-rank3": (False, 1),
    }
    assert cluster.status().generation == before + 2

    # A leftover process of round 0 asking now is told to exit, and changes nothing.
    with pytest.raises(StaleRound, match="leftover"):
        ranks.register(0, 0, 4, 1000)
    assert cluster.status().generation == before + 2

    # The same process asking again (its answer lost) gets its record back: no new incarnation.
    again = ranks.register(1, 1, 2, 2001)
    assert (again.incarnation, again.header.generation) == (2, before + 2)

    # A new run under the same --rdzv-id (its keys expired) starts at round 0 in a newer life.
    ranks.life = 2
    answers = ranks.round(0, 2, pid=3000)
    assert {(a.incarnation, a.header.generation) for a in answers} == {(3, before + 3)}
    ranks.life = 1
    with pytest.raises(StaleRound):
        ranks.register(0, 1, 2, 2000)  # the old run's round 1 is now the stale one
    ranks.pool.shutdown()


def test_a_round_forming_when_the_leader_dies_forms_once_on_the_next_leader(
    cluster: LocalCluster,
) -> None:
    ranks = Ranks(cluster)
    before = cluster.status().generation
    first = ranks.start(0, 0, 2, 500)
    wait_until(lambda: 0 in ranks.sent, timeout_s=30, what="rank 0 asking")
    old = cluster.leader()
    old.kill()
    cluster.wait_new_leader(old, timeout_s=30)
    second = ranks.start(1, 0, 2, 501)
    answers = [first.result(timeout=90), second.result(timeout=90)]
    assert {a.header.generation for a in answers} == {before + 1}
    assert members(cluster) == {"node-rank0": (True, 1), "node-rank1": (True, 1)}
    ranks.pool.shutdown()
