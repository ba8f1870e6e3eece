"""The key layout: names are validated before they become key segments."""

from __future__ import annotations

import pytest

from dtr.errors import InvalidArgument
from dtr.keys import JobKeys, prefix_range_end, validate_name


def test_every_key_of_a_job_lives_under_the_job_prefix() -> None:
    keys = JobKeys("run-7")
    built = [
        keys.candidate(0xABC),
        keys.replica("coord-0"),
        keys.member("host-1:3"),
        keys.generation,
        keys.dataset("tokens"),
        keys.barrier_state("step-10"),
        keys.barrier_arrival("step-10", "w0"),
        keys.checkpoint_commit(100, "w0"),
        keys.latest_checkpoint,
    ]
    assert keys.prefix == "/dtr/v1/jobs/run-7/"
    assert all(k.startswith(keys.prefix) for k in built)
    assert len(set(built)) == len(built)


def test_candidate_keys_sort_like_their_lease_ids() -> None:
    keys = JobKeys("j")
    ids = [1, 0xFF, 0x1000, 2**62]
    assert sorted(keys.candidate(i) for i in ids) == [keys.candidate(i) for i in sorted(ids)]


def test_checkpoint_steps_sort_numerically_in_byte_order() -> None:
    keys = JobKeys("j")
    steps = [0, 9, 10, 100, 99999, 10**12]
    ordered = sorted(keys.checkpoint_commit(s, "w") for s in steps)
    assert [keys.step_of(k) for k in ordered] == steps


@pytest.mark.parametrize("bad", ["", "a/b", "../x", " x", "x y", "-lead", "x\n", "é", "a" * 129, 7])
def test_names_that_could_escape_their_key_segment_are_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="worker_id"):
        validate_name("worker_id", bad)


def test_bad_job_root_step_and_lease_are_refused_with_the_field_named() -> None:
    with pytest.raises(InvalidArgument, match="job"):
        JobKeys("a/b")
    with pytest.raises(InvalidArgument, match="root"):
        JobKeys("j", root="relative")
    with pytest.raises(InvalidArgument, match="step"):
        JobKeys("j").checkpoint_commit(-1, "w")
    with pytest.raises(InvalidArgument, match="step"):
        JobKeys("j").checkpoint_commit(True, "w")
    with pytest.raises(InvalidArgument, match="lease_id"):
        JobKeys("j").candidate(0)


def test_prefix_range_end_covers_exactly_the_prefix() -> None:
    prefix = "/dtr/v1/jobs/j/"
    end = prefix_range_end(prefix)
    inside, sibling = prefix + "zzz", "/dtr/v1/jobs/j0"
    assert prefix < inside < end
    assert sibling >= end
    assert prefix_range_end("") == "\0"


def test_last_segment_names_the_child_below_a_prefix() -> None:
    keys = JobKeys("j")
    assert keys.last_segment(keys.barrier_arrival("b", "w3"), keys.barriers_prefix) == "b"
    with pytest.raises(InvalidArgument):
        keys.last_segment("/elsewhere/x", keys.members_prefix)


def test_rendezvous_keys_stay_inside_their_rendezvous() -> None:
    keys = JobKeys("j")
    prefix = keys.rendezvous_prefix("run-1")
    assert prefix == "/dtr/v1/jobs/j/rendezvous/run-1/"
    assert keys.rendezvous_state("run-1") == prefix + "state"
    # torch's store keys carry "/" and anything else: hex keeps them one segment.
    store_key = keys.rendezvous_store("run-1", "torch.rendezvous.run-1.0/MASTER_ADDR")
    segment = store_key.removeprefix(prefix + "store/")
    assert "/" not in segment
    assert bytes.fromhex(segment).decode() == "torch.rendezvous.run-1.0/MASTER_ADDR"
    assert keys.rendezvous_add("run-1", "ab12").startswith(prefix + "adds/")
    for bad in ("", "a/b", "../x", "a b", "x" * 129):
        with pytest.raises(InvalidArgument, match="rdzv_id"):
            keys.rendezvous_state(bad)
