"""The chaos checkers (DESIGN §5) on hand-written histories: valid ones pass, crafted ones fail.

Each violating history asserts which events the violation names, since a
report that says "something broke" without the events is no use to whoever
reads a failed run. Unknown outcomes (``info``) must never count as failed.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dtr.chaos.checkers import (
    CheckResult,
    FinalState,
    check_all,
    check_barriers,
    check_checkpoints,
    check_claims,
    check_commits,
    check_liveness,
    check_loads,
    check_membership,
    check_shards,
    check_writes,
)
from dtr.chaos.history import Event, EventType, History, read_history

_op_ids = itertools.count(1)


def op(
    process: str,
    f: str,
    start: float,
    end: float,
    value: dict[str, Any] | None = None,
    *,
    invoke: dict[str, Any] | None = None,
    type: EventType = "ok",
    term: int | None = None,
    generation: int | None = None,
) -> tuple[Event, Event]:
    """One operation: its invoke at ``start`` and its completion at ``end``."""
    op_id = f"{process}#{next(_op_ids)}"
    return (
        Event(start, process, "invoke", f, invoke or {}, op_id),
        Event(end, process, type, f, value or {}, op_id, term, generation),
    )


def ok(time: float, process: str, f: str, **value: Any) -> Event:
    return Event(time, process, "ok", f, value)


def history(*parts: Event | tuple[Event, ...]) -> list[Event]:
    flat = [e for part in parts for e in (part if isinstance(part, tuple) else (part,))]
    return sorted(flat, key=lambda e: e.time)


def members(time: float, generation: int, *ids: str) -> Event:
    return ok(time, "harness", "membership", generation=generation, members=list(ids))


def assert_names(result: CheckResult, *events: Event) -> None:
    assert not result.ok, result
    assert any(all(e in v.events for e in events) for v in result.violations), result


def write(process: str, start: float, end: float, term: int, replica: str) -> tuple[Event, Event]:
    return op(process, "write", start, end, {"replica": replica}, term=term)


def test_writes_of_one_replica_per_growing_term_pass() -> None:
    events = history(write("worker:a", 0, 1, 5, "r1"), write("worker:a", 2, 3, 9, "r2"))
    result = check_writes(events)
    assert result.ok and result.checked == 2


def test_two_replicas_writing_in_one_term_is_a_violation_naming_both_writes() -> None:
    first, second = write("worker:a", 0, 1, 5, "r1"), write("worker:b", 0, 2, 5, "r2")
    assert_names(check_writes(history(first, second)), first[1], second[1])


def test_a_later_write_at_an_older_term_is_a_violation_naming_the_pair() -> None:
    newer, older = write("worker:a", 0, 1, 9, "r2"), write("worker:a", 2, 3, 5, "r1")
    assert_names(check_writes(history(newer, older)), newer[1], *older)


def test_overlapping_writes_may_complete_with_terms_out_of_order() -> None:
    slow, fast = write("worker:a", 0, 4, 5, "r1"), write("worker:a", 1, 2, 9, "r2")
    assert check_writes(history(slow, fast)).ok


def test_info_and_failed_writes_never_make_a_second_writer() -> None:
    events = history(
        write("worker:a", 0, 1, 5, "r1"),
        op("worker:b", "write", 0, 2, {"replica": "r2"}, type="info", term=5),
        op("worker:c", "write", 0, 2, {"replica": "r3"}, type="fail", term=5),
    )
    assert check_writes(events).ok


def claim(
    start: float, end: float, replica: str, term: int | None, leads: bool = True
) -> tuple[Event, Event]:
    value = {"replica": replica, "is_leader": leads, "term": term}
    return op("harness", "claim", start, end, value, invoke={"replica": replica})


def test_a_leader_that_stops_claiming_before_the_next_term_passes() -> None:
    events = history(
        claim(0, 0.1, "r1", 5),
        claim(1, 1.1, "r1", 5, leads=False),
        claim(2, 2.1, "r2", 9),
        claim(3, 3.1, "r1", 9, leads=False),
        claim(4, 4.1, "r1", None),  # a follower's answer: no claim
    )
    result = check_claims(events)
    assert result.ok and (result.checked, result.unchecked) == (2, 1), result


def test_an_older_term_claimed_after_a_newer_one_was_seen_is_a_split_brain() -> None:
    newer, stale = claim(2, 2.1, "r2", 9), claim(3, 3.1, "r1", 5)
    result = check_claims(history(claim(0, 0.1, "r1", 5), newer, stale))
    assert_names(result, newer[1], stale[1])
    assert "r1 still claimed term 5" in result.violations[0].message


def test_claims_whose_probes_overlap_may_answer_in_either_order() -> None:
    slow_old, fast_new = claim(0, 3, "r1", 5), claim(1, 2, "r2", 9)
    assert check_claims(history(slow_old, fast_new)).ok


def test_one_term_claimed_by_two_replicas_is_a_violation() -> None:
    one, two = claim(0, 0.1, "r1", 7), claim(1, 1.1, "r2", 7)
    assert_names(check_claims(history(one, two)), one[1], two[1])


def test_a_generation_seen_with_two_member_sets_is_a_violation() -> None:
    one, two = members(0, 3, "a", "b"), members(1, 3, "a")
    assert_names(check_membership([one, two]), one, two)


def barrier(worker: str, start: float, end: float, generation: int, **kw: Any) -> tuple[Event, ...]:
    value = {"name": "step-1", "generation": generation}
    return op(f"worker:{worker}", "barrier", start, end, value, invoke=value, **kw)


def test_a_barrier_released_to_every_member_passes() -> None:
    events = history(members(0, 1, "a", "b"), barrier("a", 1, 3, 1), barrier("b", 2, 3, 1))
    result = check_barriers(events)
    assert result.ok and result.checked == 2 and result.unchecked == 0


def test_a_barrier_released_under_two_generations_is_a_violation() -> None:
    a, b = barrier("a", 1, 3, 1), barrier("b", 1, 4, 2)
    assert_names(check_barriers(history(a, b)), a[1], b[1])


def test_a_release_before_every_member_arrived_is_a_violation() -> None:
    a, b = barrier("a", 1, 3, 1), barrier("b", 2, 3, 1)
    late = barrier("c", 5, 6, 1)
    result = check_barriers(history(members(0, 1, "a", "b", "c"), a, b, late))
    assert_names(result, a[1])
    assert "before member c arrived" in result.violations[0].message


def test_a_release_to_a_non_member_is_a_violation() -> None:
    a, outsider = barrier("a", 1, 3, 1), barrier("z", 1, 3, 1)
    assert_names(check_barriers(history(members(0, 1, "a"), a, outsider)), outsider[1])


def test_an_info_barrier_is_neither_released_nor_failed_and_its_retry_may_release() -> None:
    events = history(
        members(0, 1, "a", "b"),
        barrier("a", 1, 5, 1),
        barrier("b", 2, 3, 1, type="info"),
        barrier("b", 4, 6, 1),
    )
    result = check_barriers(events)
    assert result.ok and result.checked == 2


def test_membership_changed_then_release_under_the_new_generation_passes() -> None:
    events = history(
        members(0, 1, "a", "b"),
        barrier("a", 1, 2, 1, type="fail"),
        members(2.5, 2, "a"),
        barrier("a", 3, 4, 2),
    )
    assert check_barriers(events).ok


def test_a_release_of_an_unobserved_generation_is_unchecked_not_failed() -> None:
    result = check_barriers(history(barrier("a", 1, 2, 7)))
    assert result.ok and result.unchecked == 1


def shards(worker: str, time: float, ids: list[int], *, stale: bool = False, n: int = 4) -> Event:
    value = {"dataset": "d", "epoch": 0, "shard_ids": ids, "num_shards": n, "stale": stale}
    return Event(time, f"worker:{worker}", "ok", "get_shards", value, generation=1)


def test_disjoint_assignments_covering_every_shard_pass() -> None:
    result = check_shards([members(0, 1, "a", "b"), shards("a", 1, [0, 2]), shards("b", 2, [1, 3])])
    assert result.ok and result.checked == 2


def test_a_shard_with_two_owners_is_a_violation_naming_both_answers() -> None:
    a, b = shards("a", 1, [0, 1, 2]), shards("b", 2, [2, 3])
    assert_names(check_shards([members(0, 1, "a", "b"), a, b]), a, b)


def test_a_shard_without_owner_is_a_violation_once_every_member_answered() -> None:
    a, b = shards("a", 1, [0]), shards("b", 2, [1, 3])
    result = check_shards([members(0, 1, "a", "b"), a, b])
    assert_names(result, a, b)
    assert "[2]" in result.violations[0].message


def test_stale_answers_are_skipped_and_non_member_owners_flagged() -> None:
    stale, outsider = shards("a", 1, [0, 1, 2, 3], stale=True), shards("z", 2, [0])
    result = check_shards([members(0, 1, "a", "b"), stale, outsider])
    assert_names(result, outsider)
    assert result.unchecked >= 1


@given(st.lists(st.integers(0, 3), min_size=1, max_size=40), st.data())
def test_any_partition_passes_and_any_shard_given_twice_fails(
    owners: list[int], data: st.DataObject
) -> None:
    workers = [f"w{i}" for i in range(4)]
    answers = [
        shards(w, i, [s for s, o in enumerate(owners) if o == i], n=len(owners))
        for i, w in enumerate(workers)
    ]
    assert check_shards([members(0, 1, *workers), *answers]).ok
    shard = data.draw(st.integers(0, len(owners) - 1))
    thief = data.draw(st.sampled_from([i for i in range(4) if i != owners[shard]]))
    stolen = shards(
        workers[thief], 9, sorted({*answers[thief].value["shard_ids"], shard}), n=len(owners)
    )
    rest = [a for i, a in enumerate(answers) if i != thief]
    assert_names(check_shards([members(0, 1, *workers), *rest, stolen]), stolen)


def commit(
    worker: str,
    start: float,
    end: float,
    step: int,
    *,
    outcome: str = "accepted",
    latest: int | None = None,
    **kw: Any,
) -> tuple[Event, Event]:
    value = {"step": step, "outcome": outcome, "latest_complete_step": latest}
    return op(f"worker:{worker}", "commit", start, end, value, invoke={"step": step}, **kw)


def status(start: float, end: float, latest: int | None) -> tuple[Event, Event]:
    return op("harness", "status", start, end, {"latest_step": latest})


DONE = FinalState(
    complete_steps={10: ("a", "b")},
    latest_step=10,
    verified_parts={(10, "a"): True, (10, "b"): True},
    leader="r1",
    live_workers=("a", "b"),
)


def test_a_complete_step_with_verified_parts_and_a_growing_pointer_passes() -> None:
    events = history(
        status(0, 1, None),
        commit("a", 1, 2, 10),
        commit("b", 1, 3, 10, latest=10),
        status(4, 5, 10),
    )
    result = check_checkpoints(events, DONE)
    assert result.ok and result.checked == 2 + 4


def test_a_complete_step_whose_part_fails_verification_is_a_violation() -> None:
    a, b = commit("a", 1, 2, 10), commit("b", 1, 3, 10, latest=10)
    final = FinalState({10: ("a", "b")}, 10, {(10, "a"): True, (10, "b"): False})
    assert_names(check_checkpoints(history(a, b), final), *b)


def test_a_complete_step_naming_a_worker_that_never_committed_is_a_violation() -> None:
    result = check_checkpoints(history(commit("a", 1, 2, 10)), DONE)
    assert [v.message for v in result.violations] == [
        "step 10 is complete but b never committed it"
    ]


def test_the_latest_step_moving_backwards_is_a_violation_naming_the_pair() -> None:
    newer, older = status(0, 1, 10), status(2, 3, None)
    events = history(commit("a", 0, 1, 10), commit("b", 0, 1, 10), newer, older)
    assert_names(check_checkpoints(events, DONE), newer[1], *older)


def test_a_final_pointer_behind_a_reported_step_is_a_violation() -> None:
    reported = status(0, 1, 20)
    events = history(commit("a", 0, 1, 10), commit("b", 0, 1, 10), reported)
    assert_names(check_checkpoints(events, DONE), reported[1])


def save(worker: str, start: float, end: float, step: int) -> tuple[Event, Event]:
    return op(f"worker:{worker}", "save", start, end, {"step": step}, invoke={"step": step})


def test_every_save_answered_by_a_commit_outcome_passes_even_after_an_info() -> None:
    events = history(
        save("a", 0, 1, 10),
        commit("a", 1, 2, 10, type="info"),
        commit("a", 3, 4, 10, outcome="duplicate"),
        save("a", 5, 6, 20),
        commit("a", 6, 7, 20, outcome="superseded"),
    )
    result = check_commits(events, DONE)
    assert result.ok and result.checked == 2


def test_a_save_never_committed_nor_pending_is_lost() -> None:
    lost = save("a", 0, 1, 10)
    result = check_commits(history(lost, commit("a", 1, 2, 10, type="info")), DONE)
    assert_names(result, lost[1])
    assert "neither committed nor superseded" in result.violations[0].message


def test_commits_pending_after_settle_are_a_violation_and_dead_workers_unchecked() -> None:
    pending, dead = save("a", 0, 1, 10), save("c", 0, 1, 10)
    final = FinalState(live_workers=("a",), pending_commits={"a": 1})
    result = check_commits(history(pending, dead), final)
    assert_names(result, pending[1])
    assert len(result.violations) == 1 and result.unchecked == 1


def test_a_commit_record_accepted_twice_is_a_violation() -> None:
    first, again = commit("a", 0, 1, 10, generation=4), commit("a", 2, 3, 10, generation=4)
    assert_names(check_commits(history(first, again), DONE), first[1], again[1])


def test_a_step_trained_again_after_a_restart_may_be_accepted_under_its_new_generation() -> None:
    first, redone = commit("a", 0, 1, 10, generation=4), commit("a", 5, 6, 10, generation=6)
    assert check_commits(history(first, redone), DONE).ok


def load(worker: str, start: float, end: float, step: int | None) -> tuple[Event, Event]:
    return op(f"worker:{worker}", "load", start, end, {"step": step})


def test_a_restart_loading_the_latest_known_step_passes() -> None:
    events = history(load("a", 0, 1, None), commit("b", 1, 2, 10, latest=10), load("a", 3, 4, 10))
    result = check_loads(events, DONE)
    assert result.ok and result.checked == 2


def test_a_restart_loading_an_older_step_is_a_violation_naming_the_evidence() -> None:
    known, stale = commit("b", 1, 2, 10, latest=10), load("a", 3, 4, 0)
    assert_names(check_loads(history(known, stale), DONE), known[1], *stale)


def test_falling_back_is_legal_when_the_newer_part_fails_verification() -> None:
    final = FinalState({10: ("a",)}, 10, {(10, "a"): False})
    events = history(commit("a", 1, 2, 10, latest=10), load("a", 3, 4, None))
    assert check_loads(events, final).ok


def test_a_load_concurrent_with_the_completion_is_not_judged_by_it() -> None:
    events = history(commit("b", 1, 3, 10, latest=10), load("a", 2, 4, None))
    assert check_loads(events, DONE).ok


def train(worker: str, time: float, step: int) -> Event:
    return ok(time, f"worker:{worker}", "train", step=step)


def test_liveness_passes_when_every_live_worker_trained_during_settle() -> None:
    events = [train("a", 1, 1), train("b", 1, 1), train("a", 8, 2), train("b", 9, 3)]
    assert check_liveness(events, DONE, settle_s=5).ok


def test_the_settle_window_is_the_one_the_harness_noted_not_the_history_tail() -> None:
    settle = Event(4.0, "harness", "info", "settle", {"settle_s": 5})
    events = [
        train("a", 1, 1),
        train("b", 1, 1),
        settle,
        train("a", 6, 2),  # during the settle window [4, 9]
        train("b", 12, 2),  # only after it, while told to stop: proves nothing
        Event(20.0, "worker:a", "ok", "barrier", {"name": "done"}),
    ]
    result = check_liveness(events, DONE, settle_s=5)
    assert [v.message for v in result.violations] == ["b trained no step in the last 5s"]


def test_a_stuck_worker_no_leader_and_pending_commits_fail_liveness() -> None:
    stuck = train("b", 8, 1)
    final = FinalState(leader=None, live_workers=("a", "b"), pending_commits={"a": 2})
    result = check_liveness(
        [train("a", 1, 1), train("b", 2, 1), stuck, train("a", 9, 2)], final, settle_s=5
    )
    messages = [v.message for v in result.violations]
    assert len(messages) == 3 and messages[0] == "no leader at the end of the run"
    assert_names(result, stuck)


def run_through_files(tmp_path: Path, events: list[Event]) -> list[Event]:
    """Record each process into its own JSONL file, then merge them back as the harness does."""
    files: dict[str, History] = {}
    for event in events:
        name = event.process.replace(":", "-")
        files.setdefault(name, History(tmp_path / f"{name}.jsonl", start=0.0)).record(event)
    for recorded in files.values():
        recorded.close()
    return read_history(sorted(tmp_path.glob("*.jsonl")))


def test_a_whole_valid_run_passes_every_checker_after_a_jsonl_round_trip(tmp_path: Path) -> None:
    events = history(
        members(0, 1, "a", "b"),
        load("a", 0.1, 0.2, None),
        load("b", 0.1, 0.3, None),
        write("worker:a", 0.4, 0.5, 5, "r1"),
        claim(0.6, 0.7, "r1", 5),
        shards("a", 1, [0, 2]),
        shards("b", 1.1, [1, 3]),
        barrier("a", 2, 3, 1),
        barrier("b", 2.1, 3, 1),
        save("a", 3.2, 3.5, 10),
        save("b", 3.3, 3.6, 10),
        commit("a", 4, 4.5, 10),
        commit("b", 4, 4.6, 10, latest=10),
        status(5, 5.1, 10),
        train("a", 1, 1),
        train("b", 1, 1),
        train("a", 9, 2),
        train("b", 9, 2),
    )
    replayed = run_through_files(tmp_path, events)
    assert replayed == events
    results = check_all(replayed, DONE, settle_s=5)
    assert [r.name for r in results if not r.ok] == []
    assert all(r.checked > 0 for r in results)


def test_a_violation_found_after_a_jsonl_round_trip_names_the_same_events(tmp_path: Path) -> None:
    known, stale = commit("b", 1, 2, 10, latest=10), load("a", 3, 4, 0)
    replayed = run_through_files(tmp_path, history(known, stale))
    assert check_loads(replayed, DONE).violations[0].events == (known[1], *stale)
