"""Barriers across membership changes: the plain ``barrier()`` call terminates (issue 15, item 2).

Real coordinator processes and real ``Worker`` objects (threads of this
process). What is pinned here:

- a member that joins before a barrier is released makes the waiters arrive
  again under the new generation by themselves (``on_change="rearrive"``,
  the default); ``on_change="raise"`` and a pinned ``generation`` show the
  change as ``MembershipChanged`` instead;
- the tutorial's loop, with a worker joining during another's epoch, ends
  for both (it used to hang until ``BarrierTimeout``);
- a worker declared dead while cut off, that comes back as a new incarnation
  and arrives at a barrier the others passed without it, gets
  ``BarrierMissed`` at once, and again on every later call.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.errors import BarrierMissed, MembershipChanged, WorkerSuperseded
from dtr.etcd import RunningEtcd
from dtr.worker import CheckpointManager, Worker
from helpers import ProxiedCluster, proxied_cluster, wait_until

pytestmark = pytest.mark.integration

#: Long enough that a hang shows up as a failed bound, not as a pass.
BARRIER_TIMEOUT_S = 60.0
#: What "promptly" means for an answer that needs no waiting on anyone.
PROMPT_S = 5.0


@pytest.fixture
def single(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(
        replicas=1, etcd=etcd, job=f"br-{uuid.uuid4().hex[:10]}", heartbeat_timeout_s=10.0
    ) as started:
        yield started


def join(cluster: LocalCluster, worker_id: str, **options: object) -> Worker:
    return Worker(cluster.coordinators, worker_id=worker_id, job=cluster.job, **options)  # type: ignore[arg-type]


class Waiter:
    """``worker.barrier(...)`` on its own thread; ``result`` is its return value or error."""

    def __init__(self, call: Callable[[], int]) -> None:
        self.result: int | BaseException | None = None
        self._call = call
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as err:  # judged by the test's thread
            self.result = err

    def get(self, timeout_s: float = BARRIER_TIMEOUT_S + 10) -> int | BaseException | None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the barrier call never returned"
        return self.result


def waiting_at(cluster: LocalCluster, name: str, arrived: int) -> Callable[[], bool]:
    """Whether barrier ``name`` is open with ``arrived`` arrivals (ClusterStatus)."""

    def check() -> bool:
        barriers = {b.name: b for b in cluster.status().open_barriers}
        return name in barriers and barriers[name].arrived == arrived

    return check


# -- arriving again by itself ----------------------------------------------------------


def test_a_waiter_arrives_again_by_itself_when_a_worker_joins_before_release(
    single: LocalCluster,
) -> None:
    with join(single, "w0") as w0, join(single, "w1") as w1:
        wait_until(lambda: w0.generation == w1.generation, 30, "one generation for both")
        before = w0.generation
        waiter = Waiter(lambda: w0.barrier("step-1", timeout_s=BARRIER_TIMEOUT_S))
        wait_until(waiting_at(single, "step-1", 1), 30, "w0 to wait at step-1")
        with join(single, "w2") as w2:  # membership changes before the release
            assert w2.generation > before
            others = [
                Waiter(partial(w.barrier, "step-1", timeout_s=BARRIER_TIMEOUT_S)) for w in (w1, w2)
            ]
            # w0 arrived again by itself: one release, under the new generation, for all.
            assert [waiter.get(), *(o.get() for o in others)] == [w2.generation] * 3


def test_on_change_raise_and_a_pinned_generation_show_the_change(single: LocalCluster) -> None:
    with join(single, "w0") as w0, join(single, "w1") as w1:
        wait_until(lambda: w0.generation == w1.generation, 30, "one generation for both")
        raising = Waiter(lambda: w0.barrier("a", timeout_s=BARRIER_TIMEOUT_S, on_change="raise"))
        wait_until(waiting_at(single, "a", 1), 30, "w0 to wait at a")
        pinned_at = w1.generation
        pinned = Waiter(lambda: w1.barrier("b", timeout_s=BARRIER_TIMEOUT_S, generation=pinned_at))
        wait_until(waiting_at(single, "b", 1), 30, "w1 to wait at b")
        with join(single, "w2"):
            assert isinstance(raising.get(), MembershipChanged)
            assert isinstance(pinned.get(), MembershipChanged)


# -- the tutorial's loop -----------------------------------------------------------------


def tutorial_loop(
    worker: Worker, checkpoints: CheckpointManager, epochs: int, train: Callable[[int], None]
) -> dict[int, int]:
    """docs/tutorial.md's loop without torch: epoch checkpoints, a barrier per epoch.

    Returns {epoch: released generation} for the epoch barriers this worker
    passed. The ``BarrierMissed`` branch is the one documented pattern.
    """
    state, epoch = checkpoints.load_latest(default=({"epochs_done": 0}, 0))
    passed: dict[int, int] = {}
    while epoch < epochs:
        train(epoch)
        state = {"epochs_done": epoch + 1}
        checkpoints.save_async(state, epoch + 1)
        try:
            passed[epoch] = worker.barrier(f"epoch-{epoch}", timeout_s=BARRIER_TIMEOUT_S)
        except BarrierMissed:  # the others finished this epoch without this worker
            newer, latest = checkpoints.load_latest(default=(None, 0))
            if latest > epoch + 1:  # they are further on: continue from their checkpoint
                state, epoch = newer, latest
                continue
        epoch += 1
    assert state["epochs_done"] == epochs
    checkpoints.wait(timeout_s=BARRIER_TIMEOUT_S)
    return passed


def test_the_tutorial_loop_ends_for_both_when_a_worker_joins_during_an_epoch(
    single: LocalCluster, tmp_path: Path
) -> None:
    """Issue 15: w1 joined during w0's epoch 1; both hung at different barriers until timeout."""
    uri = f"file://{tmp_path}/ckpt"
    in_epoch_1, w1_joined = threading.Event(), threading.Event()
    results: dict[str, dict[int, int] | BaseException] = {}

    def w0_trains(epoch: int) -> None:
        if epoch == 1:  # w1 joins now, before w0 reaches the end of epoch 1
            in_epoch_1.set()
            assert w1_joined.wait(30), "w1 never joined"

    def run(worker: Worker, train: Callable[[int], None]) -> None:
        try:
            with CheckpointManager(
                worker, uri, queue_path=tmp_path / f"{worker.worker_id}.sqlite"
            ) as checkpoints:
                results[worker.worker_id] = tutorial_loop(worker, checkpoints, 3, train)
        except BaseException as err:  # judged below
            results[worker.worker_id] = err

    # A slow beat keeps w0 believing the old generation when it arrives at
    # epoch-1: the path that used to raise MembershipChanged there.
    with join(single, "w0", heartbeat_interval_s=3.0) as w0:
        started = time.monotonic()
        threads = [threading.Thread(target=run, args=(w0, w0_trains), daemon=True)]
        threads[0].start()
        assert in_epoch_1.wait(30), "w0 never reached epoch 1"
        with join(single, "w1") as w1:
            joined_generation = w1.generation
            w1_joined.set()
            threads.append(threading.Thread(target=run, args=(w1, lambda e: None), daemon=True))
            threads[1].start()
            for thread in threads:
                thread.join(BARRIER_TIMEOUT_S + 30)
            elapsed = time.monotonic() - started
            assert not any(t.is_alive() for t in threads), "a worker never finished"
    assert isinstance(results["w0"], dict), results
    assert isinstance(results["w1"], dict), results
    assert sorted(results["w0"]) == [0, 1, 2]
    assert {1, 2} <= set(results["w1"])  # epoch-0 may have been released without w1
    for epoch in (1, 2):  # one release per barrier, under the generation w1 joined
        assert results["w0"][epoch] == results["w1"][epoch] == joined_generation
    assert elapsed < BARRIER_TIMEOUT_S / 2, f"took {elapsed:.1f} s: a worker waited in vain"


# -- a rejoined worker and a barrier released without it ---------------------------------

HEARTBEAT_TIMEOUT_S = 3.0


@pytest.fixture
def proxied(etcd: RunningEtcd) -> Iterator[ProxiedCluster]:
    with proxied_cluster(etcd, 1, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S) as started:
        yield started


def test_a_rejoined_worker_gets_barrier_missed_at_once_and_on_every_call(
    proxied: ProxiedCluster,
) -> None:
    cluster = proxied.cluster
    options = {"job": cluster.job, "heartbeat_interval_s": 0.2}
    with (
        Worker(cluster.coordinators, worker_id="cut", **options) as cut,  # type: ignore[arg-type]
        Worker(",".join(cluster.endpoints), worker_id="kept", **options) as kept,  # type: ignore[arg-type]
    ):
        wait_until(lambda: cut.generation == kept.generation, 30, "one generation for both")
        together = Waiter(lambda: cut.barrier("step-4", timeout_s=BARRIER_TIMEOUT_S))
        assert kept.barrier("step-4", timeout_s=BARRIER_TIMEOUT_S) == together.get()

        for proxy in proxied.proxies:
            proxy.blackhole()
        # kept waits at step-5 until the leader declares cut dead, then arrives
        # again under the new generation by itself and passes alone.
        passed_at = kept.barrier("step-5", timeout_s=BARRIER_TIMEOUT_S)
        assert passed_at > cut.generation
        first_incarnation = cut.incarnation
        for proxy in proxied.proxies:
            proxy.heal()
        wait_until(lambda: cut.incarnation > first_incarnation, 30, "cut to rejoin")

        for attempt in range(2):  # final: the same answer every time, never a loop
            started = time.monotonic()
            with pytest.raises(BarrierMissed, match=r"'step-5' was released without this worker"):
                cut.barrier("step-5", timeout_s=BARRIER_TIMEOUT_S)
            assert time.monotonic() - started < PROMPT_S, f"call {attempt} was not prompt"
        # The loop goes on: both meet at the next barrier.
        next_one = Waiter(lambda: cut.barrier("step-6", timeout_s=BARRIER_TIMEOUT_S))
        assert kept.barrier("step-6", timeout_s=BARRIER_TIMEOUT_S) == next_one.get()


def test_a_twin_taking_the_id_makes_the_old_process_stop_at_its_next_barrier(
    single: LocalCluster,
) -> None:
    old = join(single, "w")
    try:
        with join(single, "w") as twin:  # a second process under the same id
            assert twin.incarnation == old.incarnation + 1
            started = time.monotonic()
            with pytest.raises(WorkerSuperseded):
                old.barrier("b", timeout_s=20)
            assert time.monotonic() - started < 10  # told, not left to its timeout
    finally:
        old.close()
