"""The checkers of etcd's own record, on hand-made revision histories.

Each test replays a short history as etcd would record it (one list of
events per revision) with one invariant broken, and checks that exactly the
checker for that invariant fires, naming the revision.
"""

from __future__ import annotations

from record_support import (
    KEYS,
    LEADER,
    OTHER,
    Record,
    complete,
    completing,
    joined,
    member,
    part,
)

from dtr.chaos.checker_record import check_record, replay_record


def failing(record: Record) -> dict[str, list[str]]:
    results = check_record(record.events, KEYS)
    return {r.name: [v.message for v in r.violations] for r in results if not r.ok}


def test_a_clean_history_passes_every_record_check() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    record.leader_txn(term, (KEYS.barrier_arrival("s", "a"), {"generation": 1, "incarnation": 1}))
    record.leader_txn(
        term,
        (KEYS.barrier_arrival("s", "b"), {"generation": 1, "incarnation": 1}),
        (KEYS.barrier_state("s"), {"generation": 1, "released": True}),
    )
    assert failing(record) == {}
    checked = {r.name: r.checked for r in check_record(record.events, KEYS)}
    assert checked["record-fencing"] == 3 and checked["record-barriers"] == 1


def test_a_write_without_the_stamp_or_under_a_stale_term_breaks_fencing() -> None:
    record = Record()
    old = record.campaign(LEADER)
    record.raw(("put", KEYS.generation, 1))  # nobody named as the writer
    new = record.campaign(OTHER)
    record.raw(("delete", LEADER, b""))  # the old leader's lease expired: OTHER leads
    record.leader_txn(old, (KEYS.generation, 2), replica="zombie")
    record.leader_txn(new, (KEYS.generation, 3))
    messages = failing(record)["record-fencing"]
    assert any("without the writer stamp" in m for m in messages)
    assert any(
        f"zombie wrote under term {old} while the current term was {new}" in m for m in messages
    )
    assert set(failing(record)) == {"record-fencing"}


def test_a_release_counting_an_older_incarnations_arrival_is_caught() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "w"], 1)
    record.leader_txn(term, (KEYS.barrier_arrival("b", "w"), {"generation": 1, "incarnation": 1}))
    record.leader_txn(term, member("w", 2))  # restarted: a new incarnation
    record.leader_txn(
        term,
        (KEYS.barrier_arrival("b", "a"), {"generation": 1, "incarnation": 1}),
        (KEYS.barrier_state("b"), {"generation": 1, "released": True}),
    )
    assert failing(record) == {
        "record-barriers": [
            f"revision {record.revision}: barrier b released on an arrival of w's "
            "incarnation 1; the live one is 2"
        ]
    }


def test_a_release_without_a_live_member_or_for_an_old_generation_is_caught() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    record.leader_txn(
        term,
        (KEYS.barrier_arrival("x", "a"), {"generation": 1, "incarnation": 1}),
        (KEYS.barrier_state("x"), {"generation": 1, "released": True}),
    )
    joined(record, term, ["c"], 2)
    record.leader_txn(term, (KEYS.barrier_state("y"), {"generation": 1, "released": True}))
    messages = failing(record)["record-barriers"]
    assert any("barrier x released without live member b" in m for m in messages)
    assert any("barrier y released for generation 1 while the job was at 2" in m for m in messages)


def test_latest_moving_back_and_a_step_that_never_completed_are_caught() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    latest = KEYS.latest_checkpoint
    record.leader_txn(term, (latest, {"step": 20, "generation": 1, "num_workers": 2}))
    record.leader_txn(term, (latest, {"step": 10, "generation": 1, "num_workers": 2}))
    part = {"generation": 1, "uri": "file:///p"}
    record.leader_txn(term, (KEYS.checkpoint_commit(30, "a"), part))
    record.leader_txn(term, (KEYS.checkpoint_commit(30, "b"), part))  # and no complete/30
    messages = failing(record)["record-checkpoints"]
    assert any("latest moved back 20 -> 10" in m for m in messages)
    assert any("step 30: every live member of generation 1 committed (2)" in m for m in messages)


def test_a_member_record_going_back_to_an_older_incarnation_is_caught() -> None:
    record = Record()
    term = record.campaign(LEADER)
    record.leader_txn(term, member("w", 3), (KEYS.generation, 1))
    record.leader_txn(term, member("w", 2), (KEYS.generation, 2))
    stamp = {"replica": "r0", "term": term}
    record.raw(("delete", KEYS.member("w"), b""), ("put", KEYS.writer, stamp))
    record.leader_txn(term, member("w", 1), (KEYS.generation, 3))  # deregistered: starts again
    assert failing(record) == {
        "record-members": ["revision 4: member w went back from incarnation 3 to 2"]
    }


def test_a_step_completed_with_one_part_per_live_member_passes() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    record.leader_txn(term, (KEYS.checkpoint_commit(10, "a"), part(1, "a")))
    completing(record, term, 10, complete(10, 1, 2), "b")
    assert failing(record) == {}


def test_a_step_completed_without_a_live_members_part_is_caught() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    completing(record, term, 10, complete(10, 1, 2), "a")  # b never committed
    assert failing(record) == {
        "record-checkpoints": [
            f"revision {record.revision}: step 10 completed without the part of live member(s) b"
        ]
    }


def test_a_part_of_a_non_member_or_a_wrong_count_in_a_complete_step_is_caught() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a"], 1)
    record.leader_txn(term, (KEYS.checkpoint_commit(10, "ghost"), part(1, "ghost")))
    completing(record, term, 10, complete(10, 1, 3), "a")
    messages = failing(record)["record-checkpoints"]
    assert messages == [
        f"revision {record.revision}: step 10 completed with parts of generation 1 from "
        "non-members ghost",
        f"revision {record.revision}: step 10 complete record counts 3 workers; 1 were live "
        "members",
    ]


def test_a_step_completed_under_an_old_generation_or_twice_is_caught() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a"], 1)
    completing(record, term, 10, complete(10, 1, 1), "a")
    joined(record, term, ["a"], 2)
    completing(record, term, 20, complete(20, 1, 1), "a")  # the job is at generation 2
    stale = record.revision
    completing(record, term, 10, complete(10, 2, 1), "a")  # step 10 again, same life
    assert failing(record) == {
        "record-checkpoints": [
            f"revision {stale}: step 20 completed under generation 1 while the job was at 2",
            f"revision {record.revision}: step 10 completed again in the same job life",
            f"revision {record.revision}: latest moved back 20 -> 10",
        ]
    }


def wipe(record: Record) -> Record:
    """What ``job-restart`` does to etcd: every key of the job deleted in one revision."""
    live: dict[str, None] = {}
    for event in record.events:
        if event.kind == "put":
            live[event.key] = None
        else:
            live.pop(event.key, None)
    return record.raw(*(("delete", key, b"") for key in live))


def two_lives() -> tuple[Record, int]:
    """Life u1 reaches step 20 with w at incarnation 3; it is wiped; life u2 starts over."""
    record = Record()
    term = record.campaign(LEADER)
    record.leader_txn(term, (KEYS.job_life, b"u1"))
    record.leader_txn(term, member("w", 3), (KEYS.generation, 1))
    completing(record, term, 20, complete(20, 1, 1), "w")
    wipe(record)
    term = record.campaign(OTHER)
    record.leader_txn(term, (KEYS.job_life, b"u2"))
    record.leader_txn(term, member("w", 1), (KEYS.generation, 1))  # incarnations restart
    completing(record, term, 10, complete(10, 1, 1), "w")  # latest back, across lives
    completing(record, term, 20, complete(20, 1, 1), "w")  # step 20 completes again
    return record, term


def test_a_new_job_life_starts_the_replay_over() -> None:
    record, _ = two_lives()
    assert failing(record) == {}
    replay = replay_record(record.events, KEYS)
    assert replay.facts.lives == ["u1", "u2"]
    assert [(r.step, sorted(r.parts)) for r in replay.facts.retained] == [(10, ["w"]), (20, ["w"])]
    assert replay.facts.parts == {(0, 20, "w"), (1, 10, "w"), (1, 20, "w")}


def test_within_the_second_life_every_rule_still_holds() -> None:
    record, term = two_lives()
    completing(record, term, 15, complete(15, 1, 1), "w")  # latest 20 -> 15 in life u2
    record.leader_txn(term, member("w", 0))  # back from incarnation 1 within life u2
    found = failing(record)
    assert found["record-checkpoints"] == [
        f"revision {record.revision - 1}: latest moved back 20 -> 15"
    ]
    assert found["record-members"] == [
        f"revision {record.revision}: member w went back from incarnation 1 to 0"
    ]


def test_a_new_life_uid_without_a_wipe_also_starts_over() -> None:
    record = Record()
    term = record.campaign(LEADER)
    record.leader_txn(term, (KEYS.job_life, b"u1"), member("w", 5), (KEYS.generation, 1))
    completing(record, term, 20, complete(20, 1, 1), "w")
    record.leader_txn(term, (KEYS.job_life, b"u2"), member("w", 1), (KEYS.generation, 1))
    completing(record, term, 10, complete(10, 1, 1), "w")
    assert failing(record) == {}
    assert replay_record(record.events, KEYS).facts.lives == ["u1", "u2"]
