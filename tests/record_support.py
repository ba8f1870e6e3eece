"""Hand-made records of etcd, revision by revision, for the record checkers' tests.

``Record`` builds a history as etcd would record it (one list of events per
revision); ``leader_txn`` stamps like the coordinator does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

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


def joined(record: Record, term: int, workers: Sequence[str], generation: int) -> Record:
    puts = [member(w, 1) for w in workers]
    return record.leader_txn(term, *puts, (KEYS.generation, generation))


def part(generation: int, worker: str = "w") -> dict[str, object]:
    return {"worker_id": worker, "generation": generation, "uri": f"file:///p/{worker}"}


def complete(step: int, generation: int, count: int) -> dict[str, object]:
    return {"step": step, "generation": generation, "num_workers": count}


def completing(record: Record, term: int, step: int, done: dict[str, object], *parts: str) -> None:
    """One commit transaction: the last parts, the complete record and ``latest``."""
    puts = [(KEYS.checkpoint_commit(step, w), part(int(str(done["generation"])), w)) for w in parts]
    record.leader_txn(
        term, *puts, (KEYS.checkpoint_complete(step), done), (KEYS.latest_checkpoint, done)
    )
