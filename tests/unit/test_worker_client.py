"""The worker client's pure parts: coordinator lists and where the next attempt goes.

Nothing here dials: channels are created lazily and these tests never call.
Leader following against real replicas is in tests/integration/test_worker.py.
"""

from __future__ import annotations

import grpc
import pytest

from dtr.errors import InvalidArgument
from dtr.proto import ERROR_KIND_METADATA_KEY, LEADER_METADATA_KEY, NOT_LEADER
from dtr.proto import coordinator_pb2 as pb
from dtr.worker.client import CoordinatorClient, parse_coordinators
from helpers import StatusError

A, B, C = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("10.0.0.1:50051", ("10.0.0.1:50051",)),
        (" a.example:1 , b-2.example:65535 ", ("a.example:1", "b-2.example:65535")),
        ([A, B, A], (A, B)),
        ("[::1]:50051", ("[::1]:50051",)),
    ],
)
def test_coordinator_lists_are_parsed_in_order_without_duplicates(
    given: str | list[str], expected: tuple[str, ...]
) -> None:
    assert parse_coordinators(given) == expected


@pytest.mark.parametrize(
    "bad",
    ["", ",", "host", "host:", ":50051", "host:0", "host:65536", "host:port", "http://h:1", [7001]],
)
def test_bad_coordinator_strings_are_refused_naming_the_value(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="coordinators"):
        parse_coordinators(bad)  # type: ignore[arg-type]


def client() -> CoordinatorClient:
    return CoordinatorClient([A, B, C], job="j", caller_id="w")


def not_leader(hint: str | None) -> StatusError:
    metadata = [(ERROR_KIND_METADATA_KEY, NOT_LEADER)]
    if hint:
        metadata.append((LEADER_METADATA_KEY, hint))
    return StatusError(grpc.StatusCode.FAILED_PRECONDITION, "not leader", tuple(metadata))


def test_attempts_go_round_the_replicas_until_a_leader_is_known() -> None:
    c = client()
    assert c.target() == A
    c.note_failure(A, StatusError(grpc.StatusCode.UNAVAILABLE))
    assert c.target() == B
    c.note_failure(B, not_leader(None))
    assert c.target() == C


def test_a_leader_hint_is_followed_even_outside_the_configured_list() -> None:
    c = client()
    c.note_failure(A, not_leader("10.9.9.9:50051"))
    assert c.target() == c.leader_address == "10.9.9.9:50051"


def test_an_accepted_write_caches_the_leader_and_an_unreachable_leader_is_forgotten() -> None:
    c = client()
    c.note_answer(B, pb.ResponseHeader(term=5, generation=2), accepted_write=True)
    assert c.target() == B
    assert (c.term, c.generation) == (5, 2)
    c.note_failure(B, StatusError(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert c.leader_address is None
    assert c.target() == C


def test_generation_and_term_only_grow() -> None:
    c = client()
    c.note_answer(A, pb.ResponseHeader(term=7, generation=9), accepted_write=False)
    c.note_answer(B, pb.ResponseHeader(term=6, generation=3), accepted_write=False)
    assert (c.term, c.generation) == (7, 9)


def test_a_refusal_that_no_retry_fixes_does_not_move_the_target() -> None:
    c = client()
    c.note_answer(B, pb.ResponseHeader(is_leader=True), accepted_write=False)
    c.note_failure(B, StatusError(grpc.StatusCode.INVALID_ARGUMENT))
    assert c.target() == B


def test_a_closed_client_refuses_to_dial() -> None:
    c = client()
    c.close()
    with pytest.raises(InvalidArgument, match="closed"):
        c.stub(A)
