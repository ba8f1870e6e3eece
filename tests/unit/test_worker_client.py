"""The worker client's pure parts: coordinator lists and where the next attempt goes.

Nothing here dials: channels are created lazily and these tests never call.
Leader following against real replicas is in tests/integration/test_worker.py,
stray hints against real replicas in tests/integration/test_leader_hints.py.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from dtr.errors import InvalidArgument
from dtr.proto import ERROR_KIND_METADATA_KEY, LEADER_METADATA_KEY, NOT_LEADER
from dtr.proto import coordinator_pb2 as pb
from dtr.security import ClientSecurity
from dtr.worker.client import (
    CoordinatorClient,
    hint_allowed,
    parse_coordinators,
    resolved_addresses,
)
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


def test_a_hint_among_the_configured_replicas_is_followed() -> None:
    c = client()
    c.note_failure(A, not_leader(C))
    assert c.target() == c.leader_address == C


def test_a_plaintext_hint_outside_the_configured_list_is_ignored_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It would carry the token to an address nobody vouched for: try the next replica."""
    c = client()
    with caplog.at_level(logging.WARNING, logger="dtr.worker.client"):
        c.note_failure(A, not_leader("10.9.9.9:50051"))
        assert c.leader_address is None and c.target() == B
        c.note_failure(B, not_leader("10.9.9.9:50051"))
        c.note_answer(C, pb.ResponseHeader(leader_address="10.9.9.9:50051"), accepted_write=False)
    assert c.leader_address is None
    assert sum("ignoring leader hint" in r.getMessage() for r in caplog.records) == 1


def test_with_tls_any_hint_is_followed_because_the_channel_checks_its_name() -> None:
    tls = ClientSecurity(credentials=grpc.ssl_channel_credentials())
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", security=tls)
    c.note_failure(A, not_leader("coordinator-7.example:50051"))
    assert c.target() == "coordinator-7.example:50051"


@pytest.mark.parametrize(
    ("hint", "configured", "tls", "allowed"),
    [
        (A, (A, B), False, True),
        (C, (A, B), False, False),  # same host, another port: another listener
        ("10.0.0.5:50051", ("svc.ns:50051",), False, True),  # the Service names the pod
        ("10.0.0.6:50051", ("svc.ns:50051",), False, False),
        ("10.0.0.5:50052", ("svc.ns:50051",), False, False),
        ("evil.example:1", (A,), True, True),
        ("not an address", (A,), False, False),
    ],
)
def test_hint_allowed_is_one_rule_for_every_follower(
    hint: str, configured: tuple[str, ...], tls: bool, allowed: bool
) -> None:
    names = {"svc.ns:50051": {"10.0.0.4:50051", "10.0.0.5:50051"}}

    def resolve(address: str) -> frozenset[str]:
        return frozenset(names.get(address, {address} if ":" in address else set()))

    assert hint_allowed(hint, configured, tls=tls, resolve=resolve) is allowed


def test_loopback_names_resolve_to_their_addresses() -> None:
    assert "127.0.0.1:50051" in resolved_addresses("localhost:50051") | resolved_addresses(
        "127.0.0.1:50051"
    )
    assert resolved_addresses("not an address") == frozenset()


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
