"""The planted-bug switch (``dtr.mutants``) and what each mutant changes in the pure plans.

The switch must be exact: unset, every mutation site is the real code (the
rest of the suite runs that way); set to a known name, only that site
changes; set to anything else, nothing starts. Each plan function with a
mutation site is shown producing the broken plan with its mutant on and the
real plan with it off, so a chaos run that catches a mutant caught that bug.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from dtr import mutants
from dtr.coordinator.barriers import BarrierState, still_valid
from dtr.coordinator.checkpoints import StepState, plan_commit
from dtr.coordinator.config import CoordinatorConfig
from dtr.coordinator.membership import plan_mark_dead, plan_register
from dtr.coordinator.state import ClusterView, MemberRecord
from dtr.coordinator.validation import CheckpointCommit, CheckpointPartSpec
from dtr.errors import InvalidArgument
from dtr.keys import JobKeys
from dtr.worker.commit_flusher import _as_sent
from dtr.worker.commit_queue import CommitRecord

KEYS = JobKeys("job")

Activate = Callable[[str | None], None]


@pytest.fixture
def activate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Activate]:
    """Set ``DTR_UNSAFE_MUTANT`` for this test (read again: the switch caches it)."""

    def set_mutant(name: str | None) -> None:
        if name is None:
            monkeypatch.delenv(mutants.ENV, raising=False)
        else:
            monkeypatch.setenv(mutants.ENV, name)
        mutants.selected.cache_clear()

    set_mutant(None)
    yield set_mutant
    monkeypatch.delenv(mutants.ENV, raising=False)
    mutants.selected.cache_clear()


def view_with(*workers: str, generation: int = 5, incarnation: int = 1) -> ClusterView:
    members = {w: MemberRecord(w, 1.0, True, incarnation) for w in workers}
    return ClusterView(generation=generation).replace(members=members)


def commit(worker: str, step: int = 100, generation: int = 5) -> CheckpointCommit:
    part = CheckpointPartSpec(
        uri=f"file:///ckpt/step-{step}/{worker}.dtr",
        size_bytes=1024,
        algorithm="crc32c",
        hex_digest="0" * 8,
        format_version=1,
        manifest_uri=None,
        replicated=False,
    )
    return CheckpointCommit(step=step, worker_id=worker, generation=generation, part=part)


# -- the switch --------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_or_empty_is_no_mutant(value: str | None) -> None:
    assert mutants.parse(value) is None


@pytest.mark.parametrize("name", mutants.NAMES)
def test_every_known_name_parses_to_itself(name: str) -> None:
    assert mutants.parse(f" {name} ") == name


def test_the_eight_mutants_of_issue_16_are_named() -> None:
    assert len(set(mutants.NAMES)) == 8


def test_an_unknown_name_is_refused_naming_the_variable_and_the_known_ones() -> None:
    with pytest.raises(InvalidArgument) as refused:
        mutants.parse("unfenced-write")  # one letter short
    message = str(refused.value)
    assert mutants.ENV in message and "'unfenced-write'" in message
    assert all(name in message for name in mutants.NAMES)


def test_a_process_started_with_an_unknown_mutant_refuses(activate: Activate) -> None:
    activate("no-such-bug")
    with pytest.raises(InvalidArgument, match="unknown mutant 'no-such-bug'"):
        mutants.selected()
    with pytest.raises(InvalidArgument):
        mutants.active(mutants.UNFENCED_WRITES)


def test_asking_about_an_unknown_mutant_is_a_programming_error(activate: Activate) -> None:
    with pytest.raises(InvalidArgument, match="unknown mutant 'nope'"):
        mutants.active("nope")


def test_only_the_named_mutant_is_active(activate: Activate) -> None:
    activate(mutants.SHORT_KEEPALIVE)
    assert [n for n in mutants.NAMES if mutants.active(n)] == [mutants.SHORT_KEEPALIVE]
    activate(None)
    assert not any(mutants.active(n) for n in mutants.NAMES)


def test_an_active_mutant_warns_once_per_process(
    activate: Activate, caplog: pytest.LogCaptureFixture
) -> None:
    activate(mutants.CANCELLED_WRITE)
    with caplog.at_level(logging.WARNING, logger="dtr.mutants"):
        for _ in range(3):
            assert mutants.active(mutants.CANCELLED_WRITE)
    warnings = [r for r in caplog.records if "UNSAFE: mutant" in r.getMessage()]
    assert len(warnings) == 1
    assert "'cancelled-write'" in warnings[0].getMessage()


# -- what each mutant changes in the plans -----------------------------------------


def test_incarnation_blind_a_restart_under_a_live_id_is_no_membership_change(
    activate: Activate,
) -> None:
    view = view_with("a", "b")
    real = plan_register(KEYS, view, "a", 1.0, host="h", pid=2)
    assert real.view.generation == 6
    activate(mutants.INCARNATION_BLIND_BARRIERS)
    blind = plan_register(KEYS, view, "a", 1.0, host="h", pid=2)
    assert blind.view.members["a"].incarnation == 2
    assert blind.view.generation == 5


def test_incarnation_blind_an_old_incarnations_arrival_counts(activate: Activate) -> None:
    state = BarrierState("step-1", 5, arrived={"a": 1})
    view = view_with("a", "b", incarnation=2)  # "a" restarted since it arrived
    assert not state.has_arrival_of("a", 2)
    assert still_valid(view, state, {"b": (1, 5)}) == []
    activate(mutants.INCARNATION_BLIND_BARRIERS)
    assert state.has_arrival_of("a", 2)
    assert still_valid(view, state, {"b": (1, 5)}) == ["b"]


def test_unbounded_mark_dead_plans_a_whole_rack_in_one_transaction(activate: Activate) -> None:
    rack = [f"w{i:03d}" for i in range(150)]
    view = view_with(*rack)
    with pytest.raises(ValueError, match="split them into batches"):
        plan_mark_dead(KEYS, view, rack)
    activate(mutants.UNBOUNDED_MARK_DEAD)
    plan = plan_mark_dead(KEYS, view, rack)
    assert plan is not None and len(plan.ops) == 151  # 150 members and the generation


def test_latest_without_last_part_completes_a_step_one_part_short(activate: Activate) -> None:
    view = view_with("a", "b", "c")
    state = StepState(100, parts={})
    first = plan_commit(KEYS, view, state, None, commit("a"))
    assert first.state is not None
    real = plan_commit(KEYS, view, first.state, None, commit("b"))
    assert not real.step_complete and real.latest is None
    activate(mutants.LATEST_WITHOUT_LAST_PART)
    mutated = plan_commit(KEYS, view, first.state, None, commit("b"))
    assert mutated.step_complete and mutated.latest is not None
    assert mutated.plan is not None
    assert any(op.key == KEYS.latest_checkpoint for op in mutated.plan.ops)


def test_short_keepalive_is_the_pre_fix_two_tenths_of_a_second(activate: Activate) -> None:
    config = CoordinatorConfig(("127.0.0.1:2379",))
    assert config.keepalive_timeout_s > 1.0
    activate(mutants.SHORT_KEEPALIVE)
    assert config.keepalive_timeout_s == mutants.SHORT_KEEPALIVE_TIMEOUT_S
    explicit = CoordinatorConfig(("127.0.0.1:2379",), etcd_keepalive_timeout_s=1.0)
    assert explicit.keepalive_timeout_s == 1.0  # a flag given still wins


def test_replay_other_life_sends_a_record_without_its_life(activate: Activate) -> None:
    record = CommitRecord(
        job="job",
        step=5,
        worker_id="a",
        generation=2,
        uri="file:///ckpt/a.dtr",
        size_bytes=1,
        checksum_algorithm="crc32c",
        checksum_hex="0" * 8,
        format_version=1,
        job_life="cluster/old-life",
        incarnation=3,
    )
    assert _as_sent(record) is record
    activate(mutants.REPLAY_OTHER_LIFE)
    sent = _as_sent(record)
    assert (sent.job_life, sent.incarnation) == ("", 0)
    assert (sent.step, sent.uri) == (record.step, record.uri)
