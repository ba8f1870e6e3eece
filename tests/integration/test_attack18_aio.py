"""Attack (issue 18 item 4): ``dtr.worker.aio.AsyncWorker`` where its parts meet.

Real etcd, real ``dtr coordinator`` processes (``LocalCluster``); the workers
are ``AsyncWorker`` objects on this process's event loop, a second client
standing for a second process where a test needs one. Every verdict is read
back from the coordinators (``ClusterStatus``) or from etcd (``EtcdStore``),
not taken from the workers' word:

- bad input: every argument refused as ``InvalidArgument`` before a request
  goes out (a client that counts its attempts proves "before");
- a beat that cannot be built (an accepted but unsendable progress report);
- the shared client closed while calls are in flight;
- a ``start()`` that never completed (cancelled mid-RPC), then a process of
  the same id: the leftover object must not arrive or deregister for it;
- a worker restarted under its id while the first waits in a barrier: the
  old one stops and its arrival never counts for the new incarnation;
- many tasks of one forgotten worker meeting UNKNOWN_WORKER together;
- ``close()`` racing a rejoin that is in flight on a slow etcd;
- a rack stalled past the heartbeat timeout, three times: one rejoin each;
- a slow etcd under 120 beating workers at a barrier;
- the leader SIGSTOPped or SIGKILLed during ``start()`` of 200 workers;
- a barrier and a commit cancelled mid-RPC, then everyone closed together.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.coordinator.state import MemberRecord
from dtr.errors import (
    BarrierTimeout,
    DtrError,
    InvalidArgument,
    WorkerSuperseded,
)
from dtr.etcd import RunningEtcd
from dtr.keys import JobKeys
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.store import EtcdStore
from dtr.worker.aio import AsyncCoordinatorClient, AsyncWorker, gather_workers
from dtr.worker.commit_queue import CommitRecord
from helpers import cluster_dialing_etcd_through_proxies, wait_until

pytestmark = pytest.mark.integration

HEARTBEAT_TIMEOUT_S = 3.0


def _job(tag: str) -> str:
    return f"a18aio-{tag}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def cluster_of(etcd: RunningEtcd, tag: str, **options: Any) -> Iterator[LocalCluster]:
    options.setdefault("replicas", 3)
    options.setdefault("heartbeat_timeout_s", HEARTBEAT_TIMEOUT_S)
    with LocalCluster.start(etcd=etcd, job=_job(tag), **options) as started:
        yield started


@pytest.fixture
def store(etcd: RunningEtcd) -> Iterator[EtcdStore]:
    with EtcdStore(etcd.endpoints, timeout_s=5.0) as opened:
        yield opened


class CountingClient(AsyncCoordinatorClient):
    """The real client; it also counts the attempts it sends, by method."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []
        self.started: dict[str, asyncio.Event] = {}

    def watch(self, method: str) -> asyncio.Event:
        self.started[method] = asyncio.Event()
        return self.started[method]

    async def _attempt(self, call: Any) -> Any:
        try:
            call.build()  # a request that cannot be built never leaves
        except Exception:
            pass
        else:
            self.sent.append(call.method)
        event = self.started.get(call.method)
        if event is not None:
            event.set()
        return await super()._attempt(call)

    def sent_besides_beats(self) -> list[str]:
        return [m for m in self.sent if m != "Heartbeat"]


def client_of(cluster: LocalCluster, **options: Any) -> CountingClient:
    options.setdefault("policy", RetryPolicy(deadline_s=30.0))
    return CountingClient(cluster.coordinators, job=cluster.job, **options)


async def until(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def workers_of(cluster: LocalCluster) -> dict[str, pb.WorkerInfo]:
    return {w.id: w for w in cluster.status().workers}


def live_of(cluster: LocalCluster) -> dict[str, int]:
    return {w.id: w.incarnation for w in cluster.status().workers if w.alive}


def members_in_etcd(store: EtcdStore, job: str) -> dict[str, MemberRecord]:
    found = store.get_prefix(JobKeys(job).members_prefix).kvs
    return {r.worker_id: r for r in (MemberRecord.decode(kv.value) for kv in found)}


async def deregister_behind_its_back(client: AsyncCoordinatorClient, worker_id: str) -> None:
    await client.call(
        "Deregister",
        lambda: pb.DeregisterRequest(worker_id=worker_id),
        caller="attacker",
        operation=f"deregister {worker_id} behind its back",
        mutating=True,
    )


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


# -- bad input ------------------------------------------------------------------------


def _record(worker: AsyncWorker, **changes: Any) -> CommitRecord:
    fields: dict[str, Any] = {
        "job": worker.job,
        "step": 10,
        "worker_id": worker.worker_id,
        "generation": worker.generation,
        "uri": "file:///tmp/nowhere/part-0",
        "size_bytes": 1,
        "checksum_algorithm": "sha256",
        "checksum_hex": "00" * 32,
        "format_version": 1,
        "job_life": worker.job_life,
        "incarnation": worker.incarnation,
    }
    fields.update(changes)
    return CommitRecord(**fields)


def test_every_bad_argument_is_refused_as_invalid_argument_before_anything_is_sent(
    etcd: RunningEtcd,
) -> None:
    """DESIGN §8 and ``arguments.py``: "Every value a caller passes is checked here before
    anything is sent ... refused as InvalidArgument naming its field". Each case runs on
    a started worker; the counting client proves nothing but beats left it."""

    async def scenario(cluster: LocalCluster) -> list[str]:
        client = client_of(cluster)
        wrong: list[str] = []
        worker = AsyncWorker(client, worker_id="bad-input", heartbeat_interval_s=0.2)
        await worker.start()
        try:
            cases: list[tuple[str, Callable[[], Any]]] = [
                # the coordinator refuses capacity > 1e6 (validation.MAX_CAPACITY)
                ("AsyncWorker(capacity=2e6)", lambda: AsyncWorker(client, capacity=2e6)),
                ("report_progress(2**64)", lambda: worker.report_progress(2**64)),
                (
                    "report_progress(1, samples_per_s='fast')",
                    lambda: worker.report_progress(1, "fast"),  # type: ignore[arg-type]
                ),
                ("latest_checkpoint(before_step=-1)", lambda: worker.latest_checkpoint(-1)),
                (
                    "latest_checkpoint(before_step='7')",
                    lambda: worker.latest_checkpoint("7"),  # type: ignore[arg-type]
                ),
                (
                    "commit_checkpoint('not a record')",
                    lambda: worker.commit_checkpoint("not a record"),  # type: ignore[arg-type]
                ),
                (
                    "commit_checkpoint(step=-1)",
                    lambda: worker.commit_checkpoint(_record(worker, step=-1)),
                ),
                (
                    "commit_checkpoint(deadline_s=-1)",
                    lambda: worker.commit_checkpoint(_record(worker), deadline_s=-1.0),
                ),
            ]
            for label, attempt in cases:
                before = len(client.sent_besides_beats())
                outcome: str
                try:
                    result = attempt()
                    if asyncio.iscoroutine(result):
                        result = await result
                    outcome = f"accepted (returned {result!r})"
                except InvalidArgument:
                    outcome = "ok"
                except Exception as err:
                    outcome = f"raised {type(err).__name__}: {err}"
                sent = client.sent_besides_beats()[before:]
                if outcome != "ok" or sent:
                    wrong.append(f"{label}: {outcome}; sent {sent}")
            return wrong
        finally:
            # a report_progress(2**64) that was accepted kills the beat task; close() then
            # re-raises its ValueError: suppress it here, the case above already says it
            with contextlib.suppress(Exception):
                await worker.close()
            await client.close()

    with cluster_of(etcd, "bad", replicas=1) as cluster:
        wrong = asyncio.run(scenario(cluster))
    assert not wrong, "refused wrongly or after sending:\n" + "\n".join(wrong)


def test_a_progress_report_the_wire_cannot_carry_never_silently_kills_the_worker(
    etcd: RunningEtcd,
) -> None:
    """``report_progress`` "never blocks" and says nothing went wrong; if it accepts a
    step, the beats must keep carrying the worker: alive in the leader's record past
    twice the heartbeat timeout, and ``close()`` deregisters it without raising."""

    async def scenario(cluster: LocalCluster) -> tuple[bool, bool, str]:
        client = client_of(cluster)
        worker = AsyncWorker(client, worker_id="progress", heartbeat_interval_s=0.2)
        await worker.start()
        try:
            with contextlib.suppress(InvalidArgument):
                worker.report_progress(2**64)  # a uint64 field holds < 2**64
            acks = worker.acks
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2 * HEARTBEAT_TIMEOUT_S + 1
            # Either beats keep being answered, or the leader declares the worker dead.
            while loop.time() < deadline and workers_of(cluster)["progress"].alive:
                await asyncio.sleep(0.1)
            alive = workers_of(cluster)["progress"].alive
            beats_answered = worker.acks > acks
            close_error = ""
            try:
                await worker.close()
            except Exception as err:
                close_error = f"{type(err).__name__}: {err}"
            return alive, beats_answered, close_error
        finally:
            with contextlib.suppress(Exception):
                await worker.close()
            await client.close()

    with cluster_of(etcd, "progress", replicas=1) as cluster:
        alive, beats_answered, close_error = asyncio.run(scenario(cluster))
        left = workers_of(cluster)
    assert alive and beats_answered, (
        f"the worker's beats stopped after report_progress(2**64) (answered after: "
        f"{beats_answered}) and the leader declared it dead, while the worker says nothing"
    )
    assert not close_error, f"close() raised (it must log, not raise): {close_error}"
    assert "progress" not in left, f"close() did not deregister: {left}"


# -- the shared client ----------------------------------------------------------------


def test_closing_the_shared_client_with_calls_in_flight(etcd: RunningEtcd) -> None:
    """A barrier waiting when the owner closes the shared client must end with a
    ``dtr.errors`` error (the client's contract: "dtr.errors types only"), not a
    ``CancelledError`` in a task nobody cancelled; afterwards calls must be refused
    (as ``CoordinatorClient`` refuses them: InvalidArgument) rather than dial again,
    and the workers' beats must stop going out on a channel nobody will close."""

    async def scenario(cluster: LocalCluster) -> list[str]:
        client = client_of(cluster)
        a = AsyncWorker(client, worker_id="a", heartbeat_interval_s=0.2)
        b = AsyncWorker(client, worker_id="b", heartbeat_interval_s=0.2)
        wrong: list[str] = []
        await gather_workers([a, b])
        try:
            waiting = asyncio.create_task(a.barrier("never", timeout_s=30))
            leader = cluster.leader()
            await until(
                lambda: any(
                    x.name == "never" and x.arrived == 1
                    for x in leader.cluster_status().open_barriers
                ),
                10,
                "a's arrival held by the leader",
            )
            await client.close()
            try:
                await asyncio.wait_for(waiting, 20)
                wrong.append("the barrier returned after the client was closed")
            except DtrError:
                pass
            except asyncio.CancelledError:
                wrong.append("barrier() raised CancelledError in a task nobody cancelled")
            except TimeoutError:
                wrong.append("barrier() still waiting 20 s after the client was closed")
            sent = len(client.sent)
            try:
                await b.get_shards("tokens")
                wrong.append("a call after client.close() was answered")
            except InvalidArgument:
                pass
            except DtrError as err:
                wrong.append(f"a call after client.close() went out: {type(err).__name__}")
            # b's beat task sleeps through its interval; its next beat must not be answered.
            # Two attempts later the first one's outcome is known (or the beat task ended).
            acks, sent = b.acks, len(client.sent)
            beats = b._beats
            await until(
                lambda: len(client.sent) >= sent + 2 or beats is None or beats.done(),
                10,
                "b's next two beat attempts (or its beat task ending)",
            )
            if client._channels:
                wrong.append(f"channels dialled after close(): {sorted(client._channels)}")
            if b.acks > acks:
                wrong.append("b's beats are still answered after client.close()")
        finally:
            for worker in (a, b):
                with contextlib.suppress(Exception):
                    await worker.close()
            with contextlib.suppress(Exception):
                await client.close()
        return wrong

    with cluster_of(etcd, "close", replicas=1) as cluster:
        wrong = asyncio.run(scenario(cluster))
    assert not wrong, "\n".join(wrong)


# -- a start that never completed ---------------------------------------------------


def test_a_cancelled_start_neither_arrives_nor_deregisters_for_the_process_that_took_its_id(
    etcd: RunningEtcd,
) -> None:
    """``asyncio.wait_for(worker.start(), ...)`` gives up mid-RPC; meanwhile the id's next
    process registers. The object whose start never completed holds no incarnation: its
    barrier arrival must not count for the new process (DESIGN §5.2: an arrival never
    counts for another incarnation), and its ``close()`` must not remove the new
    process's record (the wire's incarnation 0 means "whichever is current")."""

    async def scenario(cluster: LocalCluster) -> tuple[list[str], int]:
        client_a = client_of(cluster)  # the process whose start gave up
        client_b = client_of(cluster)  # the id's next process, and a peer
        leftover = AsyncWorker(client_a, worker_id="w", heartbeat_interval_s=0.2)
        sent = client_a.watch("RegisterWorker")
        starting = asyncio.create_task(leftover.start())
        await sent.wait()
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        new = AsyncWorker(client_b, worker_id="w", heartbeat_interval_s=0.2)
        peer = AsyncWorker(client_b, worker_id="peer", heartbeat_interval_s=0.2)
        wrong: list[str] = []
        try:
            await gather_workers([new, peer])
            await until(
                lambda: live_of(cluster) == {"w": new.incarnation, "peer": peer.incarnation},
                10,
                "the new process and its peer as the live members",
            )
            # The leftover arrives (as the wire's incarnation 0); only the peer arrives
            # otherwise: the new process of w never does, so nothing may release.
            results = await asyncio.gather(
                leftover.barrier("meet", timeout_s=4),
                peer.barrier("meet", timeout_s=4),
                return_exceptions=True,
            )
            if not isinstance(results[0], DtrError):
                wrong.append(f"the leftover's barrier() returned {results[0]!r}")
            if not isinstance(results[1], BarrierTimeout):
                wrong.append(
                    f"barrier 'meet' released ({results[1]!r}) though w's live incarnation "
                    f"{new.incarnation} never arrived: the leftover's arrival counted for it"
                )
            await leftover.close()
            live = live_of(cluster)
            if live.get("w") != new.incarnation:
                wrong.append(
                    f"the leftover's close() removed the new process's record: live {live}"
                )
            return wrong, new.incarnation
        finally:
            for worker in (leftover, new, peer):
                with contextlib.suppress(Exception):
                    await worker.close()
            await client_a.close()
            await client_b.close()

    with cluster_of(etcd, "cancelled-start", replicas=1) as cluster:
        wrong, _ = asyncio.run(scenario(cluster))
    assert not wrong, "\n".join(wrong)


# -- a restart under the same id ------------------------------------------------------


def test_a_restart_under_its_id_while_the_old_one_waits_in_a_barrier(etcd: RunningEtcd) -> None:
    """The old process waits in a barrier; the id's new process registers. The old one's
    barrier must end in ``WorkerSuperseded`` (not arrive again as the old incarnation),
    its arrival must not count for the new incarnation (the peer alone times out), the
    new one and the peer then meet, and the old one's close leaves the new record."""

    async def scenario(cluster: LocalCluster) -> list[str]:
        client_old, client_new = client_of(cluster), client_of(cluster)
        old = AsyncWorker(client_old, worker_id="w", heartbeat_interval_s=0.2)
        new = AsyncWorker(client_new, worker_id="w", heartbeat_interval_s=0.2)
        peer = AsyncWorker(client_new, worker_id="peer", heartbeat_interval_s=0.2)
        wrong: list[str] = []
        try:
            await gather_workers([old, peer])
            waiting = asyncio.create_task(old.barrier("b", timeout_s=30))
            leader = cluster.leader()
            await until(
                lambda: any(
                    x.name == "b" and x.arrived == 1 for x in leader.cluster_status().open_barriers
                ),
                10,
                "the old incarnation's arrival held",
            )
            await new.start()
            try:
                result = await asyncio.wait_for(waiting, 15)
                wrong.append(f"the old process's barrier returned {result}")
            except WorkerSuperseded:
                pass
            except (DtrError, TimeoutError) as err:
                wrong.append(f"the old process's barrier raised {type(err).__name__}: {err}")
            if new.incarnation != old.incarnation + 1:
                wrong.append(f"incarnations: old {old.incarnation}, new {new.incarnation}")
            try:
                released = await peer.barrier("b", timeout_s=3)
                wrong.append(f"the peer alone was released at generation {released}")
            except BarrierTimeout:
                pass
            met = await asyncio.gather(
                new.barrier("b", timeout_s=20), peer.barrier("b", timeout_s=20)
            )
            if len(set(met)) != 1 or met[0] != cluster.status().generation:
                wrong.append(f"new+peer released at {met}, job at {cluster.status().generation}")
            await old.close()
            live = live_of(cluster)
            if live != {"w": new.incarnation, "peer": peer.incarnation}:
                wrong.append(f"after the old one's close: live {live}")
            return wrong
        finally:
            for worker in (old, new, peer):
                with contextlib.suppress(Exception):
                    await worker.close()
            await client_old.close()
            await client_new.close()

    with cluster_of(etcd, "twin", replicas=1) as cluster:
        wrong = asyncio.run(scenario(cluster))
    assert not wrong, "\n".join(wrong)


# -- many tasks of one worker meeting "unknown" at once --------------------------------------


def test_many_tasks_of_one_forgotten_worker_rejoin_it_once(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """The leader forgot the worker; 20 ``get_shards`` tasks of it and its beat task all
    meet UNKNOWN_WORKER together. Exactly one registration may follow: the generation
    moves by two (the removal, one registration), and the worker's incarnation is the
    one etcd holds."""

    async def scenario(cluster: LocalCluster) -> tuple[int, int, int, list[Any]]:
        client = client_of(cluster)
        worker = AsyncWorker(client, worker_id="w", heartbeat_interval_s=0.2)
        try:
            await worker.start()
            await worker.register_dataset("d", 64)
            await worker.get_shards("d")
            before = cluster.status().generation
            await deregister_behind_its_back(client, "w")
            results = await asyncio.gather(
                *(worker.get_shards("d") for _ in range(20)), return_exceptions=True
            )
            await until(lambda: "w" in live_of(cluster), 10, "w live again")
            # Beats answered after the rejoin: the beat task had its say too.
            acks = worker.acks
            await until(lambda: worker.acks >= acks + 2, 10, "two more beats answered")
            odd = [r for r in results if not isinstance(r, list)]
            return before, cluster.status().generation, worker.incarnation, odd
        finally:
            await worker.close()
            await client.close()

    with cluster_of(etcd, "many-tasks", replicas=1) as cluster:
        before, after, incarnation, odd = asyncio.run(scenario(cluster))
        in_etcd = members_in_etcd(store, cluster.job)
    assert not odd, f"get_shards failed: {odd[:3]}"
    assert after == before + 2, (
        f"generation {before} -> {after}: more than one registration (the worker ends as "
        f"incarnation {incarnation})"
    )
    assert "w" not in in_etcd, f"closed, yet etcd holds {in_etcd.get('w')}"
    assert incarnation == 1, f"one registration after removal is incarnation 1, got {incarnation}"


# -- close() racing a rejoin --------------------------------------------------------------


def test_close_while_a_rejoin_is_in_flight_leaves_no_live_record(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """The leader forgot the worker; its beat task registers it again, slowly (etcd
    round trips of about 0.6 s, within DESIGN §5.7's "merely slow"). ``close()`` is
    called while that registration is at the leader. The threaded ``Worker`` joins its
    beat thread, so it deregisters the incarnation the rejoin made; whatever the asyncio
    worker does, once ``close()`` returned no live record of it may stay in etcd, alive
    with nobody beating for it (the job would wait a heartbeat timeout on a ghost)."""

    async def scenario(cluster: LocalCluster, delay: Callable[[float], None]) -> int:
        client = client_of(cluster)
        worker = AsyncWorker(client, worker_id="w", heartbeat_interval_s=0.2)
        try:
            # An earlier process of the id registered once, so this one is incarnation 2
            # and its rejoin (after the record is removed, ids start again at 1) is not.
            await client.call(
                "RegisterWorker",
                lambda: pb.RegisterWorkerRequest(worker_id="w", capacity=1.0),
                caller="earlier-process",
                operation="register an earlier process of w",
                mutating=True,
            )
            await worker.start()
            first = worker.incarnation
            delay(0.3)
            registering = client.watch("RegisterWorker")
            await deregister_behind_its_back(client, "w")
            await asyncio.wait_for(registering.wait(), 10)  # the beat task's rejoin
            # A call sent after it on the same channel is answered after the leader got it.
            await client.call(
                "ClusterStatus",
                pb.ClusterStatusRequest,
                caller="probe",
                operation="probe",
                mutating=False,
            )
            await worker.close()
            return first
        finally:
            with contextlib.suppress(Exception):
                await worker.close()
            await client.close()

    tag = _job("rejoin-close")
    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=1, job=tag, heartbeat_timeout_s=30.0
    ) as (cluster, proxies):

        def delay(seconds: float) -> None:
            for proxy in proxies:
                proxy.delay(seconds)

        first = asyncio.run(scenario(cluster, delay))
        for proxy in proxies:
            proxy.heal()
        left = members_in_etcd(store, cluster.job)
        live = live_of(cluster)
    ghost = left.get("w")
    assert ghost is None or not ghost.alive, (
        f"close() returned but etcd holds w alive as incarnation {ghost.incarnation} "
        f"(it had incarnation {first}; live per the leader: {live})"
    )


# -- a rack failing at once -----------------------------------------------------------------


def test_a_rack_stalled_past_the_timeout_rejoins_once_each_and_meets(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """100 workers of one process, all but one waiting in a barrier; the process stalls
    (its loop blocked) until the leader has declared every one dead, then resumes; three times.
    Beats, barrier polls and re-arrivals of each worker race to rejoin: each must rejoin
    exactly once per stall (incarnation 2, 3, 4 in etcd and in the worker), none may
    take itself for superseded (there is no other process), every barrier releases once
    for everyone at the settled generation, and closing them all together leaves no
    record and no task behind."""
    count, stalls = 100, 3

    async def stall_and_meet(
        cluster: LocalCluster, workers: list[AsyncWorker], name: str, incarnation: int
    ) -> list[str]:
        waiting = [asyncio.create_task(w.barrier(name, timeout_s=60)) for w in workers[1:]]
        leader = cluster.leader()
        await until(
            lambda: any(
                b.name == name and b.arrived == count - 1
                for b in leader.cluster_status().open_barriers
            ),
            20,
            f"every arrival at {name} but one held",
        )
        # The stall: nothing of this process runs until the leader declared all dead.
        wait_until(
            lambda: not any(w.alive for w in cluster.status().workers),
            HEARTBEAT_TIMEOUT_S + 15,
            "every worker of the stalled process declared dead",
        )
        await until(
            lambda: all(w.incarnation == incarnation or w.superseded for w in workers),
            30,
            f"every worker registered again as incarnation {incarnation}",
        )
        released = await asyncio.gather(
            workers[0].barrier(name, timeout_s=60), *waiting, return_exceptions=True
        )
        wrong: list[str] = []
        superseded = [w.worker_id for w in workers if w.superseded]
        if superseded:
            wrong.append(f"{name}: took themselves for superseded: {superseded}")
        generation = cluster.status().generation
        bad = [r for r in released if not isinstance(r, int) or r != generation]
        if bad:
            wrong.append(f"{name}: outcomes other than generation {generation}: {bad[:4]}")
        in_etcd = members_in_etcd(store, cluster.job)
        other = {
            w.worker_id: (w.incarnation, in_etcd[w.worker_id].incarnation)
            for w in workers
            if (w.incarnation, in_etcd[w.worker_id].incarnation) != (incarnation,) * 2
        }
        if other:
            wrong.append(f"{name}: (worker, etcd) incarnations not {incarnation}: {other}")
        return wrong

    async def scenario(cluster: LocalCluster) -> list[str]:
        client = client_of(cluster)
        workers = [AsyncWorker(client, worker_id=f"r{i:02d}") for i in range(count)]
        wrong: list[str] = []
        try:
            await gather_workers(workers)
            for stall in range(stalls):
                wrong += await stall_and_meet(cluster, workers, f"rack-{stall}", 2 + stall)
                if wrong:
                    break
            await asyncio.gather(*(w.close() for w in workers))
            if other_tasks():
                names = sorted(t.get_name() for t in other_tasks())
                wrong.append(f"tasks left after close: {names}")
            return wrong
        finally:
            await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
            await client.close()

    with cluster_of(etcd, "rack", replicas=3) as cluster:
        wrong = asyncio.run(scenario(cluster))
        left = members_in_etcd(store, cluster.job)
    assert not wrong, "\n".join(wrong)
    assert left == {}, f"records left after closing everyone: {sorted(left)}"


# -- a slow etcd ---------------------------------------------------------------------------


def test_a_slow_etcd_under_120_beating_workers_meeting_at_a_barrier(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """etcd round trips of about 0.5 s (within DESIGN §5.7's "merely slow") while 120
    workers beat and all meet at a barrier: the leader keeps its term, nobody is declared
    dead or rejoins (incarnation 1 in etcd), the generation does not move, and every
    worker is released once at that generation."""
    count = 120

    async def scenario(cluster: LocalCluster, delay: Callable[[float], None]) -> list[str]:
        client = client_of(cluster)
        workers = [AsyncWorker(client, worker_id=f"s{i:03d}") for i in range(count)]
        wrong: list[str] = []
        try:
            await gather_workers(workers)
            await until(lambda: all(w.acks >= 1 for w in workers), 20, "a beat answered each")
            before = cluster.status()
            delay(0.25)
            released = await asyncio.gather(
                *(w.barrier("slow", timeout_s=60) for w in workers), return_exceptions=True
            )
            first = min(w.last_ack_at for w in workers)
            # Beats answered for more than a heartbeat timeout into the slow etcd.
            await until(
                lambda: all(w.last_ack_at > first + HEARTBEAT_TIMEOUT_S for w in workers),
                30,
                "beats answered past one heartbeat timeout",
            )
            after = cluster.status()
            if after.leader.term != before.leader.term:
                wrong.append(f"leadership moved: term {before.leader.term} -> {after.leader.term}")
            if after.generation != before.generation:
                wrong.append(f"generation moved: {before.generation} -> {after.generation}")
            bad = [r for r in released if r != before.generation]
            if bad:
                wrong.append(f"barrier outcomes other than {before.generation}: {bad[:4]}")
            in_etcd = members_in_etcd(store, cluster.job)
            moved = {k: (r.alive, r.incarnation) for k, r in in_etcd.items() if r.incarnation != 1}
            dead = [k for k, r in in_etcd.items() if not r.alive]
            if moved or dead or len(in_etcd) != count:
                wrong.append(f"{len(in_etcd)} records; rejoined {moved}; dead {dead}")
            return wrong
        finally:
            delay(0.0)
            await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
            await client.close()

    with cluster_dialing_etcd_through_proxies(
        etcd, replicas=3, job=_job("slow"), heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S
    ) as (cluster, proxies):

        def delay(seconds: float) -> None:
            for proxy in proxies:
                if seconds:
                    proxy.delay(seconds)
                else:
                    proxy.heal()

        wrong = asyncio.run(scenario(cluster, delay))
    assert not wrong, "\n".join(wrong)


# -- the leader lost during start() of 200 ---------------------------------------------------


@pytest.mark.parametrize("fault", ["sigstop", "sigkill"])
def test_the_leader_lost_while_200_workers_start(
    etcd: RunningEtcd, store: EtcdStore, fault: str
) -> None:
    """200 ``start()`` calls in flight through the shared client (its one leader cache
    meeting the NOT_LEADER answers and failures of all of them); once some are written,
    the leader is SIGSTOPped (and continued after a successor leads) or SIGKILLed. Every
    start must complete, each worker holding exactly the incarnation etcd holds for it
    (a registration written twice is fine, a worker believing an older one is not), all
    alive, none superseded, and the generation must settle: after beats answered past a
    heartbeat timeout nothing has moved."""
    count = 200

    async def scenario(cluster: LocalCluster) -> list[str]:
        client = client_of(cluster)
        workers = [AsyncWorker(client, worker_id=f"l{i:03d}") for i in range(count)]
        wrong: list[str] = []
        try:
            old = cluster.leader()
            starting = asyncio.create_task(gather_workers(workers))
            await until(
                lambda: starting.done() or len(cluster.status().workers) >= 20,
                20,
                "the first registrations written",
            )
            assert not starting.done(), "every start() completed before the fault"
            if fault == "sigstop":
                old.pause()
                await asyncio.to_thread(cluster.wait_new_leader, old, 30)
                old.resume()
            else:
                old.kill()
            await asyncio.wait_for(starting, 60)
            in_etcd = members_in_etcd(store, cluster.job)
            mismatched = {
                w.worker_id: (w.incarnation, getattr(in_etcd.get(w.worker_id), "incarnation", 0))
                for w in workers
                if w.worker_id not in in_etcd or in_etcd[w.worker_id].incarnation != w.incarnation
            }
            if mismatched:
                wrong.append(
                    f"(worker, etcd) incarnations differ: {dict(list(mismatched.items())[:8])}"
                )
            settled_at = asyncio.get_running_loop().time()
            generation = cluster.status().generation
            await until(
                lambda: all(w.last_ack_at > settled_at + HEARTBEAT_TIMEOUT_S for w in workers),
                40,
                "beats answered past one heartbeat timeout after every start",
            )
            status = cluster.status()
            if status.generation != generation:
                wrong.append(f"generation moved after start: {generation} -> {status.generation}")
            dead = sorted(w.id for w in status.workers if not w.alive)
            superseded = sorted(w.worker_id for w in workers if w.superseded)
            if dead or superseded or len(status.workers) != count:
                wrong.append(f"{len(status.workers)} workers; dead {dead}; superseded {superseded}")
            return wrong
        finally:
            await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
            await client.close()

    with cluster_of(etcd, f"leader-{fault}", replicas=3) as cluster:
        wrong = asyncio.run(scenario(cluster))
    assert not wrong, "\n".join(wrong)


# -- calls cancelled mid-RPC ---------------------------------------------------------------


def test_calls_cancelled_mid_rpc_leave_a_correct_record(
    etcd: RunningEtcd, store: EtcdStore
) -> None:
    """A ``barrier()`` and a ``commit_checkpoint()`` cancelled while their RPC is at the
    leader, then called again: the barrier releases once for all three at one
    generation, the step completes with one part per worker, and closing everyone
    together (while a third barrier is cancelled) leaves no record and no task."""

    async def scenario(cluster: LocalCluster) -> list[str]:
        client = client_of(cluster)
        workers = [
            AsyncWorker(client, worker_id=f"c{i}", heartbeat_interval_s=0.2) for i in range(3)
        ]
        a = workers[0]
        wrong: list[str] = []
        try:
            await gather_workers(workers)
            leader = cluster.leader()
            first = asyncio.create_task(a.barrier("x", timeout_s=30))
            await until(
                lambda: any(
                    b.name == "x" and b.arrived == 1 for b in leader.cluster_status().open_barriers
                ),
                10,
                "a's arrival held",
            )
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            met = await asyncio.gather(*(w.barrier("x", timeout_s=20) for w in workers))
            if len(set(met)) != 1 or met[0] != cluster.status().generation:
                wrong.append(f"barrier x released at {met}")

            sent = client.watch("CommitCheckpoint")
            commit = asyncio.create_task(a.commit_checkpoint(_record(a, step=7)))
            await sent.wait()
            commit.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await commit
            acks = await asyncio.gather(*(w.commit_checkpoint(_record(w, step=7)) for w in workers))
            if not all(ack.outcome.is_committed for ack in acks):
                wrong.append(f"commit outcomes: {acks}")
            latest = await a.latest_checkpoint()
            parts = sorted(p.worker_id for p in latest.parts) if latest else []
            if latest is None or latest.step != 7 or parts != ["c0", "c1", "c2"]:
                wrong.append(f"latest complete step: {latest}")

            last = asyncio.create_task(a.barrier("y", timeout_s=30))
            await until(
                lambda: any(
                    b.name == "y" and b.arrived == 1 for b in leader.cluster_status().open_barriers
                ),
                10,
                "a's arrival at y held",
            )
            last.cancel()
            await asyncio.gather(*(w.close() for w in workers))
            with contextlib.suppress(asyncio.CancelledError):
                await last
            if other_tasks():
                wrong.append(f"tasks left: {sorted(t.get_name() for t in other_tasks())}")
            return wrong
        finally:
            await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
            await client.close()

    with cluster_of(etcd, "cancel", replicas=1) as cluster:
        wrong = asyncio.run(scenario(cluster))
        left = members_in_etcd(store, cluster.job)
    assert not wrong, "\n".join(wrong)
    assert left == {}, f"records left: {sorted(left)}"
