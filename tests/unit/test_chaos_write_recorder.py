"""Which answers the chaos recorders count as leader writes (the ``writes`` checker's input).

The soak of 2026-12-05 found ``writes`` flagging "term T: writes of 2
replicas succeeded": a replica that had just lost the leadership answered
calls whose writes it had made, fenced, under its own older term, but the
answer's header carried the newest term it knew (the new leader's). etcd's
record (``record-fencing``) showed every write fenced by its writer's term.
Only answers a replica gives as leader are writes.
"""

from __future__ import annotations

from pathlib import Path

from dtr.chaos.history import History, read_history
from dtr.chaos.sim_recorder import Recorder
from dtr.proto import coordinator_pb2 as pb


def test_only_the_leaders_answers_are_recorded_as_writes(tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl"
    with History(path) as history:
        recorder = Recorder(history, "s0-0")
        leader = pb.ResponseHeader(term=7, replica_id="replica-1", is_leader=True)
        follower = pb.ResponseHeader(term=9, replica_id="replica-1", is_leader=False)
        recorder.write("Barrier", 0.0, leader)
        recorder.write("Barrier", 0.0, follower)
        recorder.write("Barrier", 0.0, pb.ResponseHeader(term=0, is_leader=True))

    writes = [e for e in read_history([path]) if e.f == "write" and e.type == "ok"]
    assert [(e.term, e.value["replica"]) for e in writes] == [(7, "replica-1")]
