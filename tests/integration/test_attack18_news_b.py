"""Adversarial checks of the pushed leader news (issue 18 item 1): calls cut mid-write.

A commit the old leader wrote whose answer is still on the wire when the news
closes the channel; a barrier held by a leader that is stopping; an old
incarnation's barrier re-sent to the new leader after its id restarted; a
rack (the leader and the follower holding the watch) frozen at once. Real
replicas on the session etcd, a job of their own per test.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.errors import WorkerSuperseded
from dtr.etcd import RunningEtcd
from dtr.proto import coordinator_pb2 as pb
from dtr.worker import Worker
from dtr.worker.client import CoordinatorClient
from dtr.worker.commit_queue import CommitOutcome, CommitRecord
from dtr.worker.leader_watch import LeaderWatch, first_replica
from helpers import proxied_cluster, wait_until

pytestmark = pytest.mark.integration

TTL_S = 3


def _job() -> str:
    return f"atk18b-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=3, etcd=etcd, job=_job(), lease_ttl_s=TTL_S) as started:
        started.leader()
        yield started


def _watch_of(client: CoordinatorClient) -> LeaderWatch:
    watch = client._watch
    assert watch is not None
    return watch


def _record(worker: Worker, step: int) -> CommitRecord:
    return CommitRecord(
        job=worker.job,
        step=step,
        worker_id=worker.worker_id,
        generation=worker.generation,
        uri=f"file:///ckpt/step-{step}/{worker.worker_id}.dtr",
        size_bytes=4096,
        checksum_algorithm="crc32c",
        checksum_hex="0a1b2c3d",
        format_version=1,
        job_life=worker.job_life,
        incarnation=worker.incarnation,
    )


def test_a_commit_written_by_the_old_leader_and_re_sent_on_news_is_acknowledged_as_complete(
    etcd: RunningEtcd,
) -> None:
    """The answer of the step's last commit is on the wire when the old leader resigns."""
    with proxied_cluster(etcd, 3, lease_ttl_s=TTL_S) as pc:
        cluster = pc.cluster
        old = cluster.leader()
        a = Worker(cluster.coordinators, worker_id="c-a", job=cluster.job)
        b = Worker(cluster.coordinators, worker_id="c-b", job=cluster.job)
        acks: list[object] = []
        committer = threading.Thread(
            target=lambda: acks.append(_try(lambda: b.commit_checkpoint(_record(b, 100)))),
            daemon=True,
        )
        try:
            wait_until(lambda: a.generation == b.generation == 2, 10, "one generation")
            assert a.commit_checkpoint(_record(a, 100)).outcome is CommitOutcome.ACCEPTED
            client = b._client
            wait_until(
                lambda: _watch_of(client).watching not in (None, old.advertised_address),
                10,
                "b's watch on a follower",
            )
            old_proxy = pc.proxies[cluster.replicas.index(old)]
            old_proxy.delay(2.0)  # b's request and the answer each take 2 s on the wire
            committer.start()
            wait_until(
                lambda: old.cluster_status().latest_checkpoint.step == 100,
                10,
                "the old leader wrote the step complete",
            )
            old.request_stop()  # resigns: the news reaches b before the answer does
            committer.join(timeout=30.0)
            assert acks, "b's commit never returned"
            ack = acks[0]
            assert not isinstance(ack, BaseException), ack
            drops = dict(client._drops)
        finally:
            for proxy in pc.proxies:
                proxy.heal()
            committer.join(timeout=30.0)
            b.close()
            a.close()
        assert drops.get(old.advertised_address), "the commit was not cut by the news (timing)"
        assert ack.outcome.is_committed, ack
        assert ack.step_complete and ack.latest_complete_step == 100, (
            f"the re-sent commit that completed step 100 was answered {ack}"
        )


def _try(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except BaseException as err:  # handed to the main thread
        return err


def test_a_barrier_held_by_a_leader_that_is_stopping_is_released_once_on_the_new_leader(
    cluster: LocalCluster,
) -> None:
    first = Worker(cluster.coordinators, worker_id="s-1", job=cluster.job)
    second = Worker(cluster.coordinators, worker_id="s-2", job=cluster.job)
    old = cluster.leader()
    results: list[int | BaseException] = []
    waiter = threading.Thread(
        target=lambda: results.append(_try(lambda: first.barrier("stop", timeout_s=60.0))),
        daemon=True,
    )
    try:
        wait_until(lambda: first.generation == second.generation == 2, 10, "one generation")
        waiter.start()
        wait_until(
            lambda: any(b.arrived == 1 for b in old.cluster_status().open_barriers),
            10,
            "s-1's arrival held on the leader",
        )
        old.request_stop()
        new = cluster.wait_new_leader(old, timeout_s=TTL_S + 10)
        generation = second.barrier("stop", timeout_s=30.0)
        arrived = time.monotonic()
        waiter.join(timeout=15.0)
        late_s = time.monotonic() - arrived
        assert results == [generation], results
        assert late_s < 2.0, f"s-1 released {late_s:.2f} s after s-2's arrival"
        assert first.leader_address == new.address
        assert not new.cluster_status().open_barriers
        # Released once, and asking again is answered with that same release.
        assert first.barrier("stop", timeout_s=10.0) == generation
        assert second.barrier("stop", timeout_s=10.0) == generation
    finally:
        waiter.join(timeout=30.0)
        second.close()
        first.close()


def test_an_old_incarnations_barrier_re_sent_on_news_never_counts_for_its_restarted_id(
    cluster: LocalCluster,
) -> None:
    """Invariant 2 across the re-send: ``r`` restarts (incarnation 2) while 1 is held on a
    frozen leader; 1's re-sent arrival must not release anyone."""
    x = Worker(cluster.coordinators, worker_id="x", job=cluster.job)
    old_r = Worker(cluster.coordinators, worker_id="r", job=cluster.job)
    old = cluster.leader()
    results: dict[str, int | BaseException] = {}
    threads: list[threading.Thread] = []

    def arrive(name: str, worker: Worker) -> None:
        def run() -> None:
            results[name] = _try(lambda: worker.barrier("inc", timeout_s=40.0))

        thread = threading.Thread(target=run, daemon=True)
        threads.append(thread)
        thread.start()

    new_r: Worker | None = None
    try:
        wait_until(lambda: x.generation == old_r.generation == 2, 10, "one generation")
        arrive("r1", old_r)
        wait_until(
            lambda: any(b.arrived == 1 for b in old.cluster_status().open_barriers),
            10,
            "r1's arrival held on the leader",
        )
        old.pause()
        new = cluster.wait_new_leader(old, timeout_s=TTL_S + 10)
        wait_until(lambda: old_r.leader_address == new.address, 5, "r1 told of the new leader")
        wait_until(
            lambda: any(b.arrived == 1 for b in new.cluster_status().open_barriers),
            10,
            "r1's arrival re-sent to the new leader",
        )
        new_r = Worker(cluster.coordinators, worker_id="r", job=cluster.job)
        assert new_r.incarnation > old_r.incarnation
        arrive("x", x)
        arrive("r2", new_r)
        for thread in threads:
            thread.join(timeout=45.0)
        assert isinstance(results.get("r1"), WorkerSuperseded), results
        assert isinstance(results.get("x"), int), results
        assert results.get("x") == results.get("r2"), results
    finally:
        if old.is_paused():
            old.resume()
        for thread in threads:
            thread.join(timeout=45.0)
        for worker in (new_r, old_r, x):
            if worker is not None:
                worker.close()


def test_a_rack_freeze_of_the_leader_and_the_watched_follower_is_seen_within_ttl_plus_2s(
    cluster: LocalCluster,
) -> None:
    """Several replicas at once: a frozen watched follower hides the news for its whole wait."""
    old = cluster.leader()
    client = CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id="rack")
    try:
        client.call(
            "RegisterDataset",
            lambda: pb.RegisterDatasetRequest(name="ds", num_shards=4),
            operation="register dataset",
            mutating=True,
        )
        watch = _watch_of(client)
        wait_until(lambda: watch.watching not in (None, old.address), 10, "a follower's watch")
        watched = next(r for r in cluster.replicas if r.address == watch.watching)
        survivor = next(r for r in cluster.replicas if r not in (old, watched))
        answers = watch.answers
        wait_until(lambda: watch.answers > answers, 10, "the watch renewing its call")
        old.pause()
        watched.pause()  # the rack: the leader and the follower holding the watch
        frozen = time.monotonic()
        client.call(
            "RegisterDataset",
            lambda: pb.RegisterDatasetRequest(name="ds", num_shards=4),
            operation="register dataset",
            mutating=True,
        )
        through_s = time.monotonic() - frozen
        # Its health turns SERVING on its next leader cycle, after the write it took.
        wait_until(survivor.is_leader, 5, "the survivor serving as the leader")
    finally:
        for replica in (old, watched):
            if replica.is_paused():
                replica.resume()
        client.close()
    assert through_s <= TTL_S + 2.0, (
        f"a mutating call got through {through_s:.2f} s after the rack froze (TTL {TTL_S} s)"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_frozen_leader_is_seen_within_ttl_plus_1_5s_whatever_name_the_replicas_are_given(
    cluster: LocalCluster, host: str
) -> None:
    """Configured names need not be the advertised ones (a DNS name, the k8s Service).

    The watch avoids "the leader it knows", compared as text: with the replicas
    configured as ``localhost:PORT`` and advertising ``127.0.0.1:PORT`` the
    watch can sit on the leader, and a frozen leader tells nothing.
    """
    old = cluster.leader()
    index = cluster.replicas.index(old)
    configured = [f"{host}:{r.port}" for r in cluster.replicas]
    caller = next(f"alias-{n}" for n in range(1000) if first_replica(f"alias-{n}", 3) == index)
    client = CoordinatorClient(configured, job=cluster.job, caller_id=caller)
    try:
        client.call(
            "RegisterDataset",
            lambda: pb.RegisterDatasetRequest(name="ds", num_shards=4),
            operation="register dataset",
            mutating=True,
        )
        watch = _watch_of(client)
        wait_until(lambda: watch.answers >= 2, 15, "the watch answered twice")
        watching = watch.watching
        old.pause()
        frozen = time.monotonic()
        client.call(
            "RegisterDataset",
            lambda: pb.RegisterDatasetRequest(name="ds", num_shards=4),
            operation="register dataset",
            mutating=True,
        )
        through_s = time.monotonic() - frozen
    finally:
        if old.is_paused():
            old.resume()
        client.close()
    assert through_s <= TTL_S + 1.5, (
        f"configured as {host}: a mutating call got through {through_s:.2f} s after the leader "
        f"({old.address}) froze; the watch sat on {watching}, the client's leader was "
        f"{client.leader_address}"
    )
