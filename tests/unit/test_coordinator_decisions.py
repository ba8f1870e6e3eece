"""The coordinator's decisions as pure functions: membership, datasets, barriers, config."""

from __future__ import annotations

import pytest

from dtr.coordinator.barriers import (
    BarrierState,
    check_arrival,
    decode_state,
    plan_arrivals,
    reopened,
    still_valid,
)
from dtr.coordinator.config import CoordinatorConfig
from dtr.coordinator.election import Candidate, Term, leader_of
from dtr.coordinator.membership import (
    expired_workers,
    plan_deregister,
    plan_mark_dead,
    plan_register,
    plan_register_dataset,
)
from dtr.coordinator.state import ClusterView, DatasetRecord, MemberRecord
from dtr.errors import (
    AlreadyExists,
    InvalidArgument,
    MembershipChanged,
    NotFound,
    StaleIncarnation,
)
from dtr.keys import JobKeys
from dtr.store import Compare, Delete, Put

KEYS = JobKeys("job")


def view_with(*workers: str, generation: int = 3, dead: tuple[str, ...] = ()) -> ClusterView:
    members = {w: MemberRecord(w, 1.0, True, 1) for w in workers}
    members.update({w: MemberRecord(w, 1.0, False, 1) for w in dead})
    return ClusterView(generation=generation).replace(members=members)


def test_a_new_worker_bumps_the_generation_once_and_is_guarded_by_absence() -> None:
    plan = plan_register(KEYS, view_with("a"), "b", 2.0, host="h", pid=7)
    assert plan.view.generation == 4
    assert plan.view.members["b"] == MemberRecord("b", 2.0, True, 1, "h", 7)
    assert Compare.absent(KEYS.member("b")) in plan.compares
    assert Compare.value_is(KEYS.generation, b"3") in plan.compares
    assert Put(KEYS.generation, b"4") in plan.ops


def test_re_registering_a_live_worker_is_a_new_incarnation_and_a_membership_change() -> None:
    # A restarted process did none of what the old one did: the generation
    # moves, so the old incarnation's arrivals and parts stop counting.
    plan = plan_register(KEYS, view_with("a", "b"), "a", 1.0, host="", pid=0)
    assert plan.view.generation == 4
    assert plan.view.members["a"].incarnation == 2
    assert sum(1 for op in plan.ops if op.key == KEYS.generation) == 1


def test_a_dead_worker_that_returns_or_changes_capacity_moves_the_generation() -> None:
    assert (
        plan_register(KEYS, view_with(dead=("a",)), "a", 1.0, host="", pid=0).view.generation == 4
    )
    assert plan_register(KEYS, view_with("a"), "a", 4.0, host="", pid=0).view.generation == 4


def test_declaring_several_workers_dead_is_one_write_and_one_generation() -> None:
    plan = plan_mark_dead(KEYS, view_with("a", "b", "c"), ["a", "b", "zzz"])
    assert plan is not None
    assert plan.view.generation == 4
    assert sorted(plan.view.live_members()) == ["c"]
    assert sum(1 for op in plan.ops if op.key == KEYS.generation) == 1
    assert plan_mark_dead(KEYS, view_with("a", dead=("b",)), ["b"]) is None


def test_deregister_removes_only_the_named_incarnation() -> None:
    plan = plan_deregister(KEYS, view_with("a", "b"), "a", 1)
    assert plan is not None and "a" not in plan.view.members
    assert Delete(KEYS.member("a")) in plan.ops
    assert plan_deregister(KEYS, view_with("a"), "a", 5) is None
    assert plan_deregister(KEYS, view_with("a"), "nobody", 0) is None


def test_expiry_counts_silence_and_gives_unseen_workers_grace() -> None:
    view = view_with("a", "b", "c", dead=("d",))
    last_seen = {"a": 100.0, "b": 69.0, "d": 0.0}
    assert expired_workers(view, last_seen, now=100.0, timeout_s=30.0) == ["b"]


def test_datasets_are_idempotent_and_conflicts_are_already_exists() -> None:
    wanted = DatasetRecord("tokens", 4096, 150, None)
    plan = plan_register_dataset(KEYS, view_with(), wanted)
    assert plan is not None and plan.view.datasets["tokens"] == wanted
    assert plan_register_dataset(KEYS, plan.view, wanted) is None
    with pytest.raises(AlreadyExists, match="num_shards=4096"):
        plan_register_dataset(KEYS, plan.view, DatasetRecord("tokens", 10, 150, None))


def test_a_barrier_releases_once_every_live_member_has_arrived() -> None:
    view = view_with("a", "b", "c")
    state = reopened(None, "step-1", view)
    plan, state = plan_arrivals(KEYS, view, state, ["a", "b"])
    assert not state.released and Compare.absent(KEYS.barrier_state("step-1")) in plan.compares
    plan, state = plan_arrivals(KEYS, view, state, ["b", "c"])  # b retries: counted once
    assert state.released and state.arrived == {"a": 1, "b": 1, "c": 1}
    assert sum(1 for op in plan.ops if op.key == KEYS.barrier_arrival("step-1", "b")) == 0
    assert state.outcome(view).status == "released"


def test_a_barrier_open_for_an_old_generation_has_failed_and_reopens_empty() -> None:
    old = BarrierState("b", generation=3, arrived={"a": 1}, stored=b'{"generation": 3}')
    moved = view_with("a", "b", generation=4)
    assert old.outcome(moved).status == "membership_changed"
    fresh = reopened(old, "b", moved)
    assert (fresh.generation, fresh.arrived, fresh.stored) == (4, {}, old.stored)
    released = BarrierState("b", generation=3, released=True)
    assert reopened(released, "b", moved) is released


def test_arrivals_of_other_generations_do_not_count_after_a_reload() -> None:
    state = decode_state(
        "b",
        b'{"generation": 5, "released": false}',
        [("a", b'{"generation": 5, "incarnation": 2}'), ("b", b'{"generation": 4}')],
    )
    assert state is not None and state.arrived == {"a": 2}
    assert decode_state("b", None, []) is None


def test_only_live_members_of_the_current_generation_may_arrive() -> None:
    view = view_with("a", dead=("d",))
    check_arrival(view, "a", 0)
    check_arrival(view, "a", 3)
    with pytest.raises(NotFound, match="worker_id"):
        check_arrival(view, "d", 0)
    with pytest.raises(MembershipChanged, match="generation"):
        check_arrival(view, "a", 2)


def test_the_lowest_create_revision_leads_and_fences_with_it() -> None:
    cands = [Candidate("r2", "h:2", "/e/2", 9), Candidate("r1", "h:1", "/e/1", 4)]
    head = leader_of(cands)
    assert head is not None and head.replica_id == "r1"
    assert leader_of([]) is None
    assert Term("/e/1", 4).fence() == Compare.created_at("/e/1", 4)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"lease_ttl_s": 1}, "lease_ttl_s"),
        ({"lease_ttl_s": 3, "renew_deadline_s": 3.0}, "renew_deadline_s"),
        ({"heartbeat_timeout_s": 0.0}, "heartbeat_timeout_s"),
        ({"heartbeat_interval_s": 30.0}, "heartbeat_interval_s"),
        ({"listen": "nonsense"}, "listen"),
        ({"job": "a/b"}, "job"),
        ({"etcd_timeout_s": float("nan")}, "etcd_timeout_s"),
        ({"metrics_port": 70000}, "metrics_port"),
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
        ({"keep_barriers": 3}, "keep_barriers"),
        ({"keep_barriers": True}, "keep_barriers"),
        ({"commit_batch_max": 0}, "commit_batch_max"),
        ({"commit_batch_max": 41}, "commit_batch_max"),
        ({"commit_batch_max": True}, "commit_batch_max"),
    ],
)
def test_configs_that_cannot_work_are_refused_naming_the_field(
    overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument, match=field):
        CoordinatorConfig(etcd_endpoints=("127.0.0.1:2379",), **overrides)  # type: ignore[arg-type]


def test_the_default_config_renews_three_times_per_deadline() -> None:
    config = CoordinatorConfig(etcd_endpoints=("127.0.0.1:2379",))
    assert config.keepalive_interval_s * 3 <= config.renew_deadline_s < config.lease_ttl_s


def test_arrivals_are_stamped_with_the_incarnation_that_made_them() -> None:
    view = view_with("a", "b")
    plan, state = plan_arrivals(KEYS, view, reopened(None, "s", view), ["a"])
    assert state.arrived == {"a": 1}
    assert b'"incarnation": 1' in next(op.value for op in plan.ops if isinstance(op, Put))
    assert state.has_arrival_of("a", 1) and not state.has_arrival_of("a", 2)
    assert not state.has_arrival_of("b", 1)


def test_an_older_incarnation_may_not_arrive_for_its_successor() -> None:
    members = {"a": MemberRecord("a", 1.0, True, 2)}
    view = ClusterView(generation=3).replace(members=members)
    check_arrival(view, "a", 3, incarnation=2)
    check_arrival(view, "a", 3)  # 0: an older client that does not say
    with pytest.raises(StaleIncarnation, match="incarnation 1 was replaced"):
        check_arrival(view, "a", 3, incarnation=1)


def test_a_queued_arrival_is_written_only_for_its_own_incarnation_and_generation() -> None:
    members = {
        "a": MemberRecord("a", 1.0, True, 1),
        "w": MemberRecord("w", 1.0, True, 2),  # restarted since it arrived as incarnation 1
        "d": MemberRecord("d", 1.0, False, 1),
    }
    view = ClusterView(generation=5).replace(members=members)
    state = reopened(None, "b", view)
    queued = {"a": (1, 5), "w": (1, 4), "d": (1, 5), "late": (1, 4)}
    assert still_valid(view, state, queued) == ["a"]
    assert still_valid(view, state, {"w": (2, 5)}) == ["w"]
