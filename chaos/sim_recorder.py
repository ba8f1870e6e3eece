"""What one simulated worker writes into its process's history (the ``dtr.chaos.checkers`` schema).

Every simulated worker of a process records into the process's one
``History`` (one writer per file, one event loop, so no interleaving), under
``worker:<id>`` like ``dtr.chaos.workload``, so the same checkers judge
simulated and real workers alike.

``write`` events (invariant 1) are recorded from the client's answer hook:
for each mutating call a coordinator accepted, an ``invoke`` stamped with
the start of the attempt that succeeded and an ``ok`` carrying the answer's
term and replica. Recording both once the answer is in costs nothing for the
failed attempts (the checker ignores writes that did not succeed) and still
gives every write its real start, so "terms only grow" is judged in real
time. Events carry explicit times; ``read_history`` orders them.
"""

from __future__ import annotations

from typing import Any

from dtr.proto import coordinator_pb2 as pb

from .history import Event, EventType, History


class Recorder:
    """Events of one simulated worker: ``invoke`` then ``ok`` / ``fail`` / ``info``."""

    def __init__(self, history: History, worker_id: str) -> None:
        self.history = history
        self.process = f"worker:{worker_id}"

    def op_id(self) -> str:
        return self.history.op_id(self.process)

    def event(
        self,
        kind: EventType,
        f: str,
        value: dict[str, Any],
        op_id: str | None = None,
        *,
        at: float | None = None,
        term: int | None = None,
        generation: int | None = None,
    ) -> None:
        """Record one event; ``at`` is a ``time.monotonic()`` instant (default: now)."""
        when = self.history.clock() if at is None else at - self.history.start
        self.history.record(Event(when, self.process, kind, f, value, op_id, term, generation))

    def write(self, method: str, started: float, header: pb.ResponseHeader) -> None:
        """An accepted mutating call: its invoke (at ``started``) and its ok."""
        if not header.term or not header.is_leader:
            # No leader term, or not the leader's answer (a follower answering a
            # released barrier stamps the newest term it knows, another replica's):
            # nothing the fencing checker can judge.
            return
        op_id = self.op_id()
        self.event("invoke", "write", {"rpc": method}, op_id, at=started)
        value = {"replica": header.replica_id, "rpc": method}
        self.event("ok", "write", value, op_id, term=header.term, generation=header.generation)
