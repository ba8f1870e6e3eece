"""Leader changes pushed to clients (issue 18), on real replicas and a real etcd.

Each test starts its own 3-replica cluster (TTL 3 s) for a job of its own on
the session etcd and kills or freezes replicas by their PIDs. The retry
policies here back off slowly on purpose (up to 8 s): a client that slept out
its backoff instead of waking on the news could not meet these bounds.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.etcd import RunningEtcd
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.worker import Worker
from dtr.worker.client import CoordinatorClient
from dtr.worker.leader_watch import LeaderWatch
from helpers import wait_until

pytestmark = pytest.mark.integration

TTL_S = 3
#: Slow on purpose: without the push, one sleep alone could be up to 8 s.
SLOW = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=8.0, deadline_s=60.0)


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(
        replicas=3, etcd=etcd, job=f"news-{uuid.uuid4().hex[:10]}", lease_ttl_s=TTL_S
    ) as started:
        started.leader()
        yield started


def _watch_of(client: CoordinatorClient) -> LeaderWatch:
    watch = client._watch  # the test looks inside: which replica the watch holds a call on
    assert watch is not None
    return watch


def test_a_workers_next_mutating_call_after_a_leader_sigkill_succeeds_within_ttl_plus_1s(
    cluster: LocalCluster,
) -> None:
    with Worker(cluster.coordinators, worker_id="w-kill", job=cluster.job, retry=SLOW) as worker:
        worker.register_dataset("ds", num_shards=8)
        old = cluster.leader()
        assert worker.leader_address == old.address
        killed = time.monotonic()
        old.kill()
        worker.register_dataset("ds", num_shards=8)  # retried until the new leader answers
        seen_s = time.monotonic() - killed
        new = cluster.wait_new_leader(old)
        assert worker.leader_address == new.address
    assert seen_s <= TTL_S + 1.0, f"the worker's call succeeded {seen_s:.2f} s after the kill"


def test_the_watch_moves_on_when_its_replica_dies_and_still_brings_the_news(
    cluster: LocalCluster,
) -> None:
    client = CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id="watcher")
    try:
        client.call(
            "RegisterDataset",
            lambda: pb.RegisterDatasetRequest(name="ds", num_shards=4),
            operation="register",
            mutating=True,
        )
        old = cluster.leader()
        watch = _watch_of(client)
        wait_until(
            lambda: watch.watching not in (None, old.address), 10, "a watch held by a follower"
        )
        held_by = watch.watching
        watched = next(r for r in cluster.replicas if r.address == held_by)
        watched.kill()
        wait_until(lambda: watch.watching not in (None, watched.address), 10, "the watch moved on")
        answers = watch.answers
        killed = time.monotonic()
        old.kill()  # the last follower is now the only one who can tell
        wait_until(lambda: client.leader_address not in (None, old.address), TTL_S + 5, "news")
        news_s = time.monotonic() - killed
        assert watch.answers > answers  # the news came from the watch, not from a call
        survivor = next(r for r in cluster.replicas if r not in (old, watched))
        assert client.leader_address == survivor.address
    finally:
        client.close()
    assert not watch.running
    assert news_s <= TTL_S + 1.0, f"the news came {news_s:.2f} s after the kill"


def test_a_barrier_held_by_a_frozen_leader_is_abandoned_when_a_new_leader_is_announced(
    cluster: LocalCluster,
) -> None:
    """The zombie-leader case: the long poll must not sit on the frozen leader for 12 s."""
    first = Worker(cluster.coordinators, worker_id="w-1", job=cluster.job, retry=SLOW)
    second = Worker(cluster.coordinators, worker_id="w-2", job=cluster.job, retry=SLOW)
    old = cluster.leader()
    released: list[float] = []
    failed: list[BaseException] = []

    def arrive() -> None:
        try:
            first.barrier("sync", timeout_s=60.0)
            released.append(time.monotonic())
        except BaseException as err:  # reported by the main thread
            failed.append(err)

    waiter = threading.Thread(target=arrive, daemon=True)
    try:
        wait_until(lambda: first.generation == 2, 10, "both workers in the generation")
        waiter.start()
        wait_until(
            lambda: any(b.arrived == 1 for b in old.cluster_status().open_barriers),
            10,
            "w-1's arrival held on the leader",
        )
        old.pause()
        new = cluster.wait_new_leader(old, timeout_s=TTL_S + 10)
        elected = time.monotonic()
        second.barrier("sync", timeout_s=30.0)  # released only once w-1 arrived again
        waiter.join(timeout=15.0)
        assert not failed, failed
        assert released, "w-1's barrier did not return"
        assert first.leader_address == new.address
        # Held on the frozen leader, it would have waited out its poll (10 s + 2 s).
        late_s = released[0] - elected
        assert late_s < 2.0, f"w-1 released {late_s:.2f} s after the new leader was seen"
    finally:
        if old.is_paused():
            old.resume()
        waiter.join(timeout=30.0)
        second.close()
        first.close()


def test_dtr_status_watch_shows_a_leader_change_as_it_happens(cluster: LocalCluster) -> None:
    """With a minute between redraws, only the pushed news can show the change this soon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTR_")}
    watch = subprocess.Popen(
        [sys.executable, "-m", "dtr", "status", "--coordinator", cluster.coordinators,
         "--watch", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        assert "REPLICAS (3)" in _read_until(watch, "REPLICAS (3)", 30.0)
        old = cluster.leader()
        killed = time.monotonic()
        old.kill()
        shown = _read_until(watch, "leader changed:", TTL_S + 10.0)
        shown_s = time.monotonic() - killed
        assert "leader changed:" in shown, shown
        new = cluster.wait_new_leader(old)
        assert new.address in shown.split("leader changed:", 1)[1].splitlines()[0]
        watch.send_signal(signal.SIGTERM)
        assert watch.wait(timeout=30) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert shown_s <= TTL_S + 2.0, f"the change was shown {shown_s:.2f} s after the kill"


def _read_until(proc: subprocess.Popen[bytes], text: str, timeout_s: float) -> str:
    """``proc``'s output until it contains ``text`` (or the deadline), read unbuffered."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout_s
    while text.encode() not in seen and (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], remaining)
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            break
        seen += chunk
    return seen.decode(errors="replace")
