"""Group commit on a real leader: a fleet's commits of one step share a few transactions.

Each of 80 workers commits its part of one step at the same moment, as a
job's workers do after a save. The leader must answer every one as it would
one by one (all accepted, exactly one completes the step, ``latest`` names it
with every member) while etcd's revision, which moves once per transaction,
moves far fewer than 80 times: applied one at a time, the commits queued for
80 etcd round trips behind the write lock, which is what made a training
worker's commit wait 30 s and more under the soak's 200 simulated workers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.chaos.proxy import TcpProxy
from dtr.chaos.sim_client import SimClient, register_workers
from dtr.etcd import RunningEtcd
from dtr.proto import coordinator_pb2 as pb
from dtr.store import EtcdStore
from dtr.worker.checkpoint_rpc import commit_request
from dtr.worker.commit_queue import CommitRecord
from helpers import cluster_dialing_etcd_through_proxies

pytestmark = pytest.mark.integration

FLEET = 80
Latest = pb.GetLatestCheckpointResponse
STEP = 40


@pytest.fixture
def slow_etcd_cluster(etcd: RunningEtcd) -> Iterator[tuple[LocalCluster, list[TcpProxy]]]:
    """One replica reaching etcd through proxies the test slows: commits must queue.

    On a busy machine the 80 calls leave this process over a few hundred
    milliseconds; with etcd answering in about one, they would barely
    overlap and the count of transactions would measure the machine's load.
    A 50 ms etcd makes them overlap whatever the load.
    """
    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=f"g-{uuid.uuid4().hex[:10]}"
    ) as started:
        yield started


def part(job: str, worker: str, generation: int) -> CommitRecord:
    return CommitRecord(
        job=job,
        step=STEP,
        worker_id=worker,
        generation=generation,
        uri=f"file:///ckpt/step-{STEP}/{worker}.dtr",
        size_bytes=4096,
        checksum_algorithm="crc32c",
        checksum_hex="0a1b2c3d",
        format_version=1,
    )


def test_a_fleet_committing_one_step_at_once_shares_a_few_transactions(
    slow_etcd_cluster: tuple[LocalCluster, list[TcpProxy]], etcd: RunningEtcd
) -> None:
    cluster, proxies = slow_etcd_cluster
    ids = [f"g{i:03d}" for i in range(FLEET)]
    store = EtcdStore(etcd.endpoints)

    async def scenario() -> tuple[list[pb.CommitCheckpointResponse], int, Latest]:
        client = SimClient(cluster.coordinators, job=cluster.job)
        try:
            generation = await register_workers(client, ids)
            for proxy in proxies:
                proxy.delay(0.05)
            before = await asyncio.to_thread(store.revision)
            answers = await asyncio.gather(
                *(
                    client.call(
                        "CommitCheckpoint",
                        lambda w=w: commit_request(part(cluster.job, w, generation)),
                        caller=w,
                        operation=f"commit {w}",
                        mutating=True,
                    )
                    for w in ids
                )
            )
            transactions = await asyncio.to_thread(store.revision) - before
            latest = await client.call(
                "GetLatestCheckpoint",
                pb.GetLatestCheckpointRequest,
                caller="test",
                operation="latest",
                mutating=False,
            )
            return list(answers), transactions, latest
        finally:
            await client.close()

    try:
        answers, transactions, latest = asyncio.run(scenario())
    finally:
        store.close()
    statuses = {pb.CommitStatus.Name(a.status) for a in answers}
    assert statuses == {"COMMIT_STATUS_ACCEPTED"}, statuses
    assert sum(a.step_complete for a in answers) == 1, "one commit completes the step"
    assert (latest.has_checkpoint, latest.step) == (True, STEP)
    assert sorted(p.worker_id for p in latest.parts) == ids
    assert transactions < FLEET // 4, (
        f"{FLEET} commits took {transactions} etcd transactions: not grouped"
    )
