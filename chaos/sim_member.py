"""One simulated worker's membership: register, beat, rejoin, leave — ``Worker`` on asyncio.

``SimMember`` does for a simulated worker what ``dtr.worker.Worker`` and its
``HeartbeatLoop`` do for a real one, as coroutines on the process's one event
loop instead of a thread per worker:

- ``register`` (recorded as ``register``) starts an incarnation;
- ``beat_forever`` sends one unary ``Heartbeat`` per interval (the leader's
  ``next_interval_s`` once it answered, like the real loop) carrying the step
  and checkpoint progress, so no separate progress call is needed. A beat
  answered UNKNOWN_WORKER or DEAD makes the worker ``rejoin`` as a new
  incarnation; STALE_INCARNATION for the current incarnation means another
  process took this id over, and the worker must stop (``check_usable``);
- ``call`` is every call about this worker: leader following through the
  shared ``SimClient``, ``write`` events and the newest generation learnt
  from every answer;
- ``deregister`` leaves on purpose at the end.

Unary beats rather than one ``HeartbeatStream`` per worker: at the leader's
default of one beat a second, hundreds of unary beats cost the leader about
what the streams would, and a beat that fails simply is the next attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any

from dtr.errors import DtrError, WorkerSuperseded
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy

from .sim_client import SimClient
from .sim_recorder import Recorder

_log = logging.getLogger(__name__)
_CLIENT_VERSION = "dtr-chaos-sim/0.1"
_DEREGISTER_DEADLINE_S = 5.0


class SimMember:
    """Membership of one simulated worker in the job; see the module docstring."""

    def __init__(
        self,
        worker_id: str,
        client: SimClient,
        recorder: Recorder,
        *,
        heartbeat_interval_s: float,
    ) -> None:
        self.worker_id = worker_id
        self.client = client
        self.recorder = recorder
        self.heartbeat_interval_s = heartbeat_interval_s
        self.incarnation = 0
        #: The newest membership generation any answer to this worker carried.
        self.generation = 0
        #: What the next beat reports.
        self.step = 0
        self.samples_per_s = 0.0
        #: Set by the worker: what each beat reports about saves and commits.
        self.checkpoint_progress: Callable[[], pb.CheckpointProgress] | None = None
        self.superseded = False
        self._rejoining = asyncio.Lock()

    # -- calls ----------------------------------------------------------------------
    def on_answer(
        self, method: str, started: float, header: pb.ResponseHeader, mutating: bool
    ) -> None:
        self.generation = max(self.generation, header.generation)
        if mutating:
            self.recorder.write(method, started, header)

    async def call(
        self,
        method: str,
        build: Callable[[], Any],
        *,
        operation: str,
        mutating: bool,
        policy: RetryPolicy | None = None,
        attempt_timeout_s: float | None = None,
    ) -> Any:
        """A call about this worker through the shared client; ``dtr.errors`` only."""
        return await self.client.call(
            method,
            build,
            caller=self.worker_id,
            operation=f"{self.worker_id}: {operation}",
            mutating=mutating,
            policy=policy,
            attempt_timeout_s=attempt_timeout_s,
            on_answer=self.on_answer,
        )

    def check_usable(self) -> None:
        if self.superseded:
            raise WorkerSuperseded(
                f"worker {self.worker_id}: a newer incarnation registered; this one must stop"
            )

    # -- joining ----------------------------------------------------------------------
    async def register(self, *, rejoin: bool = False) -> None:
        """RegisterWorker, recorded as ``register``; a new incarnation on every call."""
        op_id = self.recorder.op_id()
        self.recorder.event("invoke", "register", {"rejoin": rejoin}, op_id)
        try:
            response = await self.call(
                "RegisterWorker",
                lambda: pb.RegisterWorkerRequest(
                    worker_id=self.worker_id,
                    capacity=1.0,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    client_version=_CLIENT_VERSION,
                ),
                operation="register worker",
                mutating=True,
            )
        except DtrError as err:
            self.recorder.event("fail", "register", {"error": type(err).__name__}, op_id)
            raise
        self.incarnation = response.incarnation
        self.recorder.event(
            "ok",
            "register",
            {"incarnation": response.incarnation},
            op_id,
            generation=response.header.generation,
        )

    async def rejoin(self, seen_incarnation: int) -> None:
        """Register again, unless an incarnation newer than ``seen`` already did."""
        async with self._rejoining:
            if seen_incarnation != self.incarnation:
                return
            self.check_usable()
            _log.warning(
                "%s (incarnation %d) is unknown to the leader; registering again",
                self.worker_id,
                self.incarnation,
            )
            await self.register(rejoin=True)

    # -- heartbeats -------------------------------------------------------------------
    def _beat(self, sequence: int) -> pb.WorkerBeat:
        beat = pb.WorkerBeat(
            worker_id=self.worker_id,
            incarnation=self.incarnation,
            sequence=sequence,
            step=self.step,
            samples_per_s=self.samples_per_s,
        )
        if self.checkpoint_progress is not None:
            beat.checkpoint.CopyFrom(self.checkpoint_progress())
        return beat

    async def beat_forever(self) -> None:
        """Beat until cancelled or superseded; failures are logged once per outage."""
        interval = self.heartbeat_interval_s
        policy = self.client.policy.with_deadline(max(3 * interval, 2.0))
        sequence, outage = 0, False
        while not self.superseded:
            sequence += 1
            beat = self._beat(sequence)
            try:
                response = await self.call(
                    "Heartbeat",
                    lambda: pb.HeartbeatRequest(beat=beat),  # noqa: B023 - awaited right here
                    operation="heartbeat",
                    mutating=True,
                    policy=policy,
                )
            except DtrError as err:
                if not outage:
                    _log.warning(
                        "%s: heartbeats failing, training goes on: %s", self.worker_id, err
                    )
                outage = True
                await asyncio.sleep(interval)
                continue
            outage = False
            if response.next_interval_s > 0:
                interval = response.next_interval_s
            await self._on_status(response.status, beat.incarnation)
            # A little early, never late, so a process's beats spread out.
            await asyncio.sleep(interval * random.uniform(0.8, 1.0))

    async def _on_status(self, status: pb.WorkerStatus, incarnation: int) -> None:
        if status == pb.WORKER_STATUS_OK:
            return
        if status == pb.WORKER_STATUS_STALE_INCARNATION:
            async with self._rejoining:  # our own rejoin in flight finishes first: its
                current = self.incarnation  # answer is what makes this beat an old one
            if incarnation == current:  # not merely a beat older than our rejoin
                _log.error("%s: a newer incarnation registered; stopping", self.worker_id)
                self.superseded = True
            return
        try:
            await self.rejoin(incarnation)
        except DtrError as err:
            _log.warning("%s: rejoining failed, will retry: %s", self.worker_id, err)

    # -- leaving ----------------------------------------------------------------------
    async def deregister(self, reason: pb.DeregisterReason, detail: str = "") -> None:
        """Leave the job on purpose; errors are logged, not raised (the leader times us out)."""
        if self.superseded or not self.incarnation:
            return
        try:
            await self.call(
                "Deregister",
                lambda: pb.DeregisterRequest(
                    worker_id=self.worker_id,
                    incarnation=self.incarnation,
                    reason=reason,
                    detail=detail[:500],
                ),
                operation="deregister",
                mutating=True,
                policy=self.client.policy.with_deadline(_DEREGISTER_DEADLINE_S),
            )
        except DtrError as err:
            _log.warning("%s: deregistering failed: %s", self.worker_id, err)


def steps_per_s(steps: int, since: float) -> float:
    """The throughput a beat reports: steps trained per second since ``since`` (monotonic)."""
    elapsed = time.monotonic() - since
    return steps / elapsed if elapsed > 0 and steps > 0 else 0.0
