"""The record's deadlines: a stall fails fast, a long steady read does not.

A soak's record is millions of revisions, so waiting for it is bounded by how
long nothing arrives (``stall_s``) and by a generous overall bound, never by
a flat timeout; a compacted record is refused saying so.
"""

from __future__ import annotations

import pytest

from dtr.chaos.etcd_record import _check_deadlines, _raise_error
from dtr.errors import StoreError, WatchCompacted
from dtr.keys import JobKeys

KEYS = JobKeys("job")


def test_nothing_arriving_for_the_stall_timeout_fails_naming_the_stall() -> None:
    with pytest.raises(StoreError, match=r"stalled: nothing arrived for 30 s \(95 s into"):
        _check_deadlines(KEYS, elapsed_s=95.0, quiet_s=31.0, stall_s=30.0, overall_s=3600.0)


def test_a_long_read_that_keeps_arriving_is_not_a_stall() -> None:
    _check_deadlines(KEYS, elapsed_s=900.0, quiet_s=1.0, stall_s=30.0, overall_s=3600.0)


def test_a_read_past_the_overall_bound_fails_even_while_events_arrive() -> None:
    with pytest.raises(StoreError, match=r"took longer than 10 s"):
        _check_deadlines(KEYS, elapsed_s=11.0, quiet_s=0.0, stall_s=5.0, overall_s=10.0)


def test_a_compacted_watch_is_refused_saying_the_record_is_incomplete() -> None:
    with pytest.raises(WatchCompacted, match=r"is incomplete: etcd compacted revisions"):
        _raise_error(WatchCompacted("revision 1 was compacted"), KEYS)
    _raise_error(None, KEYS)
