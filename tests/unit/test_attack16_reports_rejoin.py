"""Attack on issue 16: ``record-reports`` judges a barrier by the registration at its *answer*.

A simulated worker records every rejoin (``sim_member.register``). If its
barrier call was answered "released" only after it re-registered (the
release landed while incarnation 1 was live and had arrived; the answer
came back after a heartbeat failure made it rejoin as incarnation 2),
``_check_barriers`` takes the registration in force at the ``ok`` event
(incarnation 2) and flags a release that was correct for the incarnation
that arrived (the one in force at the barrier's ``invoke``): a false failure.
"""

from __future__ import annotations

from record_support import KEYS, LEADER, Record, joined, member

from dtr.chaos.checker_record import replay_record
from dtr.chaos.checker_reports import check_reports
from dtr.chaos.history import Event

W = "worker:s0-0"


def test_a_release_answered_after_a_rejoin_is_judged_by_the_arriving_incarnation() -> None:
    record = Record()
    term = record.campaign(LEADER)
    joined(record, term, ["s0-0"], 1)
    record.leader_txn(
        term,
        (KEYS.barrier_arrival("step-10", "s0-0"), {"generation": 1, "incarnation": 1}),
        (KEYS.barrier_state("step-10"), {"generation": 1, "released": True}),
    )
    record.leader_txn(term, member("s0-0", 2), (KEYS.generation, 2))  # the rejoin, later
    history = [
        Event(1.0, W, "ok", "register", {"incarnation": 1}, "s#1"),
        Event(2.0, W, "invoke", "barrier", {"name": "step-10", "generation": 1}, "s#2"),
        Event(2.5, W, "invoke", "register", {"rejoin": True}, "s#3"),
        Event(3.0, W, "ok", "register", {"incarnation": 2}, "s#3"),
        Event(4.0, W, "ok", "barrier", {"name": "step-10", "generation": 1}, "s#2"),
    ]
    result = check_reports(history, replay_record(record.events, KEYS).facts)
    assert result.checked == 1
    assert result.ok, [v.message for v in result.violations]
