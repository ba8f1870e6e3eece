"""Attack on issue 16: ``record-barriers`` never checks "released exactly once".

DESIGN §5 invariant 2: "A barrier generation is released exactly once".
``checker_record._check_release`` judges each release on its own (every
live incarnation arrived); a second release of the same barrier and
generation in the same job life (say after retention forgot the first,
or a new leader rewriting it) passes, so half of invariant 2 is unchecked
while the report says ``record-barriers`` judged it.
"""

from __future__ import annotations

from record_support import KEYS, LEADER, Record, joined

from dtr.chaos.checker_record import check_record


def release(record: Record, term: int) -> None:
    record.leader_txn(
        term,
        (KEYS.barrier_arrival("step-10", "a"), {"generation": 1, "incarnation": 1}),
        (KEYS.barrier_state("step-10"), {"generation": 1, "released": True}),
    )


def test_one_barrier_generation_released_twice_in_one_life_is_flagged() -> None:
    record = Record()
    term = record.campaign(LEADER)
    record.leader_txn(term, (KEYS.job_life, b"u1"))
    joined(record, term, ["a"], 1)
    release(record, term)
    record.raw(("delete", KEYS.barrier_state("step-10"), b""))  # forgotten ...
    release(record, term)  # ... and released again, same generation, same life
    barriers = next(r for r in check_record(record.events, KEYS) if r.name == "record-barriers")
    assert barriers.checked == 2
    assert not barriers.ok, "barrier step-10 generation 1 was released twice; nothing said so"
    assert [v.message for v in barriers.violations] == [
        f"revision {record.revision}: barrier step-10 released again for generation 1 "
        f"in the same job life (first at revision {record.revision - 2})"
    ]


def test_the_same_barrier_generation_released_again_in_a_new_life_passes() -> None:
    record = Record()
    term = record.campaign(LEADER)
    for life in (b"u1", b"u2"):  # a new uid starts a new life: the job was wiped and restarted
        record.leader_txn(term, (KEYS.job_life, life))
        joined(record, term, ["a"], 1)
        release(record, term)
    barriers = next(r for r in check_record(record.events, KEYS) if r.name == "record-barriers")
    assert barriers.checked == 2
    assert barriers.ok, [v.message for v in barriers.violations]
