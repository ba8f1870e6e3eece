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

A retry that waits for a new leader need not sleep out its backoff
(issue 18): given a ``LeaderSignal`` (``wakeup``), ``call_with_retry`` waits
on it instead, so news of a leader (a ``WatchLeader`` answer, or an answer
with a newer term, ``worker/client.py``) starts the next attempt within
``NEWS_SPREAD_S``, and the backoff starts again from ``initial_backoff_s``
after each piece of news, so an attempt that raced the new leader's own
takeover is not followed by a two-second sleep.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
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


#: A retry woken by news waits a random moment up to this long (or its first
#: backoff, if shorter) before it goes: every worker of a job hears the news at
#: once, and a new leader rebuilding its view from etcd answers a fleet arriving
#: over 50 ms sooner than the same fleet arriving in one instant.
NEWS_SPREAD_S = 0.05


class LeaderSignal:
    """News of the leader, counted: retries wait on it instead of sleeping out a backoff.

    ``announce`` (a watcher thread, or a call that saw a newer term) bumps the
    count and wakes every waiter; ``wait(since, timeout_s)`` returns as soon
    as the count passed ``since``. A count, not an event to clear, so no
    waiter misses news that arrived between reading the count and waiting.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._version = 0
        self._waiting = 0

    @property
    def version(self) -> int:
        with self._changed:
            return self._version

    @property
    def waiting(self) -> int:
        """How many threads wait right now (tests wait for a retry to be asleep)."""
        with self._changed:
            return self._waiting

    def announce(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def wait(self, since: int, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for news after ``since``; True when there was some."""
        with self._changed:
            self._waiting += 1
            try:
                return self._changed.wait_for(lambda: self._version > since, max(0.0, timeout_s))
            finally:
                self._waiting -= 1


def _jitter(high: float) -> float:
    """Full jitter: a uniform pick in [0, high] (a seam for tests that pin the backoff)."""
    return random.uniform(0.0, high)


class _NewsBackoff:
    """Exponential backoff with full jitter whose exponent restarts after each piece of news."""

    def __init__(self, policy: RetryPolicy, signal: LeaderSignal) -> None:
        self._policy = policy
        self._signal = signal
        self._version = signal.version
        self._first_attempt = 1  # the attempt the exponent counts from

    def __call__(self, state: tenacity.RetryCallState) -> float:
        version = self._signal.version
        if version != self._version:  # news since the last failure: start small again
            self._version, self._first_attempt = version, state.attempt_number
        exponent = state.attempt_number - self._first_attempt
        high = min(self._policy.max_backoff_s, self._policy.initial_backoff_s * 2.0**exponent)
        return _jitter(high)


def call_with_retry(
    call: Callable[[], _T],
    *,
    operation: str,
    policy: RetryPolicy | None = None,
    logger: logging.Logger = _log,
    sleep: Callable[[float], None] | None = None,
    wakeup: LeaderSignal | None = None,
) -> _T:
    """Run ``call`` until it succeeds, fails for good, or the deadline passes.

    The last error is re-raised as it is (the caller translates it into a
    ``dtr.errors`` type); a retryable error still failing at the deadline
    means no coordinator could be reached in time. ``sleep`` replaces
    ``time.sleep`` between attempts, for a background loop that must wake up
    when it is told to stop (``threading.Event.wait``). ``wakeup`` makes each
    wait end early on news of the leader that arrived since the failed
    attempt began (see the module docstring); it excludes ``sleep``.
    """
    policy = policy or RetryPolicy()
    options = _tenacity_options(policy, operation, logger)
    if wakeup is None:
        retrying = tenacity.Retrying(
            **options, sleep=sleep if sleep is not None else tenacity.nap.sleep
        )
        return retrying(call)
    if sleep is not None:
        raise InvalidArgument("call_with_retry: give sleep or wakeup, not both")
    began = [wakeup.version]  # the news count when the latest attempt began

    def attempt() -> _T:
        began[0] = wakeup.version
        return call()

    def nap(seconds: float) -> None:
        if wakeup.wait(began[0], seconds):  # news: go, the fleet spread over a moment
            time.sleep(_jitter(min(seconds, policy.initial_backoff_s, NEWS_SPREAD_S)))

    options["wait"] = _NewsBackoff(policy, wakeup)
    return tenacity.Retrying(**options, sleep=nap)(attempt)


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
