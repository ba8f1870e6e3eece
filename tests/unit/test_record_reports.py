"""``record-reports``: the workers' histories held to etcd's record.

Each test pairs a hand-made record (``test_record_checkers.Record``) with a
hand-made history and checks the verdict names the disagreement.
"""

from __future__ import annotations

from typing import Any

from record_support import KEYS, LEADER, Record, complete, completing, joined, member

from dtr.chaos.checker_record import replay_record
from dtr.chaos.checker_reports import check_reports
from dtr.chaos.history import Event, EventType


def ev(t: float, kind: EventType, f: str, value: dict[str, Any], op: str | None = None) -> Event:
    return Event(t, "worker:w", kind, f, value, op)


def released(record: Record, term: int, name: str, generation: int) -> Record:
    arrival = {"generation": generation, "incarnation": 1}
    return record.leader_txn(
        term,
        (KEYS.barrier_arrival(name, "w"), arrival),
        (KEYS.barrier_state(name), {"generation": generation, "released": True}),
    )


def base() -> tuple[Record, int]:
    """Life u1: w (incarnation 1) joins, passes barrier step-10, completes step 10."""
    record = Record()
    term = record.campaign(LEADER)
    record.leader_txn(term, (KEYS.job_life, b"u1"))
    joined(record, term, ["w"], 1)
    released(record, term, "step-10", 1)
    completing(record, term, 10, complete(10, 1, 1), "w")
    return record, term


def clean_history() -> list[Event]:
    return [
        ev(1.0, "ok", "register", {"incarnation": 1, "job_life": "7/u1"}),
        ev(2.0, "invoke", "save", {"step": 10}, "s1"),
        ev(2.5, "ok", "save", {"step": 10}, "s1"),
        ev(3.0, "ok", "barrier", {"name": "step-10", "generation": 1}),
        ev(4.0, "ok", "commit", {"step": 10, "outcome": "accepted"}),
    ]


def messages(record: Record, history: list[Event]) -> list[str]:
    result = check_reports(history, replay_record(record.events, KEYS).facts)
    return [v.message for v in result.violations]


def test_reports_that_agree_with_the_record_pass() -> None:
    record, _ = base()
    result = check_reports(clean_history(), replay_record(record.events, KEYS).facts)
    assert result.ok and result.checked == 3 and result.unchecked == 0


def test_a_barrier_the_record_never_released_is_caught() -> None:
    record, _ = base()
    history = [*clean_history(), ev(5.0, "ok", "barrier", {"name": "step-20", "generation": 1})]
    assert messages(record, history) == [
        "w passed barrier step-20 at generation 1 (t=5.0s), which the record never released"
    ]


def test_a_barrier_released_for_another_incarnation_of_the_id_is_caught() -> None:
    record, term = base()
    record.leader_txn(term, member("w", 2), (KEYS.generation, 2))  # w restarted as 2
    released(record, term, "step-20", 2)
    passed = ev(5.0, "ok", "barrier", {"name": "step-20", "generation": 2})
    # The process that registered as 1 may have rejoined unrecorded as 2: it passes...
    assert messages(record, [*clean_history(), passed]) == []
    # ...unless another process of w reported registering as 2: then the release was its.
    restarted = ev(4.5, "ok", "register", {"incarnation": 2, "job_life": "7/u1"})
    old_process = [*clean_history(), passed, restarted]
    old_process[-2] = ev(4.4, "ok", "barrier", {"name": "step-20", "generation": 2})
    assert messages(record, old_process) == [
        "w passed barrier step-20 at generation 2 (t=4.4s), but at its release "
        f"(revision {record.revision}) it was not a live member as incarnation 1"
    ]


def test_a_commit_reported_accepted_without_its_part_in_the_record_is_caught() -> None:
    record, _ = base()
    history = [*clean_history(), ev(5.0, "ok", "commit", {"step": 20, "outcome": "accepted"})]
    history.append(ev(5.1, "ok", "commit", {"step": 30, "outcome": "superseded"}))  # not judged
    assert messages(record, history) == [
        "w reported its commit of step 20 accepted (t=5.0s), but the record has no part of it "
        "for that step"
    ]


def test_a_part_nobody_reported_saving_is_caught_unless_the_save_died_unanswered() -> None:
    record, term = base()
    record.leader_txn(term, (KEYS.checkpoint_commit(20, "w"), {"generation": 1}))
    record.leader_txn(term, (KEYS.checkpoint_commit(30, "w"), {"generation": 1}))
    history = [*clean_history(), ev(6.0, "invoke", "save", {"step": 30}, "s2")]  # then killed
    result = check_reports(history, replay_record(record.events, KEYS).facts)
    assert [v.message for v in result.violations] == [
        "the record holds w's part of step 20 (job life 0), but w never reported saving "
        "step 20 in that life"
    ]
    assert result.unchecked == 1


def test_reports_are_matched_to_their_own_job_life() -> None:
    record, _ = base()
    history = clean_history()
    history[0] = ev(1.0, "ok", "register", {"incarnation": 1, "job_life": "7/u2"})  # not u1
    assert messages(record, history) == [
        "w passed barrier step-10 at generation 1 (t=3.0s), which the record never released",
        "w reported its commit of step 10 accepted (t=4.0s), but the record has no part of it "
        "for that step",
        "the record holds w's part of step 10 (job life 0), but w never reported saving "
        "step 10 in that life",
    ]


def test_without_incarnations_or_lives_in_the_history_only_the_rest_is_judged() -> None:
    record, _ = base()
    history = [e for e in clean_history() if e.f != "register"]  # an older workload
    result = check_reports(history, replay_record(record.events, KEYS).facts)
    assert result.ok and result.checked == 3
