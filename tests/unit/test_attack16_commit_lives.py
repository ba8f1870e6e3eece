"""Attack on issue 16: a save of unknown outcome excuses commits and parts of *another* life.

``commit-lives`` and ``record-reports`` count a commit (a part) as unchecked
when the worker has *any* save of that step whose outcome is unknown, keyed
by (worker, step) only: neither the save's job life nor its time is looked
at. Their own rationale ("a save whose process died before its outcome may
still have been queued and committed by the next process") holds only for a
save of the same life made before the commit. A save cut short in the old
life (``job-restart`` kills workers mid-save) then excuses exactly the
cross-life replay these checks exist to see (``replay-other-life``).
"""

from __future__ import annotations

from record_support import KEYS, LEADER, Record, joined

from dtr.chaos.checker_commit_lives import check_commit_lives
from dtr.chaos.checker_record import replay_record
from dtr.chaos.checker_reports import check_reports
from dtr.chaos.history import Event


def register(time: float, life: str) -> Event:
    return Event(time, "worker:w1", "ok", "register", {"incarnation": 1, "job_life": life})


def save_cut_short(time: float, step: int, op: str) -> Event:
    """A save invoke whose process was SIGKILLed before the outcome (no completion)."""
    return Event(time, "worker:w1", "invoke", "save", {"step": step}, op)


def save_ok(time: float, step: int, life: str, op: str) -> list[Event]:
    return [
        Event(time, "worker:w1", "invoke", "save", {"step": step}, op),
        Event(time + 0.1, "worker:w1", "ok", "save", {"step": step, "job_life": life}, op),
    ]


def commit(time: float, step: int) -> Event:
    value = {"step": step, "outcome": "accepted"}
    return Event(time, "worker:w1", "ok", "commit", value, generation=1)


def test_an_old_life_save_cut_short_does_not_excuse_a_new_life_commit() -> None:
    control = check_commit_lives([register(1.0, "c/old"), register(5.0, "c/new"), commit(5.1, 160)])
    assert control.ok and control.unchecked == 1  # no save at all: unchecked (by design)
    events = [
        register(1.0, "c/old"),
        save_cut_short(2.0, 160, "w1#1"),  # killed by job-restart mid-save, in the OLD life
        register(5.0, "c/new"),  # the job was wiped: a new life, training from step 0
        commit(5.1, 160),  # the old life's queued record replayed into the new life
    ]
    result = check_commit_lives(events)
    assert not result.ok, (
        f"checked={result.checked} unchecked={result.unchecked}: a new-life commit of a step "
        "saved (outcome unknown) only in the old life was waved through as unchecked"
    )


def test_a_later_save_cut_short_does_not_excuse_an_earlier_commit() -> None:
    events = [
        register(1.0, "c/old"),
        *save_ok(2.0, 160, "c/old", "w1#1"),
        register(5.0, "c/new"),
        commit(5.1, 160),  # flagged on its own (see the project's own test) ...
        save_cut_short(9.0, 160, "w1#2"),  # ... until a save made AFTER it is cut short
    ]
    result = check_commit_lives(events)
    assert not result.ok, (
        f"checked={result.checked} unchecked={result.unchecked}: a save begun after the "
        "commit excused it"
    )


def two_lives_with_a_new_life_part() -> Record:
    """Life u1 (w joins), a wipe, life u2 whose record holds w's part of step 10."""
    record = Record()
    term = record.campaign(LEADER)
    record.leader_txn(term, (KEYS.job_life, b"u1"))
    joined(record, term, ["w1"], 1)
    record.raw(("delete", KEYS.job_life, b""), ("delete", KEYS.member("w1"), b""))  # the wipe
    record.leader_txn(term, (KEYS.job_life, b"u2"))
    joined(record, term, ["w1", "w2"], 1)
    part = {"worker_id": "w1", "generation": 1, "uri": "file:///p/w1-10"}
    record.leader_txn(term, (KEYS.checkpoint_commit(10, "w1"), part))
    return record


def test_record_reports_an_old_life_save_cut_short_does_not_excuse_a_new_life_part() -> None:
    facts = replay_record(two_lives_with_a_new_life_part().events, KEYS).facts
    assert (1, 10, "w1") in facts.parts  # the part is life u2's (index 1)
    control = check_reports([register(1.0, "7/u1"), register(5.0, "7/u2")], facts)
    assert not control.ok  # without the cut-short save, the part is flagged
    history = [
        register(1.0, "7/u1"),
        save_cut_short(2.0, 10, "w1#1"),  # cut short in life u1
        register(5.0, "7/u2"),  # life u2: w1 never saved step 10 in it
    ]
    result = check_reports(history, facts)
    assert not result.ok, (
        f"checked={result.checked} unchecked={result.unchecked}: life u2's part of step 10 "
        "was excused by a save cut short in life u1"
    )
