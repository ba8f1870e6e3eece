"""``record-completion`` on hand-made records: the last part's revision completes the step."""

from __future__ import annotations

from record_support import KEYS, LEADER, Record, complete, completing, joined, member, part

from dtr.chaos.checker_completion import check_completion


def test_the_last_part_written_without_the_complete_record_is_flagged() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    record.leader_txn(term, (KEYS.checkpoint_commit(20, "a"), part(1, "a")))
    last = record.leader_txn(term, (KEYS.checkpoint_commit(20, "b"), part(1, "b"))).revision
    result = check_completion(record.events, KEYS)
    assert not result.ok and result.checked == 2
    assert result.violations[0].message == (
        f"revision {last}: step 20: every live member of generation 1 has a part (2), "
        "but the step was not completed"
    )


def test_a_completing_commit_a_superseded_step_and_a_membership_change_pass() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    record.leader_txn(term, (KEYS.checkpoint_commit(20, "a"), part(1, "a")))
    completing(record, term, 20, complete(20, 1, 2), "b")
    record.leader_txn(term, (KEYS.checkpoint_commit(40, "a"), part(1, "a")))
    record.leader_txn(term, member("b", 1, alive=False), (KEYS.generation, 2))
    record.leader_txn(term, (KEYS.checkpoint_commit(40, "c"), part(1, "c")))  # gen 1: old
    completing(record, term, 60, complete(60, 2, 1), "a")
    record.leader_txn(term, (KEYS.checkpoint_commit(40, "b"), part(2, "b")))  # 60 complete
    result = check_completion(record.events, KEYS)
    assert result.ok and result.checked == 6
