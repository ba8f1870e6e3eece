"""Pushed leader news, the pure parts (issue 18): retries wake on it, clients re-aim on it.

- ``dtr.retry``: a retry waiting on a ``LeaderSignal`` starts its next attempt
  when news arrives, not when its (here pinned, long) backoff ends, and its
  backoff starts small again after each piece of news;
- ``coordinator.leader_news``: a ``WatchLeader`` call is answered at once,
  on news, or at the end of its wait, and its request is validated;
- ``CoordinatorClient.note_news``: a newer term re-aims and wakes; an older
  one, or the push turned off, changes nothing; the announced leader's own
  NOT-LEADER answers are not followed to their stale hint for a moment
  (a fake clock moves past that moment).

Real replicas, SIGKILL and a frozen leader: tests/integration/test_leader_news.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import SimpleNamespace

import grpc
import pytest

import dtr.retry
import dtr.worker.client as client_module
from dtr.coordinator.election import Candidate
from dtr.coordinator.leader_news import (
    MAX_WATCH_S,
    LeaderNews,
    watch_answer,
    watch_leader_request,
)
from dtr.errors import InvalidArgument
from dtr.proto import ERROR_KIND_METADATA_KEY, LEADER_METADATA_KEY, NOT_LEADER
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import LeaderSignal, RetryPolicy, call_with_retry
from dtr.worker.client import NEWS_PIN_S, CoordinatorClient, leader_watch_from_env
from dtr.worker.leader_watch import LeaderWatch, first_replica
from helpers import StatusError, wait_until

A, B, C = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"
LONG = RetryPolicy(initial_backoff_s=30.0, max_backoff_s=30.0, deadline_s=120.0)


@pytest.fixture
def pinned_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backoff is its upper bound (no jitter), so the sleeps are known."""
    monkeypatch.setattr(dtr.retry, "_jitter", lambda high: high)


# -- the retry wakes on news -------------------------------------------------------


@pytest.mark.usefixtures("pinned_backoff")
def test_a_retry_sleeping_its_backoff_wakes_when_news_arrives() -> None:
    signal = LeaderSignal()
    attempts: list[float] = []

    def attempt() -> str:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise StatusError(grpc.StatusCode.UNAVAILABLE)
        return "answered"

    def announce_when_asleep() -> None:
        wait_until(lambda: signal.waiting == 1, 10, "the retry asleep in its 30 s backoff")
        signal.announce()

    announcer = threading.Thread(target=announce_when_asleep)
    announcer.start()
    began = time.monotonic()
    result = call_with_retry(attempt, operation="op", policy=LONG, wakeup=signal)
    announcer.join()
    assert result == "answered"
    assert len(attempts) == 2
    assert time.monotonic() - began < 10.0  # not the 30 s backoff


@pytest.mark.usefixtures("pinned_backoff")
def test_news_that_arrived_during_the_failed_attempt_means_no_backoff() -> None:
    """Only the news spread (at most ``NEWS_SPREAD_S``), not the pinned 30 s backoff."""
    signal = LeaderSignal()
    attempts = 0

    def attempt() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            signal.announce()  # the news came while this attempt was failing
            raise StatusError(grpc.StatusCode.UNAVAILABLE)
        return "answered"

    began = time.monotonic()
    assert call_with_retry(attempt, operation="op", policy=LONG, wakeup=signal) == "answered"
    assert time.monotonic() - began < 5.0
    assert signal.waiting == 0


@pytest.mark.usefixtures("pinned_backoff")
def test_the_backoff_starts_small_again_after_news(caplog: pytest.LogCaptureFixture) -> None:
    signal = LeaderSignal()
    policy = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.08, deadline_s=30.0)
    attempts = 0

    def attempt() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 4:
            signal.announce()
        if attempts <= 5:
            raise StatusError(grpc.StatusCode.UNAVAILABLE)
        return "answered"

    with caplog.at_level(logging.INFO, logger="dtr.retry"):
        call_with_retry(attempt, operation="op", policy=policy, wakeup=signal)
    sleeps = [r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records]
    # 0.01, 0.02, 0.04, then news: from 0.01 again (attempt 4's wait ends at once).
    assert sleeps == ["0.01 s", "0.02 s", "0.04 s", "0.01 s", "0.02 s"]


def test_a_retry_takes_sleep_or_wakeup_not_both() -> None:
    with pytest.raises(InvalidArgument, match="sleep or wakeup"):
        call_with_retry(lambda: 1, operation="op", sleep=lambda s: None, wakeup=LeaderSignal())


def test_a_signal_wait_without_news_times_out() -> None:
    signal = LeaderSignal()
    assert signal.wait(signal.version, 0.01) is False
    since = signal.version
    signal.announce()
    assert signal.wait(since, 10.0) is True
    assert signal.version == since + 1


# -- the replica's side ---------------------------------------------------------------

LEADER_5 = Candidate("replica-1", B, "/e/5", 5)
LEADER_9 = Candidate("replica-2", C, "/e/9", 9)


def test_watch_leader_answers_at_once_when_it_knows_a_newer_leader() -> None:
    news = LeaderNews()
    news.publish(LEADER_5)
    assert asyncio.run(news.wait_newer(3, 10.0)) == (LEADER_5, True)


def test_watch_leader_holds_until_news_then_answers_it() -> None:
    news = LeaderNews()
    news.publish(LEADER_5)

    async def scenario() -> tuple[Candidate | None, bool]:
        held = asyncio.create_task(news.wait_newer(5, 30.0))
        for _ in range(100):  # bounded: the task registers within a few loop turns
            if news.waiting:
                break
            await asyncio.sleep(0)
        assert news.waiting == 1
        await asyncio.to_thread(news.publish, LEADER_9)  # from another thread, as the elector
        return await asyncio.wait_for(held, 10.0)

    assert asyncio.run(scenario()) == (LEADER_9, True)
    assert news.waiting == 0


def test_watch_leader_without_news_answers_what_it_knows_at_the_end_of_its_wait() -> None:
    news = LeaderNews()
    news.publish(LEADER_5)
    assert asyncio.run(news.wait_newer(5, 0.01)) == (LEADER_5, False)
    assert news.waiting == 0


def test_a_replica_that_resigns_answers_held_calls_without_a_leader() -> None:
    news = LeaderNews()
    news.publish(LEADER_5)

    async def scenario() -> tuple[Candidate | None, bool]:
        held = asyncio.create_task(news.wait_newer(5, 30.0))
        for _ in range(100):
            if news.waiting:
                break
            await asyncio.sleep(0)
        news.publish(None)
        return await asyncio.wait_for(held, 10.0)

    assert asyncio.run(scenario()) == (None, False)


def test_a_replica_that_knows_no_leader_answers_at_once_so_the_client_asks_another() -> None:
    """Starting, resigned (stopping): holding the call would only delay the replica's stop."""
    news = LeaderNews()
    began = time.monotonic()
    assert asyncio.run(news.wait_newer(0, 30.0)) == (None, False)
    assert time.monotonic() - began < 10.0
    assert news.waiting == 0


@pytest.mark.parametrize("wait_s", [-1.0, float("nan"), float("inf"), 61.0])
def test_watch_leader_refuses_a_bad_wait_naming_the_field(wait_s: float) -> None:
    with pytest.raises(InvalidArgument, match="wait_s"):
        watch_leader_request(pb.WatchLeaderRequest(wait_s=wait_s))


def test_watch_leader_waits_are_capped_and_zero_means_the_maximum() -> None:
    assert watch_leader_request(pb.WatchLeaderRequest(known_term=4)).wait_s == MAX_WATCH_S
    assert watch_leader_request(pb.WatchLeaderRequest(wait_s=60.0)).wait_s == MAX_WATCH_S
    assert watch_leader_request(pb.WatchLeaderRequest(wait_s=0.5)).wait_s == 0.5


def test_the_answer_names_one_leader_in_its_body_and_header() -> None:
    answer = watch_answer(LEADER_9, True, pb.ResponseHeader(term=5, leader_address=B))
    assert (answer.leader.id, answer.leader.address, answer.leader.term) == ("replica-2", C, 9)
    assert (answer.header.term, answer.header.leader_address, answer.changed) == (9, C, True)
    assert not watch_answer(None, False, pb.ResponseHeader()).HasField("leader")


# -- the client's side ----------------------------------------------------------------


def news_of(address: str, term: int) -> pb.WatchLeaderResponse:
    return pb.WatchLeaderResponse(
        leader=pb.LeaderInfo(id="r", address=address, term=term), changed=True
    )


def not_leader(hint: str) -> StatusError:
    metadata = ((ERROR_KIND_METADATA_KEY, NOT_LEADER), (LEADER_METADATA_KEY, hint))
    return StatusError(grpc.StatusCode.FAILED_PRECONDITION, "not leader", metadata)


def test_news_of_a_newer_term_re_aims_the_client_and_wakes_its_retries() -> None:
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=True)
    assert c.news is not None
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    seen = c.news.version
    c.note_news(B, news_of(C, 9))
    assert (c.leader_address, c.term) == (C, 9)
    assert c.news.version == seen + 1
    c.note_news(B, news_of(A, 5))  # an older term, from a replica that lags: ignored
    assert (c.leader_address, c.term, c.news.version) == (C, 9, seen + 1)


def test_an_answer_with_a_newer_term_is_news_too() -> None:
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=True)
    assert c.news is not None
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    seen = c.news.version
    c.note_answer(B, pb.ResponseHeader(term=9, leader_address=C), accepted_write=False)
    assert (c.leader_address, c.news.version) == (C, seen + 1)


def test_a_late_answer_of_the_old_term_does_not_undo_the_news() -> None:
    """The old leader answering a call sent before the news, or a refusal it sent then."""
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=True)
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    c.note_news(B, news_of(C, 9))
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    assert c.target() == C
    c.note_failure(A, not_leader(A))  # its hint names itself: it was aimed at before the news
    assert c.target() == C


def test_news_naming_a_stray_address_raises_the_term_but_is_not_followed() -> None:
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=True)
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    c.note_news(B, news_of("10.9.9.9:50051", 9))
    assert (c.leader_address, c.term) == (A, 9)


def test_with_the_push_off_news_changes_nothing() -> None:
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=False)
    assert c.news is None
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    c.note_news(B, news_of(C, 9))
    assert (c.leader_address, c.term) == (A, 5)


def test_the_announced_leaders_refusals_are_not_followed_for_a_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It learnt of its own election a moment after the news: its hint names the dead leader."""
    now = [1000.0]
    fake = SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter)
    monkeypatch.setattr(client_module, "time", fake)
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=True)
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    c.note_news(B, news_of(C, 9))
    c.note_failure(C, not_leader(A))
    assert c.target() == C  # still taking over: try it again
    now[0] += NEWS_PIN_S + 0.01
    c.note_failure(C, not_leader(A))
    assert c.target() == A  # long enough: its hint is followed as any other


@pytest.mark.parametrize(
    ("raw", "on"), [("", True), ("1", True), ("on", True), ("0", False), ("false", False)]
)
def test_the_push_is_on_unless_the_environment_turns_it_off(raw: str, on: bool) -> None:
    assert leader_watch_from_env({"DTR_LEADER_WATCH": raw}) is on


def test_a_bad_environment_value_is_refused_naming_the_variable() -> None:
    with pytest.raises(InvalidArgument, match="DTR_LEADER_WATCH"):
        leader_watch_from_env({"DTR_LEADER_WATCH": "maybe"})


def test_watches_start_spread_over_the_replicas_the_same_way_everywhere() -> None:
    starts = {first_replica(f"w-{i}", 3) for i in range(30)}
    assert starts == {0, 1, 2}
    assert first_replica("w-7", 3) == first_replica("w-7", 3)


def test_the_watch_prefers_a_replica_that_is_not_the_leader() -> None:
    """A frozen leader tells nothing: the news of its successor must come from elsewhere."""
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=True)
    watch = LeaderWatch(c)  # not started: only its choice is looked at
    for leader in (A, B, C):
        c.note_answer(leader, pb.ResponseHeader(is_leader=True), accepted_write=True)
        assert watch._choose() != leader
    c.note_answer(A, pb.ResponseHeader(is_leader=True), accepted_write=True)
    watch._down = {B: time.monotonic(), C: time.monotonic()}  # both followers failed just now
    assert watch._choose() == A


def test_news_closes_a_channel_holding_a_mutating_call_so_the_call_ends() -> None:
    """A frozen leader's long poll (and the stream beside it) ends now, not at its deadline."""
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=True)
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    old_a, old_b = c.stub(A), c.stub(B)  # channels are lazy: nothing is dialled
    with c._held(A, mutating=True):  # a barrier long poll held by A
        c.note_news(B, news_of(C, 9))
    assert c.stub(A) is not old_a  # closed and dialled afresh on the next use
    assert c.stub(B) is old_b  # no call was held there: left alone
    c.close()


def test_news_leaves_a_channel_without_a_held_call_alone() -> None:
    """A deposed leader ends its own streams; closing them all would herd them at once."""
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=True)
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    old_a = c.stub(A)
    c.note_news(B, news_of(C, 9))
    assert c.stub(A) is old_a
    c.close()


def test_a_call_ended_by_that_closing_or_by_a_stopping_replica_is_sent_again() -> None:
    c = CoordinatorClient([A, B, C], job="j", caller_id="w", leader_watch=True)
    cancelled = StatusError(grpc.StatusCode.CANCELLED)
    # A replica that stops cancels what it holds: a mutating call is sent again...
    again = c._abandoned(A, cancelled, 0, mutating=True)
    assert again is not None and dtr.retry.is_retryable(again)
    # ...a read is not (nothing says the replica is going away)...
    assert c._abandoned(A, cancelled, 0, mutating=False) is None
    # ...unless news closed its channel meanwhile: then any call goes again.
    c.note_answer(A, pb.ResponseHeader(term=5, is_leader=True), accepted_write=True)
    c.stub(A)
    with c._held(A, mutating=True):
        c.note_news(B, news_of(C, 9))
    for ended in (cancelled, ValueError("Cannot invoke RPC on closed channel!")):
        again = c._abandoned(A, ended, 0, mutating=False)
        assert again is not None and dtr.retry.is_retryable(again)
    c.close()
