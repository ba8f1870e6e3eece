"""The one retry policy of every coordinator call (STYLE rule 5).

Every RPC the worker side makes goes through ``call_with_retry``: tenacity
with exponential backoff and full jitter, one total deadline for the whole
logical operation (not per attempt), and a log line before each sleep. What
is retried is decided by ``is_retryable`` alone, which has a test for every
gRPC status code:

- UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED: the call may succeed
  elsewhere or later (every mutating call is idempotent, DESIGN §3);
- a NOT-LEADER answer: FAILED_PRECONDITION carrying ``dtr-error: not-leader``
  (the caller follows the ``dtr-leader`` hint on the next attempt);
- nothing else — in particular not FAILED_PRECONDITION for a wrong job,
  INVALID_ARGUMENT, NOT_FOUND or INTERNAL, which no retry can fix, nor
  UNAUTHENTICATED or PERMISSION_DENIED: the same credentials get the same
  answer, and retrying would only hammer the coordinator with a bad token.

gRPC's own retry configuration stays off: retries in two layers multiply.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
import tenacity

from dtr.errors import CoordinatorUnavailable, InvalidArgument, NotLeader
from dtr.proto import ERROR_KIND_METADATA_KEY, NOT_LEADER

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def status_code(err: BaseException) -> grpc.StatusCode | None:
    """The status of a gRPC error; None for anything else.

    ``err.code`` is a method: comparing the bound method itself to a status
    code is always unequal, a classic bug that makes a predicate retry (or
    refuse) everything.
    """
    code = getattr(err, "code", None)
    if not isinstance(err, grpc.RpcError) or not callable(code):
        return None
    value = code()
    return value if isinstance(value, grpc.StatusCode) else None


def trailing_metadata(err: BaseException) -> dict[str, str]:
    """The trailing metadata of a gRPC error as a dict (empty if none)."""
    read = getattr(err, "trailing_metadata", None)
    pairs = read() if callable(read) else None
    return {str(k): str(v) for k, v in (pairs or ())}


def is_not_leader(err: BaseException) -> bool:
    """A replica refused a mutating call because it does not lead."""
    return (
        status_code(err) == grpc.StatusCode.FAILED_PRECONDITION
        and trailing_metadata(err).get(ERROR_KIND_METADATA_KEY) == NOT_LEADER
    )


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt of the same call can succeed (see the module docstring)."""
    if isinstance(exc, NotLeader | CoordinatorUnavailable):
        return True
    return status_code(exc) in RETRYABLE_CODES or is_not_leader(exc)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff and the total deadline of one logical operation."""

    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("initial_backoff_s", "max_backoff_s", "deadline_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidArgument(f"{name} must be a positive number; got {value!r}")
        if self.max_backoff_s < self.initial_backoff_s:
            raise InvalidArgument(
                f"max_backoff_s ({self.max_backoff_s}) must be at least "
                f"initial_backoff_s ({self.initial_backoff_s})"
            )

    def with_deadline(self, deadline_s: float) -> RetryPolicy:
        """The same backoff with another total budget (one call that must give up sooner).

        The backoff cap shrinks to the budget, so one sleep never eats all of it.
        """
        cap = max(self.initial_backoff_s, min(self.max_backoff_s, deadline_s))
        return replace(self, deadline_s=deadline_s, max_backoff_s=cap)


def call_with_retry(
    call: Callable[[], _T],
    *,
    operation: str,
    policy: RetryPolicy | None = None,
    logger: logging.Logger = _log,
    sleep: Callable[[float], None] | None = None,
) -> _T:
    """Run ``call`` until it succeeds, fails for good, or the deadline passes.

    The last error is re-raised as it is (the caller translates it into a
    ``dtr.errors`` type); a retryable error still failing at the deadline
    means no coordinator could be reached in time. ``sleep`` replaces
    ``time.sleep`` between attempts, for a background loop that must wake up
    when it is told to stop (``threading.Event.wait``).
    """
    retrying = tenacity.Retrying(
        **_tenacity_options(policy or RetryPolicy(), operation, logger),
        sleep=sleep if sleep is not None else tenacity.nap.sleep,
    )
    return retrying(call)


async def retry_async(
    attempt: Callable[[], Awaitable[_T]],
    *,
    operation: str,
    policy: RetryPolicy | None = None,
    logger: logging.Logger = _log,
) -> _T:
    """``call_with_retry`` for coroutines: the same predicate, backoff and deadline.

    Backoffs sleep on the event loop, so hundreds of callers in one process
    (the chaos harness's simulated workers) never block each other.
    """
    retrying = tenacity.AsyncRetrying(
        **_tenacity_options(policy or RetryPolicy(), operation, logger)
    )
    result: _T = await retrying(attempt)
    return result


def _tenacity_options(
    policy: RetryPolicy, operation: str, logger: logging.Logger
) -> dict[str, Any]:
    """The one retry configuration, for tenacity's synchronous and asyncio retriers alike."""

    def log_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        code = status_code(error) if error else None
        logger.info(
            "%s: attempt %d failed (%s); retrying in %.2f s",
            operation,
            state.attempt_number,
            code.name if code else type(error).__name__,
            state.upcoming_sleep,
        )

    return {
        "retry": tenacity.retry_if_exception(is_retryable),
        "wait": tenacity.wait_random_exponential(
            multiplier=policy.initial_backoff_s, max=policy.max_backoff_s
        ),
        "stop": tenacity.stop_after_delay(policy.deadline_s),
        "before_sleep": log_sleep,
        "reraise": True,
    }
