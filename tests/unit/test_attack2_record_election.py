"""Attack: record-fencing judges terms by every key under the election prefix.

The elector ignores a key there that is not a candidate it can decode
(coordinator/election.py ``_candidate``: "ignored, logged once"), so the
leader is the lowest *decodable* candidate. The checker takes the lowest
create revision of any key, so a correctly fenced leader's writes are
reported as written under the wrong term.
"""

from __future__ import annotations

import json

from dtr.chaos.checker_record import check_record
from dtr.chaos.etcd_record import RecordEvent
from dtr.keys import JobKeys

KEYS = JobKeys("job")


def test_a_non_candidate_key_under_the_election_prefix_does_not_change_the_term() -> None:
    stray = RecordEvent(2, "put", KEYS.candidate(0x1), b"not a candidate", 2)
    leader = RecordEvent(
        3,
        "put",
        KEYS.candidate(0xA),
        json.dumps({"replica_id": "r0", "address": "h:1"}).encode(),
        3,
    )
    stamp = json.dumps({"replica": "r0", "term": 3}).encode()
    write = [
        RecordEvent(4, "put", KEYS.generation, b"1", 4),
        RecordEvent(4, "put", KEYS.writer, stamp, 4),
    ]
    results = {r.name: r for r in check_record([stray, leader, *write], KEYS)}
    fencing = results["record-fencing"]
    assert fencing.ok, [v.message for v in fencing.violations]
