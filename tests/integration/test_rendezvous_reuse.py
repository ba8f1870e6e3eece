"""Reusing an ``--rdzv-id`` after its run ended starts a fresh round (issue 15).

torch's agents close their rendezvous when a run ends. The coordinator keeps
each rendezvous id's keys on an etcd lease that every call renews and that
expires ``--rendezvous-idle-ttl-s`` after the last one, so the closed round goes
away once nobody uses it and a later run with the same id can rendezvous.
The wait for expiry reads etcd directly: a call through the coordinator
would renew the lease it waits on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from torch.distributed.elastic.rendezvous.api import RendezvousParameters

from dtr.chaos.cluster import LocalCluster
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.store import EtcdStore
from dtr.worker.rendezvous import create_rdzv_handler
from helpers import wait_until

pytestmark = pytest.mark.integration


#: The shortest idle expiry the coordinator accepts, to keep the test short.
IDLE_TTL_S = 10


@pytest.fixture
def single(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(
        replicas=1,
        etcd=etcd,
        job=f"reuse-{uuid.uuid4().hex[:8]}",
        extra_args=("--rendezvous-idle-ttl-s", str(IDLE_TTL_S)),
    ) as c:
        yield c


def params(cluster: LocalCluster, run_id: str) -> RendezvousParameters:
    return RendezvousParameters(
        backend="dtr",
        endpoint=cluster.coordinators,
        run_id=run_id,
        min_nodes=1,
        max_nodes=1,
        local_addr="127.0.0.1",
        job=cluster.job,
        join_timeout="30",
    )


def test_a_reused_rdzv_id_starts_a_fresh_round_once_the_old_one_is_idle(
    single: LocalCluster, etcd: RunningEtcd
) -> None:
    run_id = "reused"
    first = create_rdzv_handler(params(single, run_id))
    assert first.next_rendezvous().rank == 0
    first.shutdown()  # what torchrun's agent does when the run ends: the round closes

    state_key = JobKeys(single.job).rendezvous_state(run_id)
    with EtcdStore(etcd.endpoints) as store:
        stored = store.get(state_key)
        assert stored is not None and stored.lease_id != 0  # expires when idle
        assert create_rdzv_handler(params(single, run_id)).is_closed()  # the old round
        wait_until(
            lambda: store.get(state_key) is None,
            IDLE_TTL_S + 30,
            "the idle rendezvous to expire",
        )
    second = create_rdzv_handler(params(single, run_id))
    try:
        assert not second.is_closed()
        info = second.next_rendezvous()
        assert (info.rank, info.world_size) == (0, 1)
    finally:
        second.shutdown()
