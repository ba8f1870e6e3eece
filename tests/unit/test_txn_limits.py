"""Every transaction the coordinator builds stays inside etcd's limits, by construction.

etcd refuses a transaction of more than 128 operations (``--max-txn-ops``)
or a request over 1.5 MiB (``--max-request-bytes``), and a refused plan
retried forever is a leader that never declares a failed rack dead (issue
15, item 1). Each plan is built here for a job of 10,000 members with the
longest ids dtr accepts, and checked with the leader's fence and a read of
its key added, as ``Coordinator._apply`` sends it.
"""

from __future__ import annotations

import pytest

from dtr.coordinator.barriers import (
    FORGET_PER_TXN,
    MAX_ARRIVALS_PER_TXN,
    StoredBarrier,
    forget_ops,
    plan_arrivals,
    reopened,
)
from dtr.coordinator.checkpoints import (
    CompleteRecord,
    PartRecord,
    StepState,
    plan_commit,
    plan_retention,
)
from dtr.coordinator.membership import (
    MAX_MEMBER_CHANGES_PER_TXN,
    WritePlan,
    batches,
    plan_deregister,
    plan_mark_dead,
    plan_register,
    plan_register_dataset,
)
from dtr.coordinator.state import ClusterView, DatasetRecord, MemberRecord
from dtr.coordinator.validation import CheckpointCommit, CheckpointPartSpec
from dtr.keys import JobKeys
from dtr.store import Compare, Get, Put
from dtr.store_types import (
    ETCD_MAX_REQUEST_BYTES,
    ETCD_MAX_TXN_OPS,
    PLAN_MAX_BYTES,
    PLAN_MAX_OPS,
    TxnTooLarge,
    check_txn_limits,
)

MEMBERS = 10_000
KEYS = JobKeys("j" * 128)
LEADER_KEY = KEYS.candidate(2**63)


def worker(i: int) -> str:
    """The longest worker id dtr accepts (128 characters), distinct per ``i``."""
    return f"{i:08d}".ljust(128, "w")


def big_view(generation: int = 7) -> ClusterView:
    members = {
        worker(i): MemberRecord(worker(i), 1.0, True, 3, host="h" * 64, pid=2**31)
        for i in range(MEMBERS)
    }
    return ClusterView(generation=generation).replace(members=members)


def assert_within_etcd_limits(plan: WritePlan) -> None:
    """The plan within its budget; as sent (fence, writer stamp, leader read) within etcd's."""
    check_txn_limits(plan.compares, plan.ops, max_ops=PLAN_MAX_OPS, max_bytes=PLAN_MAX_BYTES)
    fenced = [Compare.created_at(LEADER_KEY, 1), *plan.compares]
    stamp = Put(KEYS.writer, b'{"replica": "' + b"r" * 128 + b'", "term": 9223372036854775807}')
    check_txn_limits(
        fenced,
        [*plan.ops, stamp],
        [Get(LEADER_KEY)],
        max_ops=ETCD_MAX_TXN_OPS - 1,
        max_bytes=ETCD_MAX_REQUEST_BYTES,
    )


@pytest.fixture(scope="module")
def view() -> ClusterView:
    return big_view()


def test_the_limit_check_refuses_what_etcd_would_refuse() -> None:
    puts = [Get(f"k{i}") for i in range(ETCD_MAX_TXN_OPS + 1)]
    with pytest.raises(TxnTooLarge, match="129"):
        check_txn_limits([], puts)
    with pytest.raises(TxnTooLarge, match="bytes"):
        check_txn_limits([Compare.value_is("k", b"x" * ETCD_MAX_REQUEST_BYTES)], [])


def test_registering_into_a_job_of_ten_thousand_is_one_small_write(view: ClusterView) -> None:
    assert_within_etcd_limits(plan_register(KEYS, view, worker(MEMBERS), 1.0, host="h", pid=1))
    assert_within_etcd_limits(plan_register(KEYS, view, worker(5), 1.0, host="h", pid=1))
    plan = plan_deregister(KEYS, view, worker(5), 3)
    assert plan is not None
    assert_within_etcd_limits(plan)


def test_ten_thousand_simultaneous_deaths_are_declared_in_batches_within_limits(
    view: ClusterView,
) -> None:
    dead = [worker(i) for i in range(MEMBERS)]
    cut = batches(dead)
    assert sum(len(b) for b in cut) == MEMBERS
    assert max(len(b) for b in cut) == MAX_MEMBER_CHANGES_PER_TXN
    current, generations = view, []
    for batch in cut:
        plan = plan_mark_dead(KEYS, current, batch)
        assert plan is not None
        assert_within_etcd_limits(plan)
        current = plan.view
        generations.append(current.generation)
    assert not current.live_members()
    assert generations == list(range(view.generation + 1, view.generation + 1 + len(cut)))
    with pytest.raises(ValueError, match="batches"):
        plan_mark_dead(KEYS, view, dead)


def part(i: int) -> CheckpointPartSpec:
    return CheckpointPartSpec(
        uri="s3://" + "b" * 4000,
        size_bytes=2**40,
        algorithm="sha256",
        hex_digest="a" * 64,
        format_version=1,
        manifest_uri="s3://" + "m" * 4000,
        replicated=False,
    )


def test_the_commit_that_completes_a_step_of_ten_thousand_parts_is_small(
    view: ClusterView,
) -> None:
    commits = [CheckpointCommit(100, worker(i), view.generation, part(i)) for i in range(MEMBERS)]
    parts = {c.worker_id: PartRecord.of(c) for c in commits[:-1]}
    latest = CompleteRecord(90, view.generation, MEMBERS)
    decision = plan_commit(KEYS, view, StepState(100, parts), latest, commits[-1])
    assert decision.step_complete and decision.plan is not None
    assert_within_etcd_limits(decision.plan)


def test_ten_thousand_barrier_arrivals_are_written_in_batches_within_limits(
    view: ClusterView,
) -> None:
    state = reopened(None, "b" * 128, view)
    everyone = [worker(i) for i in range(MEMBERS)]
    for start in range(0, MEMBERS, MAX_ARRIVALS_PER_TXN):
        plan, state = plan_arrivals(
            KEYS, view, state, everyone[start : start + MAX_ARRIVALS_PER_TXN]
        )
        assert_within_etcd_limits(plan)
    assert state.released and len(state.arrived) == MEMBERS


def test_retention_deletes_in_bounded_transactions() -> None:
    ops = plan_retention(KEYS, list(range(0, 20_000, 2)), list(range(20_000)), keep=3)
    assert ops
    assert_within_etcd_limits(WritePlan((), tuple(ops), ClusterView()))
    barriers = [StoredBarrier("b" * 120 + str(i), 1, True, i) for i in range(FORGET_PER_TXN)]
    compares, deletions = forget_ops(KEYS, barriers)
    assert_within_etcd_limits(WritePlan(tuple(compares), tuple(deletions), ClusterView()))


def test_registering_a_dataset_is_one_small_write(view: ClusterView) -> None:
    plan = plan_register_dataset(KEYS, view, DatasetRecord("d" * 128, 2**32 - 1, 150, 1.25))
    assert plan is not None
    assert_within_etcd_limits(plan)
