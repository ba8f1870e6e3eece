"""dtr.retry: which answers are retried (one test per status code) and the policy itself."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from dtr.errors import CoordinatorUnavailable, InvalidArgument, NotFound, NotLeader
from dtr.proto import ERROR_KIND_METADATA_KEY, LEADER_METADATA_KEY, NOT_LEADER
from dtr.retry import (
    RetryPolicy,
    call_with_retry,
    is_not_leader,
    is_retryable,
    retry_async,
    status_code,
)
from helpers import StatusError

RETRIED = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_status_code_is_retried_only_if_another_attempt_can_succeed(
    code: grpc.StatusCode,
) -> None:
    assert is_retryable(StatusError(code)) is (code in RETRIED)


def test_a_not_leader_answer_is_retried_with_or_without_a_hint() -> None:
    marker = ((ERROR_KIND_METADATA_KEY, NOT_LEADER),)
    hint = ((LEADER_METADATA_KEY, "10.0.0.2:50051"),)
    assert is_retryable(StatusError(grpc.StatusCode.FAILED_PRECONDITION, metadata=marker))
    assert is_retryable(StatusError(grpc.StatusCode.FAILED_PRECONDITION, metadata=marker + hint))
    assert is_not_leader(StatusError(grpc.StatusCode.FAILED_PRECONDITION, metadata=marker))
    # Wrong job: FAILED_PRECONDITION without the marker is final.
    assert not is_retryable(StatusError(grpc.StatusCode.FAILED_PRECONDITION, metadata=hint))
    # The marker on another code means nothing.
    assert not is_retryable(StatusError(grpc.StatusCode.INVALID_ARGUMENT, metadata=marker))


def test_a_code_attribute_that_is_not_a_method_is_not_mistaken_for_a_status() -> None:
    class Odd(grpc.RpcError):
        code = grpc.StatusCode.UNAVAILABLE  # an attribute, not the method grpc defines

    assert status_code(Odd()) is None
    assert not is_retryable(Odd())


def test_dtr_errors_and_plain_exceptions() -> None:
    assert is_retryable(NotLeader("not the leader", "h:1"))
    assert is_retryable(CoordinatorUnavailable("none answered"))
    for error in (InvalidArgument("x"), NotFound("y"), ValueError("z"), TimeoutError()):
        assert not is_retryable(error)


def test_call_with_retry_retries_then_returns_and_logs_each_sleep(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = [StatusError(grpc.StatusCode.UNAVAILABLE)] * 2
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if failures:
            raise failures.pop()
        return "ok"

    policy = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.01, deadline_s=5.0)
    with caplog.at_level(logging.INFO, logger="dtr.retry"):
        assert call_with_retry(flaky, operation="register", policy=policy) == "ok"
    assert len(attempts) == 3
    assert (
        sum("register: attempt" in r.message and "UNAVAILABLE" in r.message for r in caplog.records)
        == 2
    )


def test_retry_async_is_the_same_policy_for_coroutines(caplog: pytest.LogCaptureFixture) -> None:
    failures = [StatusError(grpc.StatusCode.UNAVAILABLE)] * 2
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(1)
        if failures:
            raise failures.pop()
        return "ok"

    async def refused() -> None:
        attempts.append(1)
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT)

    policy = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.01, deadline_s=5.0)
    with caplog.at_level(logging.INFO, logger="dtr.retry"):
        assert asyncio.run(retry_async(flaky, operation="beat", policy=policy)) == "ok"
    assert len(attempts) == 3
    assert sum("beat: attempt" in r.message for r in caplog.records) == 2
    attempts.clear()
    with pytest.raises(StatusError):
        asyncio.run(retry_async(refused, operation="x", policy=policy))
    assert attempts == [1]


def test_a_final_error_is_raised_after_one_attempt() -> None:
    attempts: list[int] = []

    def refused() -> None:
        attempts.append(1)
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(StatusError):
        call_with_retry(refused, operation="x", policy=RetryPolicy(deadline_s=5.0))
    assert attempts == [1]


def test_the_deadline_bounds_the_whole_operation_and_reraises_the_last_error() -> None:
    attempts: list[int] = []

    def down() -> None:
        attempts.append(1)
        raise StatusError(grpc.StatusCode.UNAVAILABLE)

    policy = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.01, deadline_s=0.1)
    with pytest.raises(StatusError) as info:
        call_with_retry(down, operation="x", policy=policy)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(attempts) > 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"initial_backoff_s": 0.0}, "initial_backoff_s"),
        ({"deadline_s": float("inf")}, "deadline_s"),
        ({"initial_backoff_s": 1.0, "max_backoff_s": 0.5}, "max_backoff_s"),
    ],
)
def test_policies_that_cannot_work_are_refused(overrides: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        RetryPolicy(**overrides)


def test_a_policy_with_a_shorter_deadline_keeps_its_backoff_within_that_budget() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=2.0, deadline_s=30.0)
    short = policy.with_deadline(1.0)
    assert (short.initial_backoff_s, short.max_backoff_s, short.deadline_s) == (0.1, 1.0, 1.0)
    assert policy.with_deadline(60.0).max_backoff_s == 2.0
    assert policy.with_deadline(0.05).max_backoff_s == 0.1  # never below the first backoff
