"""Registrations group-committed on a real leader (coordinator/registrations.py, issue 18).

A fleet starting together registers at once. The leader must answer each as
it would one by one (a live member, a new incarnation of its id) while
etcd's revision, which moves once per transaction, moves far fewer times
than there are workers. The leader reaches etcd through a proxy slowed to
50 ms, so the calls overlap whatever the machine's load; the member records
are read back from etcd, not from the leader's answers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from dtr.chaos.sim_client import SimClient, register_request
from dtr.coordinator.state import MemberRecord
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.store import EtcdStore
from helpers import cluster_dialing_etcd_through_proxies

pytestmark = pytest.mark.integration

FLEET = 150


def register_all(
    coordinators: Sequence[str], job: str, worker_ids: Sequence[str]
) -> list[pb.RegisterWorkerResponse]:
    async def scenario() -> list[pb.RegisterWorkerResponse]:
        # One attempt outlasts any queue here (150 one at a time through a 50 ms etcd):
        # a retried registration would be a second incarnation, not what is measured.
        client = SimClient(
            coordinators, job=job, policy=RetryPolicy(deadline_s=120.0), attempt_timeout_s=60.0
        )
        try:
            return list(
                await asyncio.gather(
                    *(
                        client.call(
                            "RegisterWorker",
                            register_request(worker_id),
                            caller=f"{worker_id}-{n}",
                            operation=f"register {worker_id}",
                            mutating=True,
                        )
                        for n, worker_id in enumerate(worker_ids)
                    )
                )
            )
        finally:
            await client.close()

    return asyncio.run(scenario())


def members_in_etcd(store: EtcdStore, job: str) -> dict[str, MemberRecord]:
    keys = JobKeys(job)
    found = store.get_prefix(keys.members_prefix).kvs
    return {record.worker_id: record for record in (MemberRecord.decode(kv.value) for kv in found)}


def generation_in_etcd(store: EtcdStore, job: str) -> int:
    found = store.get(JobKeys(job).generation)
    return int(found.value) if found is not None else 0


@pytest.mark.parametrize(
    ("batch_max", "fleet", "grouped"), [(100, FLEET, True), (1, FLEET // 4, False)]
)
def test_a_fleet_registering_at_once_shares_a_few_transactions(
    etcd: RunningEtcd, batch_max: int, fleet: int, grouped: bool
) -> None:
    job = f"r-{uuid.uuid4().hex[:10]}"
    ids = [f"r{i:03d}" for i in range(fleet)]
    store = EtcdStore(etcd.endpoints)
    try:
        with cluster_dialing_etcd_through_proxies(
            etcd,
            replicas=1,
            job=job,
            extra_args=["--register-batch-max", str(batch_max), "--heartbeat-timeout-s", "600"],
        ) as (cluster, proxies):
            cluster.leader(timeout_s=30)
            for proxy in proxies:
                proxy.delay(0.05)
            before = store.revision()
            answers = register_all(cluster.coordinators, job, ids)
            transactions = store.revision() - before
            members = members_in_etcd(store, job)
            generation = generation_in_etcd(store, job)
    finally:
        store.close()
    assert sorted(a.worker_id for a in answers) == ids
    assert {a.incarnation for a in answers} == {1}
    assert sorted(members) == ids
    assert all(m.alive and m.incarnation == 1 for m in members.values())
    # The newest answer names the generation etcd holds: the fleet is one view.
    assert max(a.header.generation for a in answers) == generation
    if grouped:
        assert 2 <= transactions < fleet // 5, f"{fleet} registrations: {transactions} txns"
    else:
        assert transactions >= fleet, f"one transaction each, yet {transactions} for {fleet}"


def test_registrations_of_one_id_at_once_each_get_their_own_incarnation(
    etcd: RunningEtcd,
) -> None:
    """A worker restarted while its earlier registration still queues: never one batch.

    Five registrations of ``twin`` arrive among others in the same instant.
    Each must be its own new incarnation (1..5, none shared, none lost) and
    etcd must end on the newest, live: folding them into one transaction
    would answer two callers with the same incarnation.
    """
    job = f"r-{uuid.uuid4().hex[:10]}"
    ids = ["twin"] * 5 + [f"o{i:02d}" for i in range(40)]
    store = EtcdStore(etcd.endpoints)
    try:
        with cluster_dialing_etcd_through_proxies(
            etcd, replicas=1, job=job, extra_args=["--heartbeat-timeout-s", "600"]
        ) as (cluster, proxies):
            cluster.leader(timeout_s=30)
            for proxy in proxies:
                proxy.delay(0.05)
            answers = register_all(cluster.coordinators, job, ids)
            members = members_in_etcd(store, job)
    finally:
        store.close()
    twins = sorted(a.incarnation for a in answers if a.worker_id == "twin")
    assert twins == [1, 2, 3, 4, 5]
    assert members["twin"].incarnation == 5 and members["twin"].alive
    assert all(members[w].incarnation == 1 for w in ids if w != "twin")
