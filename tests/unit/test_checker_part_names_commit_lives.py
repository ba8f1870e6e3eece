"""``record-part-names`` on a hand-made record, ``commit-lives`` on hand-made histories."""

from __future__ import annotations

from record_support import KEYS, LEADER, Record, joined

from dtr.chaos.checker_commit_lives import check_commit_lives
from dtr.chaos.checker_part_names import check_part_names
from dtr.chaos.history import Event


def stored(uri: str, digest: str, generation: int = 1) -> dict[str, object]:
    return {"uri": uri, "size_bytes": 10, "hex_digest": digest, "generation": generation}


def test_one_uri_named_with_two_checksums_is_an_overwrite() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a"], 1)
    record.leader_txn(term, (KEYS.checkpoint_commit(20, "a"), stored("file:///s/a.dtr", "aa")))
    again = record.leader_txn(
        term, (KEYS.checkpoint_commit(20, "a"), stored("file:///s/a.dtr", "bb", 2))
    ).revision
    result = check_part_names(record.events, KEYS)
    assert not result.ok and result.checked == 2
    message = result.violations[0].message
    assert message.startswith(
        f"revision {again}: part 00000000000000000020/a names file:///s/a.dtr"
    )
    assert message.endswith("checksum aa: the object was overwritten")


def test_the_same_content_under_one_uri_and_distinct_uris_pass() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["a", "b"], 1)
    shared = stored("file:///s/replicated.1-ab.dtr", "cc")
    record.leader_txn(term, (KEYS.checkpoint_commit(20, "a"), shared))
    record.leader_txn(term, (KEYS.checkpoint_commit(20, "b"), shared))  # replicated: one object
    record.leader_txn(term, (KEYS.checkpoint_commit(40, "a"), stored("file:///s/a.1-x.dtr", "dd")))
    assert check_part_names(record.events, KEYS).ok


def register(time: float, worker: str, life: str) -> Event:
    return Event(time, f"worker:{worker}", "ok", "register", {"incarnation": 1, "job_life": life})


def save(time: float, worker: str, step: int, life: str, op: str) -> list[Event]:
    process = f"worker:{worker}"
    return [
        Event(time, process, "invoke", "save", {"step": step}, op),
        Event(time, process, "ok", "save", {"step": step, "job_life": life}, op),
    ]


def commit(time: float, worker: str, step: int, outcome: str = "accepted") -> Event:
    value = {"step": step, "outcome": outcome}
    return Event(time, f"worker:{worker}", "ok", "commit", value, generation=3)


def test_a_commit_accepted_before_its_worker_saved_the_step_in_that_life_is_flagged() -> None:
    events = [
        register(1.0, "w1", "c/old"),
        *save(2.0, "w1", 160, "c/old", "w1#1"),
        register(5.0, "w1", "c/new"),
        commit(5.1, "w1", 160),  # the old life's record, replayed into the new life
        *save(9.0, "w1", 160, "c/new", "w1#2"),
        commit(9.1, "w1", 160, "duplicate"),
    ]
    result = check_commit_lives(events)
    assert not result.ok and result.checked == 2
    assert result.violations[0].message == (
        "w1 reported its commit of step 160 accepted (t=5.1s, job life c/new), "
        "but saved no step 160 in that life before it"
    )


def test_a_commit_of_a_save_by_an_earlier_process_of_the_same_life_passes() -> None:
    events = [
        register(1.0, "w1", "c/one"),
        *save(2.0, "w1", 20, "c/one", "w1#1"),
        register(5.0, "w1", "c/one"),  # restarted under its id, same life
        commit(5.1, "w1", 20),
        commit(5.2, "w1", 40, "superseded"),  # not committed: not judged
    ]
    result = check_commit_lives(events)
    assert result.ok and result.checked == 1


def test_a_commit_with_no_save_reported_at_all_is_unchecked() -> None:
    result = check_commit_lives([register(1.0, "w1", "c/one"), commit(2.0, "w1", 20)])
    assert result.ok and result.checked == 0 and result.unchecked == 1
