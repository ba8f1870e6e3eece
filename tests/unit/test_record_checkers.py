"""The checkers of etcd's own record, on hand-made revision histories.

Each test replays a short history as etcd would record it (one list of
events per revision) with one invariant broken, and checks that exactly the
checker for that invariant fires, naming the revision.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from dtr.chaos.checker_record import check_record
from dtr.chaos.etcd_record import RecordEvent
from dtr.keys import JobKeys

KEYS = JobKeys("job")
LEADER = KEYS.candidate(0xA)
OTHER = KEYS.candidate(0xB)


class Record:
    """Builds a history revision by revision; ``leader_txn`` stamps like the coordinator."""

    def __init__(self) -> None:
        self.events: list[RecordEvent] = []
        self.revision = 1

    def raw(self, *changes: tuple[str, str, object]) -> Record:
        """One revision of ``(kind, key, value)`` changes (a put's value as JSON or bytes)."""
        self.revision += 1
        for kind, key, value in changes:
            data = value if isinstance(value, bytes) else json.dumps(value).encode()
            self.events.append(RecordEvent(self.revision, kind, key, data, self.revision))
        return self

    def campaign(self, key: str) -> int:
        self.raw(("put", key, {"replica_id": key[-1], "address": "h:1"}))
        return self.revision

    def leader_txn(self, term: int, *puts: tuple[str, object], replica: str = "r0") -> Record:
        stamp = ("put", KEYS.writer, {"replica": replica, "term": term})
        return self.raw(*(("put", k, v) for k, v in puts), stamp)


def member(worker: str, incarnation: int, alive: bool = True) -> tuple[str, object]:
    record = {"worker_id": worker, "capacity": 1.0, "alive": alive, "incarnation": incarnation}
    return KEYS.member(worker), record


def failing(record: Record) -> dict[str, list[str]]:
    results = check_record(record.events, KEYS)
    return {r.name: [v.message for v in r.violations] for r in results if not r.ok}


def joined(record: Record, term: int, workers: Sequence[str], generation: int) -> Record:
    puts = [member(w, 1) for w in workers]
    return record.leader_txn(term, *puts, (KEYS.generation, generation))


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
