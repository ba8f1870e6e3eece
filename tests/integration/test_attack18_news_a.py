"""Adversarial checks of the pushed leader news (issue 18 item 1), on real processes.

Where the parts meet: a replica cut off from etcd that still answers
``WatchLeader``; a replica stopping while it holds many watches; clients
created and closed while their watch is in a call; a zombie leader's late
answer; a briefly paused etcd. Each test starts its own 3-replica cluster
(TTL 3 s) for a job of its own.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterator

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.chaos.coordinator_process import CoordinatorProcess
from dtr.etcd import EtcdCluster, RunningEtcd
from dtr.proto import coordinator_pb2 as pb
from dtr.worker import Worker
from dtr.worker.client import CoordinatorClient
from dtr.worker.leader_watch import WATCH_GRACE_S, WATCH_WAIT_S, LeaderWatch, first_replica
from helpers import cluster_dialing_etcd_through_proxies, wait_until

pytestmark = pytest.mark.integration

TTL_S = 3


def _job() -> str:
    return f"atk18-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=3, etcd=etcd, job=_job(), lease_ttl_s=TTL_S) as started:
        started.leader()
        yield started


def _watch_of(client: CoordinatorClient) -> LeaderWatch:
    watch = client._watch
    assert watch is not None
    return watch


def _register_dataset(client: CoordinatorClient) -> None:
    client.call(
        "RegisterDataset",
        lambda: pb.RegisterDatasetRequest(name="ds", num_shards=4),
        operation="register dataset",
        mutating=True,
    )


def _by_address(cluster: LocalCluster, address: str | None) -> CoordinatorProcess:
    return next(r for r in cluster.replicas if r.address == address)


def _caller_ids_starting_at(index: int, count: int, replicas: int = 3) -> list[str]:
    """Caller ids whose watch starts on replica ``index`` (``first_replica`` spreads by id)."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        name = f"w-{n}"
        if first_replica(name, replicas) == index:
            found.append(name)
        n += 1
    return found


def test_a_watch_held_by_a_replica_cut_off_from_etcd_still_brings_the_news(
    etcd: RunningEtcd,
) -> None:
    """A follower partitioned from etcd keeps answering ``WatchLeader`` from a stale view.

    Its answers (the old leader, not newer) count as "answered", so the watch
    would stay on it for good while the rest of the cluster elects a new leader.
    """
    with cluster_dialing_etcd_through_proxies(etcd, replicas=3, job=_job(), lease_ttl_s=TTL_S) as (
        cluster,
        proxies,
    ):
        old = cluster.leader()
        client = CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id="cut-watch")
        try:
            _register_dataset(client)
            watch = _watch_of(client)
            wait_until(
                lambda: watch.watching not in (None, old.address), 10, "a watch held by a follower"
            )
            cut = _by_address(cluster, watch.watching)
            survivor = next(r for r in cluster.replicas if r not in (old, cut))
            proxies[cluster.replicas.index(cut)].blackhole()  # cut from etcd, still serving
            old.kill()
            wait_until(survivor.is_leader, TTL_S + 10, "the survivor elected")
            elected = time.monotonic()
            # A watch on a dead replica moves on at once; one on a silent replica after
            # its wait plus grace; 2 s more is ample for any watch that moves at all.
            bound = WATCH_WAIT_S + WATCH_GRACE_S + 2.0
            deadline = elected + bound
            while client.leader_address != survivor.address and time.monotonic() < deadline:
                time.sleep(0.05)
            seen = client.leader_address
            watched = watch.watching
        finally:
            for proxy in proxies:
                proxy.heal()
            client.close()
        assert seen == survivor.address, (
            f"{bound:.0f} s after the election the client still aims at {seen} (dead); its "
            f"watch sits on {watched} ({cut.address} is the replica cut off from etcd), "
            f"answered {watch.answers} times"
        )


def test_a_follower_stopping_with_many_watches_held_stops_at_once_and_the_watches_move(
    cluster: LocalCluster,
) -> None:
    old = cluster.leader()
    follower = next(r for r in cluster.replicas if r is not old)
    survivor = next(r for r in cluster.replicas if r not in (old, follower))
    ids = _caller_ids_starting_at(cluster.replicas.index(follower), 12)
    clients = [CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id=i) for i in ids]
    try:
        for client in clients:
            _register_dataset(client)
        watches = [_watch_of(c) for c in clients]
        wait_until(
            lambda: all(w.watching == follower.address for w in watches),
            10,
            "every watch held by the chosen follower",
        )
        asked = time.monotonic()
        follower.request_stop()
        follower.wait_stopped(15.0)
        stop_s = time.monotonic() - asked
        wait_until(
            lambda: all(w.watching not in (None, follower.address) for w in watches),
            WATCH_WAIT_S + WATCH_GRACE_S,
            "every watch moved off the stopped follower",
        )
        refused = {c.caller_id: sorted(_watch_of(c)._refused) for c in clients}
        assert not any(refused.values()), f"a stopping replica got refused for good: {refused}"
        assert all(w.running for w in watches)
        # The moved watches still bring the news of the next leader.
        killed = time.monotonic()
        old.kill()
        wait_until(
            lambda: all(c.leader_address == survivor.address for c in clients),
            TTL_S + 5,
            "every client told of the survivor",
        )
        news_s = time.monotonic() - killed
    finally:
        for client in clients:
            client.close()
    # Held calls answered at once: the stop does not wait out the 2 s server grace.
    assert stop_s < 2.0, f"a follower holding 12 watches took {stop_s:.2f} s to stop"
    assert news_s <= TTL_S + 1.5, f"the news came {news_s:.2f} s after the kill"


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dtr-leader-watch")]


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_clients_closed_while_their_watch_is_in_a_call_leave_no_thread_or_socket(
    cluster: LocalCluster,
) -> None:
    warm = CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id="warm")
    _register_dataset(warm)
    wait_until(lambda: _watch_of(warm).watching is not None, 10, "the warm-up watch in a call")
    warm.close()
    wait_until(lambda: not _watch_threads(), 5, "the warm-up watch ended")
    threads, fds = threading.active_count(), _fds()
    for _round in range(3):
        clients = [
            CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id=f"leak-{i}")
            for i in range(15)
        ]
        for client in clients:
            client.call(
                "ClusterStatus", pb.ClusterStatusRequest, operation="status", mutating=False
            )
        wait_until(
            lambda cs=clients: all(_watch_of(c).watching is not None for c in cs),
            10,
            "every watch in a call",
        )
        started = time.monotonic()
        for client in clients:
            client.close()
        close_s = time.monotonic() - started
        assert close_s < 5.0, f"closing 15 clients took {close_s:.2f} s"
        wait_until(lambda: not _watch_threads(), 5, "every watch thread ended")
    wait_until(lambda: threading.active_count() <= threads, 5, "no thread left over")
    wait_until(lambda: _fds() <= fds + 4, 5, f"no socket left over ({fds} fds before)")

    # A client nobody closed: its watch must not keep it (or itself) alive.
    forgotten = CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id="forgotten")
    forgotten.call("ClusterStatus", pb.ClusterStatusRequest, operation="status", mutating=False)
    its_watch = _watch_of(forgotten)  # holds its client only weakly
    wait_until(lambda: its_watch.watching is not None, 10, "its watch in a call")
    gone = weakref.ref(forgotten)
    del forgotten
    gc.collect()
    assert gone() is None, "the watch keeps an unclosed client alive"
    wait_until(
        lambda: not _watch_threads(), WATCH_WAIT_S + WATCH_GRACE_S + 2, "its watch thread ended"
    )


def test_a_zombie_leaders_late_answer_does_not_pull_the_client_back(
    cluster: LocalCluster,
) -> None:
    """Stale news: the frozen leader answers, after the news of its successor, a read sent to it."""
    client = CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id="zombie-reader")
    old = cluster.leader()
    answered: list[tuple[str, pb.ResponseHeader]] = []
    client.answer_listeners.append(lambda m, a, h, w: answered.append((a, h)))
    outcome: list[object] = []
    try:
        _register_dataset(client)
        assert client.leader_address == old.address
        watch = _watch_of(client)
        wait_until(lambda: watch.watching not in (None, old.address), 10, "a follower's watch")
        old.pause()

        def late_read() -> None:
            try:
                outcome.append(
                    client.call(
                        "GetLatestCheckpoint",
                        pb.GetLatestCheckpointRequest,
                        operation="latest",
                        mutating=False,
                        attempt_timeout_s=30.0,
                    )
                )
            except BaseException as err:  # reported below
                outcome.append(err)

        reader = threading.Thread(target=late_read, daemon=True)
        reader.start()  # aimed at the frozen leader: held there
        new = cluster.wait_new_leader(old, timeout_s=TTL_S + 10)
        wait_until(lambda: client.leader_address == new.address, 5, "the news of the new leader")
        term = client.term
        old.resume()
        reader.join(timeout=35.0)
        assert outcome, "the read held by the zombie never returned"
        assert client.leader_address == new.address, (
            f"the zombie's late answer pulled the client back to {client.leader_address}"
        )
        assert client.term == term
        _register_dataset(client)
        assert answered[-1][0] == new.address
        assert answered[-1][1].is_leader
    finally:
        if old.is_paused():
            old.resume()
        client.close()


@pytest.fixture
def own_etcd_cluster(fresh_etcd: RunningEtcd) -> Iterator[tuple[LocalCluster, EtcdCluster]]:
    if not isinstance(fresh_etcd, EtcdCluster):
        pytest.skip("pausing etcd needs a process member")
    with LocalCluster.start(replicas=3, etcd=fresh_etcd, job=_job(), lease_ttl_s=TTL_S) as c:
        c.leader()
        yield c, fresh_etcd


def test_a_briefly_paused_etcd_pushes_no_news_and_abandons_no_held_barrier(
    own_etcd_cluster: tuple[LocalCluster, EtcdCluster],
) -> None:
    """DESIGN §5.7: a slow etcd (round trips up to 1 s) costs no leadership, so no news."""
    cluster, etcd_members = own_etcd_cluster
    first = Worker(cluster.coordinators, worker_id="p-1", job=cluster.job)
    second = Worker(cluster.coordinators, worker_id="p-2", job=cluster.job)
    old = cluster.leader()
    released: list[int] = []
    failed: list[BaseException] = []

    def arrive() -> None:
        try:
            released.append(first.barrier("slow", timeout_s=60.0))
        except BaseException as err:
            failed.append(err)

    waiter = threading.Thread(target=arrive, daemon=True)
    try:
        wait_until(lambda: first.generation == second.generation == 2, 10, "one generation")
        client = first._client
        waiter.start()
        wait_until(
            lambda: any(b.arrived == 1 for b in old.cluster_status().open_barriers),
            10,
            "p-1's arrival held on the leader",
        )
        news_before, term_before, drops_before = client._news_count, client.term, client._drops
        drops_before = dict(drops_before)
        etcd_members.pause_member(0)
        time.sleep(1.0)  # the fault itself: etcd silent for one second (not a synchronization)
        etcd_members.resume_member(0)
        # Long enough for a lost lease to show: past the TTL from the pause.
        wait_until(lambda: cluster.leaders() == [old], 10, "the old leader still leading")
        settle = time.monotonic() + TTL_S
        while time.monotonic() < settle and client._news_count == news_before:
            time.sleep(0.05)
        assert cluster.leaders() == [old], "a one-second etcd pause cost the leadership"
        assert client._news_count == news_before and client.term == term_before, (
            f"news pushed though nobody new leads: term {term_before} -> {client.term}"
        )
        assert client._drops == drops_before, f"channels closed on no news: {client._drops}"
        generation = second.barrier("slow", timeout_s=30.0)
        waiter.join(timeout=15.0)
        assert not failed, failed
        assert released == [generation]
    finally:
        etcd_members.resume_member(0)  # SIGCONT: harmless if it runs already
        waiter.join(timeout=30.0)
        second.close()
        first.close()
