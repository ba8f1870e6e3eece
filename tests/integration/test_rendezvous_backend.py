"""``--rdzv-backend=dtr`` against real coordinator replicas: the backend contract, the store,
failover, no coordinator, and torch's own handler on top (``torchrun`` itself is in
test_torchrun_rendezvous.py).

The contract tests are the ones torch runs against its own backends
(``RendezvousBackendTestMixin`` in torch's test suite): initial state, set
with no token, set with the returned token, a stale token, one winner among
concurrent writers. Every test uses its own rendezvous id (and job) on the
session etcd. The registry test needs the installed ``torchrun.handlers``
entry point and says so when it is missing.
"""

from __future__ import annotations

import importlib.metadata
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import torch.distributed as dist
from torch.distributed.elastic.rendezvous.api import (
    RendezvousConnectionError,
    RendezvousInfo,
    RendezvousParameters,
)

from dtr.chaos.cluster import LocalCluster
from dtr.etcd import EtcdCluster, RunningEtcd, pick_free_ports
from dtr.retry import RetryPolicy
from dtr.worker.client import CoordinatorClient
from dtr.worker.rendezvous import DtrRendezvousBackend, DtrStore, create_rdzv_handler

pytestmark = pytest.mark.integration


def unique_job() -> str:
    return f"rdzv-{uuid.uuid4().hex[:10]}"


def unique_id() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=3, etcd=etcd, job=unique_job()) as started:
        yield started


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[CoordinatorClient]:
    made = CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id="rdzv-test")
    yield made
    made.close()


@pytest.fixture
def backend(client: CoordinatorClient) -> DtrRendezvousBackend:
    return DtrRendezvousBackend(client, unique_id())


@pytest.fixture
def store(client: CoordinatorClient) -> DtrStore:
    return DtrStore(client, unique_id(), timeout=timedelta(seconds=20))


def in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """``work(i)`` for every i on its own thread, started together; results in order."""
    start = threading.Barrier(count)

    def run(i: int) -> Any:
        start.wait()
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


# -- the backend contract ---------------------------------------------------------------


def test_a_new_rendezvous_has_no_state(backend: DtrRendezvousBackend) -> None:
    assert backend.get_state() is None


def test_setting_with_no_token_on_an_empty_rendezvous_succeeds(
    backend: DtrRendezvousBackend,
) -> None:
    result = backend.set_state(b"first", None)
    assert result is not None
    state, token, has_set = result
    assert (state, has_set) == (b"first", True)
    assert isinstance(token, int)
    assert backend.get_state() == (b"first", token)


def test_setting_with_the_returned_token_succeeds_and_moves_the_token(
    backend: DtrRendezvousBackend,
) -> None:
    first = backend.set_state(b"one")
    assert first is not None
    second = backend.set_state(b"two", first[1])
    assert second is not None
    assert (second[0], second[2]) == (b"two", True)
    assert second[1] != first[1]
    assert backend.get_state() == (b"two", second[1])


def test_a_stale_token_gets_the_current_state_and_does_not_write(
    backend: DtrRendezvousBackend,
) -> None:
    first = backend.set_state(b"one")
    assert first is not None
    second = backend.set_state(b"two", first[1])
    assert second is not None
    assert backend.set_state(b"late", first[1]) == (b"two", second[1], False)
    assert backend.set_state(b"late", None) == (b"two", second[1], False)
    assert backend.get_state() == (b"two", second[1])


@pytest.mark.parametrize("foreign", ["abc", b"token", 1.5, -1])
def test_a_token_from_another_backend_is_treated_as_stale(
    backend: DtrRendezvousBackend, foreign: object
) -> None:
    assert backend.set_state(b"x", foreign) is None  # nothing stored yet: nothing to return
    current = backend.set_state(b"mine")
    assert current is not None
    assert backend.set_state(b"theirs", foreign) == (b"mine", current[1], False)


def test_concurrent_writers_with_the_same_token_have_exactly_one_winner(
    client: CoordinatorClient,
) -> None:
    rendezvous_id = unique_id()
    base = DtrRendezvousBackend(client, rendezvous_id).set_state(b"base")
    assert base is not None
    writers = 8

    def write(i: int) -> tuple[bytes, Any, bool] | None:
        own = CoordinatorClient(client.addresses, job=client.job, caller_id=f"writer-{i}")
        try:
            return DtrRendezvousBackend(own, rendezvous_id).set_state(f"w{i}".encode(), base[1])
        finally:
            own.close()

    results = in_threads(writers, write)
    winners = [r for r in results if r is not None and r[2]]
    assert len(winners) == 1, results
    final = DtrRendezvousBackend(client, rendezvous_id).get_state()
    assert final == (winners[0][0], winners[0][1])
    assert all(r is not None and (r[0], r[1]) == final for r in results)


def test_two_rendezvous_ids_are_independent(client: CoordinatorClient) -> None:
    a, b = DtrRendezvousBackend(client, unique_id()), DtrRendezvousBackend(client, unique_id())
    set_a = a.set_state(b"a")
    assert set_a is not None
    assert b.get_state() is None
    set_b = b.set_state(b"b")
    assert set_b is not None and set_b[2]
    assert a.get_state() == (b"a", set_a[1])


def test_the_state_survives_a_leader_kill(
    cluster: LocalCluster, backend: DtrRendezvousBackend
) -> None:
    written = backend.set_state(b"before the failover")
    assert written is not None
    old = cluster.leader()
    old.kill()
    cluster.wait_new_leader(old)
    assert backend.get_state() == (b"before the failover", written[1])
    after = backend.set_state(b"after the failover", written[1])
    assert after is not None and after[2]


def test_the_state_and_store_survive_losing_the_etcd_leader(etcd_cluster3: EtcdCluster) -> None:
    with LocalCluster.start(
        replicas=3, etcd=etcd_cluster3, job=unique_job(), lease_ttl_s=5, renew_deadline_s=3.0
    ) as cluster:
        client = CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id="rdzv-test")
        rendezvous_id = unique_id()
        backend = DtrRendezvousBackend(client, rendezvous_id)
        store = DtrStore(client, rendezvous_id, timeout=timedelta(seconds=20))
        written = backend.set_state(b"before")
        store.set("MASTER_ADDR", "127.0.0.1")
        assert written is not None
        stopped = next((i for i in range(3) if etcd_cluster3.is_member_leader(i)), None)
        assert stopped is not None, "no etcd member reports itself leader"
        etcd_cluster3.stop_member(stopped)
        # Calls ride out etcd's election (and any coordinator failover it causes).
        assert backend.get_state() == (b"before", written[1])
        after = backend.set_state(b"after", written[1])
        assert after is not None and after[2] and after[0] == b"after"
        assert store.get("MASTER_ADDR") == b"127.0.0.1"
        assert store.add("agents", 1) == 1
        client.close()


# -- the store --------------------------------------------------------------------------


def test_the_store_sets_and_gets_text_and_bytes(store: DtrStore) -> None:
    store.set("text", "value")
    store.set("bytes", b"\x00\xff")
    assert store.get("text") == b"value"
    assert store.get("bytes") == b"\x00\xff"
    store.set("text", "changed")
    assert store.get("text") == b"changed"


def test_multi_get_answers_in_order_beyond_one_calls_worth_of_keys(store: DtrStore) -> None:
    keys = [f"role_info/{i}" for i in range(70)]
    store.multi_set(keys, [str(i) for i in range(70)])
    assert store.multi_get([*reversed(keys), keys[0]]) == [
        *(str(i).encode() for i in reversed(range(70))),
        b"0",
    ]


def test_get_waits_for_a_key_another_agent_sets(store: DtrStore) -> None:
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(store.get, "MASTER_ADDR")
        store.set("MASTER_ADDR", "10.0.0.1")
        assert pending.result(timeout=20) == b"10.0.0.1"


def test_concurrent_adds_count_every_call_once(store: DtrStore) -> None:
    per_thread = 20
    results = in_threads(2, lambda _: [store.add("num_members", 1) for _ in range(per_thread)])
    seen = sorted(v for batch in results for v in batch)
    assert seen == list(range(1, 2 * per_thread + 1))
    assert store.add("num_members", 0) == 2 * per_thread


def test_wait_raises_dist_store_error_naming_the_missing_key_at_the_timeout(
    store: DtrStore,
) -> None:
    store.set("present", "1")
    started = time.monotonic()
    with pytest.raises(dist.DistStoreError) as caught:
        store.wait(["present", "never-set"], timedelta(seconds=0.5))
    assert time.monotonic() - started < 5
    assert "never-set" in str(caught.value)
    assert "0.5 s" in str(caught.value)
    store.wait(["present"], timedelta(seconds=1))


def test_check_tells_whether_every_key_exists_now(store: DtrStore) -> None:
    store.set("a", "1")
    assert store.check(["a"])
    assert not store.check(["a", "b"])


def test_torchs_prefix_store_works_over_the_dtr_store(store: DtrStore) -> None:
    prefixed = dist.PrefixStore("torch.rendezvous.run.0", store)
    prefixed.set("torchelastic/role_info/0", b"info")
    assert prefixed.multi_get(["torchelastic/role_info/0"]) == [b"info"]
    assert prefixed.add("counter", 3) == 3
    prefixed.wait(["torchelastic/role_info/0"])
    assert store.get("torch.rendezvous.run.0/torchelastic/role_info/0") == b"info"
    with pytest.raises(dist.DistStoreError, match="missing"):
        prefixed.wait(["missing"], timedelta(milliseconds=200))


# -- no coordinator ---------------------------------------------------------------------


def test_no_coordinator_reachable_is_a_quick_connection_error_naming_the_endpoint() -> None:
    nowhere = f"127.0.0.1:{pick_free_ports(1)[0]}"
    client = CoordinatorClient(
        nowhere, job="j1", caller_id="rdzv-test", policy=RetryPolicy(deadline_s=1.0)
    )
    try:
        started = time.monotonic()
        with pytest.raises(RendezvousConnectionError) as caught:
            DtrRendezvousBackend(client, "run-1").get_state()
        assert time.monotonic() - started < 5
        assert nowhere in str(caught.value)
        with pytest.raises(dist.DistNetworkError, match=nowhere):
            DtrStore(client, "run-1").set("k", "v")
    finally:
        client.close()


def test_the_handler_gives_up_after_connect_timeout_when_no_coordinator_answers() -> None:
    nowhere = f"127.0.0.1:{pick_free_ports(1)[0]}"
    handler = create_rdzv_handler(
        RendezvousParameters(
            backend="dtr",
            endpoint=nowhere,
            run_id="run-1",
            min_nodes=1,
            max_nodes=1,
            local_addr="127.0.0.1",
            connect_timeout="1",
        )
    )
    started = time.monotonic()
    with pytest.raises(RendezvousConnectionError, match=nowhere):
        handler.next_rendezvous()
    assert time.monotonic() - started < 10


# -- torch's handler on top -------------------------------------------------------------


def rdzv_params(cluster: LocalCluster, run_id: str, nodes: int) -> RendezvousParameters:
    return RendezvousParameters(
        backend="dtr",
        endpoint=cluster.coordinators,
        run_id=run_id,
        min_nodes=nodes,
        max_nodes=nodes,
        local_addr="127.0.0.1",
        job=cluster.job,
        join_timeout="60",
    )


def test_two_agents_complete_a_rendezvous_through_the_handler(cluster: LocalCluster) -> None:
    run_id = unique_id()
    handlers = [create_rdzv_handler(rdzv_params(cluster, run_id, 2)) for _ in range(2)]
    try:
        infos: list[RendezvousInfo] = in_threads(2, lambda i: handlers[i].next_rendezvous())
        assert sorted(info.rank for info in infos) == [0, 1]
        assert {info.world_size for info in infos} == {2}
        boot = [info.bootstrap_store_info for info in infos]
        assert len({(b.master_addr, b.master_port) for b in boot}) == 1
    finally:
        for handler in handlers:
            handler.shutdown()


def test_the_state_stays_small_round_after_round(cluster: LocalCluster) -> None:
    """torch prunes its state each round; stored here, it must not grow with rounds."""
    run_id = unique_id()
    handlers = [create_rdzv_handler(rdzv_params(cluster, run_id, 2)) for _ in range(2)]
    client = CoordinatorClient(cluster.coordinators, job=cluster.job, caller_id="rdzv-test")
    reader = DtrRendezvousBackend(client, run_id)
    sizes: list[int] = []
    try:
        for _ in range(4):
            infos = in_threads(2, lambda i: handlers[i].next_rendezvous())
            assert {info.world_size for info in infos} == {2}
            state = reader.get_state()
            assert state is not None
            sizes.append(len(state[0]))
    finally:
        for handler in handlers:
            handler.shutdown()
        client.close()
    assert max(sizes) - min(sizes) < 64, sizes  # a round number's digits, not a history
    assert max(sizes) < 4096, sizes


def _has_dtr_entry_point() -> bool:
    return any(e.name == "dtr" for e in importlib.metadata.entry_points(group="torchrun.handlers"))


@pytest.mark.skipif(
    not _has_dtr_entry_point(),
    reason="the torchrun.handlers entry point 'dtr' is not installed yet "
    "(pyproject declares it; reinstall with `pip install -e .`)",
)
def test_torchs_registry_finds_dtr_and_one_node_completes_a_rendezvous(
    cluster: LocalCluster,
) -> None:
    from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

    handler = get_rendezvous_handler(rdzv_params(cluster, unique_id(), 1))
    try:
        assert handler.get_backend() == "dtr"
        info = handler.next_rendezvous()
        assert (info.rank, info.world_size) == (0, 1)
    finally:
        handler.shutdown()
