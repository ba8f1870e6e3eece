"""A simulated worker's commit records: kept in memory, delivered in order until answered.

The real worker appends each record to a SQLite queue on disk (``CommitQueue``)
before its ``CommitFlusher`` thread delivers it, so a crash loses nothing
(DESIGN §5 invariant 5). A simulated worker keeps its records **in memory
only**: hundreds of SQLite files fsynced per checkpoint would cost the
machine more than the coordinators under test, and a simulated process is
never restarted expecting its queue back. A killed simulated process thus
loses its unanswered records, which the checkers count as unchecked (the
worker is not live at the end), never as lost.

Delivery mirrors ``CommitFlusher``: oldest first, the head record sent again
until the coordinator gives a verdict; each send is one ``commit`` operation
in the history (``invoke {"step"}``, then ``ok`` with the ``CommitAck`` or
``info`` when its outcome is unknown), as the checkers' schema says;
``InvalidArgument`` / ``AlreadyExists`` reject the record for good; rounds
that fail back off with the flusher's equal-jitter backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random

from dtr.errors import DtrError
from dtr.proto import coordinator_pb2 as pb
from dtr.worker.checkpoint_rpc import commit_ack, commit_request
from dtr.worker.commit_flusher import REJECTING_ERRORS, CommitAck
from dtr.worker.commit_queue import CommitOutcome, CommitRecord

from .sim_member import SimMember

_log = logging.getLogger(__name__)
#: One send's retry budget, as ``CheckpointManager`` gives its flusher.
COMMIT_DEADLINE_S = 10.0


class CommitSender:
    """In-memory commit queue of one simulated worker and its delivery task."""

    def __init__(self, member: SimMember) -> None:
        self.member = member
        self._queue: asyncio.Queue[CommitRecord] = asyncio.Queue()
        self.last_committed_step: int | None = None
        #: Records not answered yet (the one being sent included).
        self.depth = 0

    def append(self, record: CommitRecord) -> None:
        self.depth += 1
        self._queue.put_nowait(record)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every record is answered; False when ``timeout_s`` ran out first."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def deliver_forever(self) -> None:
        """Deliver records oldest first until cancelled; the head is retried until answered."""
        while True:
            record = await self._queue.get()
            failures = 0
            while (ack := await self._send(record)) is None:
                failures += 1
                await asyncio.sleep(self._backoff_s(failures))
            if ack.outcome.is_committed:
                self.last_committed_step = max(record.step, self.last_committed_step or 0)
            self.depth -= 1
            self._queue.task_done()

    async def _send(self, record: CommitRecord) -> CommitAck | None:
        """One recorded send: its ack, or None when the outcome is unknown (send again)."""
        recorder, member = self.member.recorder, self.member
        op_id = recorder.op_id()
        recorder.event(
            "invoke", "commit", {"step": record.step}, op_id, generation=record.generation
        )
        try:
            response: pb.CommitCheckpointResponse = await member.call(
                "CommitCheckpoint",
                lambda: commit_request(record),
                operation=f"commit checkpoint step {record.step}",
                mutating=True,
                policy=member.client.policy.with_deadline(COMMIT_DEADLINE_S),
            )
            ack = commit_ack(response)
        except REJECTING_ERRORS as err:
            _log.error(
                "%s: commit of step %d rejected for good: %s", member.worker_id, record.step, err
            )
            ack = CommitAck(CommitOutcome.REJECTED)
        except DtrError as err:
            value = {"step": record.step, "error": type(err).__name__}
            recorder.event("info", "commit", value, op_id, generation=record.generation)
            return None
        value = {
            "step": record.step,
            "outcome": str(ack.outcome),
            "step_complete": ack.step_complete,
            "latest_complete_step": ack.latest_complete_step,
        }
        recorder.event("ok", "commit", value, op_id, generation=record.generation)
        return ack

    def _backoff_s(self, failures: int) -> float:
        """``CommitFlusher``'s backoff: exponential, capped, at least half the ceiling."""
        policy = self.member.client.policy
        ceiling = min(policy.max_backoff_s, policy.initial_backoff_s * 2 ** min(failures - 1, 32))
        return random.uniform(ceiling / 2, ceiling)
