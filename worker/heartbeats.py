"""The worker's background heartbeats: one long-lived stream, unary beats as the fallback.

A daemon thread keeps the leader told that this worker lives, what step it
is at and how fast it goes (for spotting stragglers), so training never
waits on the network for liveness. It beats on a ``HeartbeatStream`` to the
leader; a replica that does not offer the stream (UNIMPLEMENTED) switches
the loop to unary ``Heartbeat`` calls for good.

Failures never reach the training thread. Each stream session is one
attempt under the retry policy of ``dtr/retry.py`` (backoff with jitter,
leader hints followed through ``CoordinatorClient``); a session that was
answered before it broke starts the backoff afresh. A stream that stops
answering (a partition that drops packets rather than refusing them) is
cancelled by a watchdog after ``stall_timeout_s``. While no coordinator
answers the loop keeps trying, logging once per outage.

An answer other than OK is handed to the worker (``BeatTarget.on_status``),
which re-registers (UNKNOWN_WORKER, DEAD) or stops (STALE_INCARNATION).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Protocol

import grpc

from dtr.errors import CoordinatorUnavailable, DtrError
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import call_with_retry, status_code

from .client import CoordinatorClient

_log = logging.getLogger(__name__)


class BeatTarget(Protocol):
    """What the loop needs from the worker it beats for."""

    def make_beat(self, sequence: int) -> pb.WorkerBeat: ...

    def on_status(self, status: pb.WorkerStatus, incarnation: int) -> bool:
        """Handle a non-OK status; return False to stop beating."""
        ...


class HeartbeatLoop:
    """Beats for one worker on a daemon thread until ``stop()``."""

    def __init__(
        self,
        target: BeatTarget,
        client: CoordinatorClient,
        *,
        interval_s: float,
        stall_timeout_s: float,
        outage_deadline_s: float,
        use_stream: bool = True,
    ) -> None:
        self._target = target
        self._client = client
        self.interval_s = interval_s
        self.stall_timeout_s = stall_timeout_s
        self._policy = client.policy.with_deadline(outage_deadline_s)
        self.use_stream = use_stream
        self._stop = threading.Event()
        self._sequence = 0
        # sequence -> (incarnation, time.monotonic() sent), until answered
        self._incarnation_of: dict[int, tuple[int, float]] = {}
        self._call: grpc.Call | None = None
        self._thread = threading.Thread(target=self._run, name="dtr-heartbeat", daemon=True)
        #: time.monotonic() of the last acknowledged beat (0: none yet); beats acknowledged.
        self.last_ack_at = 0.0
        self.acks = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop beating and wait for the thread (a stream in flight is cancelled)."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

    # -- the loop -----------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _run(self) -> None:
        outage_logged = False
        while not self._stop.is_set():
            try:
                session = self._stream_session if self.use_stream else self._unary_beat
                keep_going = call_with_retry(
                    session, operation="heartbeat", policy=self._policy, sleep=self._sleep
                )
                outage_logged = False
            except (grpc.RpcError, DtrError) as err:
                if self._stop.is_set():
                    return
                if status_code(err) == grpc.StatusCode.UNIMPLEMENTED and self.use_stream:
                    _log.info("heartbeat stream not offered by %s; using unary beats", err)
                    self.use_stream = False
                    continue
                if not outage_logged:
                    _log.warning("heartbeats failing, training goes on: %s", err)
                    outage_logged = True
                continue
            if not keep_going:
                return

    def _handle(self, status: pb.WorkerStatus, incarnation: int) -> bool:
        self.last_ack_at = time.monotonic()
        self.acks += 1
        if status == pb.WORKER_STATUS_OK:
            return True
        return self._target.on_status(status, incarnation)

    def _next_beat(self) -> pb.WorkerBeat:
        self._sequence += 1
        beat = self._target.make_beat(self._sequence)
        if len(self._incarnation_of) > 64:  # answers lost with a broken stream
            self._incarnation_of.clear()
        self._incarnation_of[beat.sequence] = (beat.incarnation, time.monotonic())
        return beat

    def _answered(self, sequence: int) -> int:
        """The incarnation the answered beat carried (0 when unknown: unsolicited).

        Also times the beat's round trip (``dtr_worker_heartbeat_rtt_seconds``).
        """
        sent = self._incarnation_of.pop(sequence, None)
        if sent is None:
            return 0
        self._client.metrics.heartbeat_rtt_seconds.observe(time.monotonic() - sent[1])
        return sent[0]

    def _unary_beat(self) -> bool:
        """One unary beat, then the wait before the next; False when told to stop beating."""
        beat = self._next_beat()
        response = self._client.call(
            "Heartbeat",
            lambda: pb.HeartbeatRequest(beat=beat),
            operation="heartbeat",
            mutating=True,
            policy=self._client.policy.with_deadline(self.stall_timeout_s),
        )
        self._answered(beat.sequence)
        if not self._handle(response.status, beat.incarnation):
            return False
        self._sleep(response.next_interval_s or self.interval_s)
        return not self._stop.is_set()

    def _stream_session(self) -> bool:
        """Beat on one stream until it breaks; False when told to stop beating.

        Returns True after a break if at least one beat was answered (the next
        session starts without backoff); raises the break otherwise, so the
        retry policy backs off.
        """
        address = self._client.target()
        over = threading.Event()
        try:
            call = self._client.stub(address).HeartbeatStream(self._beats(over))
        except ValueError:  # news of a leader closed that channel just now: dial afresh
            return not self._stop.is_set()
        self._call = call
        answered = False
        try:
            for response in call:
                answered = True
                self._client.note_answer(address, response.header, accepted_write=True)
                for listener in self._client.answer_listeners:
                    listener("HeartbeatStream", address, response.header, True)
                incarnation = self._answered(response.acked_sequence)
                if response.status != pb.WORKER_STATUS_OK:
                    return self._handle(response.status, incarnation) and not self._stop.is_set()
                self._handle(response.status, incarnation)
                if response.next_interval_s > 0:
                    self.interval_s = response.next_interval_s
            return not self._stop.is_set()
        except grpc.RpcError as err:
            if self._stop.is_set():
                return False
            self._client.note_failure(address, err)
            code = status_code(err)
            if answered and code != grpc.StatusCode.UNIMPLEMENTED:
                _log.info("heartbeat stream to %s ended (%s); reopening", address, code)
                return True
            if code == grpc.StatusCode.CANCELLED:  # our watchdog
                raise CoordinatorUnavailable(f"heartbeat stream to {address} stalled") from None
            raise
        finally:
            over.set()
            self._call = None
            call.cancel()

    def _beats(self, over: threading.Event) -> Iterator[pb.HeartbeatStreamRequest]:
        """The request side of one stream, paced here (gRPC pulls it on its own thread).

        Also the watchdog: a stream with no answer for ``stall_timeout_s`` is
        cancelled, which ends the session with an error.
        """
        opened = time.monotonic()
        header = self._client.header(f"stream-{opened}")
        while not (over.is_set() or self._stop.is_set()):
            yield pb.HeartbeatStreamRequest(header=header, beat=self._next_beat())
            over.wait(self.interval_s)
            silent_since = max(opened, self.last_ack_at)
            if time.monotonic() - silent_since > self.stall_timeout_s:
                call = self._call
                if call is not None and not over.is_set():
                    _log.info("heartbeat stream silent for %.1f s; reopening", self.stall_timeout_s)
                    call.cancel()
                return
