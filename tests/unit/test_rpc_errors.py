"""The worker maps every gRPC answer back to a dtr error, code by code (STYLE rule 4).

The coordinator's table (coordinator/status_codes.py) and the worker's
(worker/rpc_errors.py) must round-trip: every domain error a servicer can
answer with comes back to the training script as the same type.
"""

from __future__ import annotations

import grpc
import pytest

from dtr.coordinator.status_codes import STATUS_CODES, status_for
from dtr.errors import (
    AlreadyExists,
    BarrierTimeout,
    CoordinatorError,
    CoordinatorUnavailable,
    DtrError,
    InvalidArgument,
    MembershipChanged,
    NotFound,
    NotLeader,
    StoreUnavailable,
    UnknownWorker,
    WrongJob,
)
from dtr.proto import ERROR_KIND_METADATA_KEY, LEADER_METADATA_KEY, NOT_LEADER
from dtr.retry import RETRYABLE_CODES
from dtr.worker.rpc_errors import ERROR_FOR_CODE, error_from_rpc
from helpers import StatusError


def answer_for(err: DtrError) -> StatusError:
    """What the servicer's abort_with sends for ``err``: its code, kind and leader hint."""
    metadata = [(ERROR_KIND_METADATA_KEY, err.kind)] if err.kind else []
    if isinstance(err, NotLeader) and err.leader_address:
        metadata.append((LEADER_METADATA_KEY, err.leader_address))
    return StatusError(status_for(err), str(err), tuple(metadata))


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_status_code_becomes_a_dtr_error(code: grpc.StatusCode) -> None:
    error = error_from_rpc(StatusError(code, "boom"), "get shards")
    assert isinstance(error, DtrError)
    assert "get shards" in str(error)
    if code in RETRYABLE_CODES:
        assert type(error) is CoordinatorUnavailable
    elif code in ERROR_FOR_CODE:
        assert type(error) is ERROR_FOR_CODE[code]
        assert "boom" in str(error)
    else:
        assert type(error) is CoordinatorError


@pytest.mark.parametrize(
    "original",
    [
        InvalidArgument("barrier.name: must not be empty"),
        NotFound("dataset: no dataset named 'x'"),
        UnknownWorker("worker_id: 'w' is not a live member"),
        AlreadyExists("dataset 'x' exists with 8 shards"),
        WrongJob("job: this replica serves 'a'"),
        MembershipChanged("generation: 3 is not current"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_domain_errors_round_trip_through_the_status_codes(original: DtrError) -> None:
    error = error_from_rpc(answer_for(original), "op")
    assert type(error) is type(original)
    assert str(original) in str(error)


def test_a_not_leader_answer_exhausting_the_deadline_means_no_coordinator_was_reachable() -> None:
    refused = answer_for(NotLeader("not the leader", "10.0.0.2:50051"))
    assert refused.trailing_metadata()[0] == (ERROR_KIND_METADATA_KEY, NOT_LEADER)
    assert type(error_from_rpc(refused, "register")) is CoordinatorUnavailable


def test_store_unavailability_on_the_coordinator_is_retried_and_reported_as_unavailable() -> None:
    error = error_from_rpc(answer_for(StoreUnavailable("etcd unreachable")), "heartbeat")
    assert type(error) is CoordinatorUnavailable


def test_the_kind_wins_over_the_code_for_shared_codes() -> None:
    assert NotLeader.kind == NOT_LEADER
    wrong_job = StatusError(
        grpc.StatusCode.FAILED_PRECONDITION, "x", ((ERROR_KIND_METADATA_KEY, "wrong-job"),)
    )
    unknown = StatusError(
        grpc.StatusCode.NOT_FOUND, "x", ((ERROR_KIND_METADATA_KEY, "unknown-worker"),)
    )
    assert type(error_from_rpc(wrong_job, "op")) is WrongJob
    assert type(error_from_rpc(unknown, "op")) is UnknownWorker


def test_every_code_the_coordinator_answers_with_maps_back() -> None:
    for error_type, code in STATUS_CODES.items():
        if code in RETRYABLE_CODES:
            continue
        assert code in ERROR_FOR_CODE, f"{error_type.__name__} answers {code.name}, unmapped"
    assert ERROR_FOR_CODE[STATUS_CODES[BarrierTimeout]] is not None
