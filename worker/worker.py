"""``Worker``: one training process's membership in a dtr job (DESIGN §3 Python API).

A ``Worker`` registers on construction, beats in the background
(``heartbeats``), and offers what a training loop calls: ``register_dataset``,
``get_shards`` / ``shard_assignment``, ``barrier`` and ``generation``. It is
built to keep training going through coordinator failovers and partitions:

- every call follows the leader and retries under one policy (``client``);
- the worker re-registers itself, as a new incarnation, whenever the leader
  says it does not know it or declared it dead (after a partition longer
  than the heartbeat timeout), from the heartbeat thread or from a call;
- while no coordinator answers, ``shard_assignment`` serves the last
  assignment it received for the dataset (``stale=True``, logged) after a
  short deadline, and ``barrier`` raises ``CoordinatorUnavailable`` when its
  timeout runs out, never hanging.

Only ``dtr.errors`` types leave this module. What must not live here: any
etcd access or coordinator import (the worker reaches state over gRPC only).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from dtr.errors import (
    CheckpointError,
    CoordinatorUnavailable,
    DtrError,
    InvalidArgument,
    MembershipChanged,
    StaleIncarnation,
    StaleRound,
    UnknownWorker,
    WorkerSuperseded,
)
from dtr.keys import validate_name
from dtr.proto import coordinator_pb2 as pb
from dtr.retry import RetryPolicy
from dtr.security import TlsFiles

from .arguments import (
    BARRIER_GRACE_S,
    BARRIER_POLL_S,
    DEREGISTER_REASON,
    REARRIVE_PAUSE_S,
    BarrierOnChange,
    dataset_request,
    default_worker_id,
    epoch_arg,
    positive,
    progress_args,
)
from .assignment import ShardAssignment
from .barrier_rules import (
    barrier_arguments,
    membership_changed,
    registered_again,
    rejoined,
    released_generation,
    superseded,
    timed_out,
    unavailable,
)
from .checkpoint_rpc import LatestCheckpoint, fetch_latest, send_commit
from .client import AnswerListener, CoordinatorClient, resolve_security
from .commit_flusher import CommitAck
from .commit_queue import CommitRecord
from .heartbeats import HeartbeatLoop
from .metrics import WorkerMetrics, metrics_port_from
from .rendezvous_round import (
    ATTEMPT_TIMEOUT_S,
    join_timeout_s,
    register_in_round,
    round_from_env,
)

_log = logging.getLogger(__name__)

_CLOSE_DEADLINE_S = 5.0
_CLIENT_VERSION = "dtr-worker/0.1"


class Worker:
    """Membership of one training process in a dtr job; see the module docstring."""

    def __init__(
        self,
        coordinators: str | Sequence[str] | None = None,
        *,
        worker_id: str | None = None,
        capacity: float = 1.0,
        heartbeat_interval_s: float = 1.0,
        job: str | None = None,
        retry: RetryPolicy | None = None,
        stale_read_deadline_s: float = 2.0,
        labels: Mapping[str, str] | None = None,
        heartbeat_stream: bool = True,
        tls: TlsFiles | None = None,
        token: str | None = None,
        metrics_port: int | None = None,
    ) -> None:
        """Validate everything, register with the leader and start beating.

        ``coordinators`` defaults to ``$DTR_COORDINATORS`` and ``job`` to
        ``$DTR_JOB`` (else ``"default"``). ``tls`` defaults to
        ``$DTR_TLS_CA`` / ``$DTR_TLS_CERT`` / ``$DTR_TLS_KEY`` (else plaintext)
        and ``token`` to the contents of ``$DTR_TOKEN_FILE`` (else none); see
        docs/security.md. Raises ``InvalidArgument`` before any network
        traffic (bad files included), ``Unauthenticated`` /
        ``PermissionDenied`` when the coordinators refuse the credentials, and
        ``CoordinatorUnavailable`` when no leader accepted the registration
        within ``retry.deadline_s`` (a TLS handshake refused looks like this).
        ``metrics_port`` (else ``$DTR_WORKER_METRICS_PORT``, else off) serves
        ``self.metrics`` on ``/metrics`` (``worker/metrics.py``).
        """
        coordinators = coordinators or os.environ.get("DTR_COORDINATORS")
        if not coordinators:
            raise InvalidArgument("coordinators: give HOST:PORT[,...] or set DTR_COORDINATORS")
        self.worker_id = validate_name("worker_id", worker_id or default_worker_id())
        self.capacity = positive("capacity", capacity)
        self.heartbeat_interval_s = positive("heartbeat_interval_s", heartbeat_interval_s)
        self.stale_read_deadline_s = positive("stale_read_deadline_s", stale_read_deadline_s)
        self.labels = dict(labels or {})
        #: The torchrun round this rank joins as one (rendezvous_round.py), or None.
        self.round_seat = round_from_env()
        self._round_timeout_s = join_timeout_s()
        port = metrics_port_from(metrics_port)
        self.metrics = WorkerMetrics()
        self._client = CoordinatorClient(
            coordinators,
            job=job or os.environ.get("DTR_JOB") or "default",
            caller_id=self.worker_id,
            policy=retry,
            security=resolve_security(tls, token),
            metrics=self.metrics,
        )
        self.job = self._client.job
        self._lock = threading.Lock()
        self._incarnation = 0
        self._job_life = ""
        self.heartbeat_timeout_s = 0.0
        self._superseded = False
        self._closed = False
        self._latest: dict[str, ShardAssignment] = {}  # dataset -> last assignment received
        self._step, self._samples_per_s = 0, 0.0
        #: Set by a CheckpointManager: what each beat reports about saves and commits.
        self.checkpoint_progress: Callable[[], pb.CheckpointProgress] | None = None
        try:
            if port is not None:
                _log.info("worker %s: metrics on %s", self.worker_id, self.metrics.serve(port))
            self._register()
        except BaseException:
            self.metrics.close()
            self._client.close()
            raise
        self._heartbeats = HeartbeatLoop(
            self,
            self._client,
            interval_s=self.heartbeat_interval_s,
            stall_timeout_s=max(3 * self.heartbeat_interval_s, 2.0),
            outage_deadline_s=max(self.heartbeat_timeout_s, 10 * self.heartbeat_interval_s),
            use_stream=heartbeat_stream,
        )
        self._heartbeats.start()
        self.metrics.watch(
            lambda: self._heartbeats.last_ack_at,
            lambda: self._client.generation,
            lambda: self._step,
            lambda: self._samples_per_s,
        )

    # -- membership ---------------------------------------------------------------
    @property
    def incarnation(self) -> int:
        """Grows on every (re-)registration of this worker id."""
        return self._incarnation

    @property
    def job_life(self) -> str:
        """The job life this worker registered into (``"<etcd cluster id>/<job uid>"``).

        Empty when the coordinator predates job lives. Local state made for
        one life (queued commit records) must never be replayed into another.
        """
        return self._job_life

    @property
    def attempt_timeout_s(self) -> float:
        """The deadline of one call attempt that sets none of its own (a long poll does).

        Settable while the worker runs: the chaos harness's ``client-cancel``
        shortens it below a leader write, so coordinators see calls cancelled.
        """
        return self._client.attempt_timeout_s

    @attempt_timeout_s.setter
    def attempt_timeout_s(self, value: float) -> None:
        self._client.attempt_timeout_s = positive("attempt_timeout_s", value)

    @property
    def generation(self) -> int:
        """The newest membership generation any coordinator answer carried."""
        return self._client.generation

    def add_answer_listener(self, listener: AnswerListener) -> None:
        """Call ``listener(method, address, header, accepted_write)`` after every answer.

        For tracing and the chaos harness; it runs on the calling thread (the
        training thread or the heartbeat thread), so it must be quick.
        """
        self._client.answer_listeners.append(listener)

    @property
    def leader_address(self) -> str | None:
        """The coordinator this worker believes leads (None while it does not know)."""
        return self._client.leader_address

    def _register(self) -> None:
        seat = self.round_seat

        def request() -> pb.RegisterWorkerRequest:
            return pb.RegisterWorkerRequest(
                worker_id=self.worker_id,
                capacity=self.capacity,
                host=socket.gethostname(),
                pid=os.getpid(),
                labels=self.labels,
                client_version=_CLIENT_VERSION,
                rendezvous_round=seat.message() if seat is not None else None,
            )

        def register() -> pb.RegisterWorkerResponse:
            return self._client.call(  # type: ignore[no-any-return]
                "RegisterWorker",
                request,
                operation="register worker",
                mutating=True,
                attempt_timeout_s=ATTEMPT_TIMEOUT_S if seat is not None else None,
            )

        if seat is None:
            response = register()
        else:
            response = register_in_round(register, seat, self.worker_id, self._round_timeout_s)
        self._incarnation = response.incarnation
        self._job_life = response.job_life
        self.heartbeat_timeout_s = response.heartbeat_timeout_s
        _log.info(
            "worker %s registered as incarnation %d (generation %d, leader %s)",
            self.worker_id,
            response.incarnation,
            response.header.generation,
            self._client.leader_address,
        )

    def rejoin(self, seen_incarnation: int = 0) -> None:
        """Register again as a new incarnation, unless one newer than ``seen`` exists.

        Called when the leader no longer knows this worker (declared dead after
        a partition, or lost); the new incarnation bumps the generation, so
        shards are reassigned and barriers of the old generation fail.
        """
        with self._lock:
            if seen_incarnation and seen_incarnation != self._incarnation:
                return  # another thread rejoined already
            self._check_usable()
            _log.warning(
                "worker %s (incarnation %d) is unknown to the leader; registering again",
                self.worker_id,
                self._incarnation,
            )
            self._register()

    def on_status(self, status: pb.WorkerStatus, incarnation: int) -> bool:
        """The heartbeat loop's report of a non-OK answer; False stops the beats.

        ``incarnation`` is the one the answered beat carried (0: unknown). A
        STALE_INCARNATION answer to a beat sent before this process registered
        again is about its own old incarnation, not a twin: only an answer
        to a beat of the current incarnation means another process took the
        id (a chaos run caught a worker stopping itself after a partition).
        """
        if status == pb.WORKER_STATUS_STALE_INCARNATION:
            with self._lock:  # a rejoin in flight (another thread's) finishes first
                current = self._incarnation
            if incarnation != current:
                return True  # our own beat from before we re-registered (or not known)
            _log.error(
                "worker %s: a newer incarnation of this id registered; this process must stop",
                self.worker_id,
            )
            self._superseded = True
            return False
        try:
            self.rejoin(incarnation or self._incarnation)
        except StaleRound as err:  # a newer rendezvous round replaced this process's
            _log.error("worker %s: %s", self.worker_id, err)
            self._superseded = True
            return False
        except DtrError as err:
            _log.warning("worker %s: rejoining failed, will retry: %s", self.worker_id, err)
        return True

    def make_beat(self, sequence: int) -> pb.WorkerBeat:
        beat = pb.WorkerBeat(
            worker_id=self.worker_id,
            incarnation=self._incarnation,
            sequence=sequence,
            step=self._step,
            samples_per_s=self._samples_per_s,
        )
        progress = self.checkpoint_progress
        if progress is not None:
            beat.checkpoint.CopyFrom(progress())
        return beat

    def report_progress(self, step: int, samples_per_s: float | None = None) -> None:
        """Tell the coordinator (on the next beat) the step and throughput; never blocks."""
        progress_args(step, samples_per_s)
        if samples_per_s is not None:
            self._samples_per_s = float(samples_per_s)
        self._step = step

    # -- calls --------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._superseded:
            raise WorkerSuperseded(
                f"worker {self.worker_id}: a newer incarnation registered; stop this process"
            )
        if self._closed:
            raise InvalidArgument(f"worker {self.worker_id} is closed")

    def _member_call(self, method: str, build: Callable[[], Any], **kwargs: Any) -> Any:
        """A call about this worker; re-registers once if the leader does not know it."""
        self._check_usable()
        seen = self._incarnation
        try:
            return self._client.call(method, build, **kwargs)
        except UnknownWorker:
            self.rejoin(seen)
            return self._client.call(method, build, **kwargs)

    def register_dataset(
        self,
        name: str,
        num_shards: int,
        *,
        vnodes: int | None = None,
        load_factor: float | None = None,
    ) -> bool:
        """Declare a dataset (idempotent); True if this call created it.

        The same parameters again are fine; different ones raise
        ``AlreadyExists`` (a dataset's shards mean one thing for a job's life).
        """
        build = dataset_request(name, num_shards, vnodes=vnodes, load_factor=load_factor)
        self._check_usable()
        response = self._client.call(
            "RegisterDataset", build, operation=f"register dataset {name!r}", mutating=True
        )
        return bool(response.created)

    def get_shards(self, dataset: str, epoch: int = 0) -> list[int]:
        """This worker's shard ids of ``dataset`` for ``epoch``, ascending."""
        return list(self.shard_assignment(dataset, epoch).shard_ids)

    def shard_assignment(self, dataset: str, epoch: int = 0) -> ShardAssignment:
        """This worker's shards with their generation; ``stale`` while partitioned.

        With an assignment of ``dataset`` already received, a coordinator gets
        ``stale_read_deadline_s`` to answer before that one is served again.
        """
        validate_name("dataset", dataset)
        epoch_arg(epoch)
        cached = self._latest.get(dataset)
        policy = self._client.policy
        if cached is not None:
            policy = policy.with_deadline(self.stale_read_deadline_s)
        try:
            response = self._member_call(
                "GetShards",
                lambda: pb.GetShardsRequest(dataset=dataset, epoch=epoch, worker_id=self.worker_id),
                operation=f"get shards of {dataset!r}",
                mutating=False,
                policy=policy,
            )
        except CoordinatorUnavailable as err:
            if cached is None:
                raise
            _log.warning(
                "no coordinator answered (%s); training on the cached shards of %r "
                "from generation %d",
                err,
                dataset,
                cached.generation,
            )
            return cached.as_stale(epoch)
        fresh = ShardAssignment.of_response(dataset, epoch, response)
        self._latest[dataset] = fresh
        return fresh

    def barrier(
        self,
        name: str,
        timeout_s: float = 300.0,
        *,
        generation: int | None = None,
        on_change: BarrierOnChange = "rearrive",
    ) -> int:
        """Wait until every live member arrived at ``name``; returns the barrier's generation.

        Membership that changes before release (a worker joined, left, died,
        or this worker was declared dead and rejoined) fails the barrier for
        the old generation. By default (``on_change="rearrive"``) this call
        then arrives again under the new generation by itself, as often as
        needed, until the barrier is released or ``timeout_s`` (one deadline
        for all arrivals) runs out: the plain call is the correct one, and
        no caller writes a retry loop. ``on_change="raise"`` raises
        ``MembershipChanged`` instead, for a caller that wants to act on the
        change first (refresh shards) and then call again. An explicit
        ``generation`` (pass the generation of the shard assignment a step
        trained on) pins the barrier to it: it releases only if every member
        arrived for that generation, and a change raises ``MembershipChanged``
        whatever ``on_change`` says, since arriving under another generation
        would break the pin.

        Raises ``BarrierMissed`` when the barrier was released without this
        worker's incarnation (it was dead, or is a restarted process of its
        id): final for this name, every later call answers the same. The
        loop that handles it is in docs/concepts.md (Barrier). Also raises
        ``BarrierTimeout`` when live members are missing at the timeout and
        ``CoordinatorUnavailable`` when no coordinator answered before it.
        """
        generation, timeout_s, rearrive = barrier_arguments(name, timeout_s, generation, on_change)
        with self.metrics.barrier_wait():
            return self._await_barrier(name, timeout_s, generation, rearrive)

    def _await_barrier(
        self, name: str, timeout_s: float, generation: int | None, rearrive: bool
    ) -> int:
        """Long polls until a verdict; arrives again after a membership change if ``rearrive``."""
        deadline = time.monotonic() + timeout_s
        last: pb.BarrierResponse | None = None
        pause_s = REARRIVE_PAUSE_S[0]
        while (remaining := deadline - time.monotonic()) > 0:
            believed = self.generation if generation is None else generation
            try:
                last = self._barrier_poll(
                    name, generation, min(remaining, BARRIER_POLL_S), remaining, timeout_s
                )
            except MembershipChanged:  # rejoined, or an older coordinator's ABORTED
                if not rearrive:
                    raise
                self._log_rearrival(name, believed)
                continue
            released = released_generation(last, name, self.worker_id, self._incarnation)
            if released is not None:
                return released
            if last.status == pb.BARRIER_STATUS_MEMBERSHIP_CHANGED:
                if not rearrive:
                    raise membership_changed(name, self.generation)
                self._log_rearrival(name, believed)
                if self.generation > believed:
                    pause_s = REARRIVE_PAUSE_S[0]
                else:  # no newer generation learned yet: do not spin on the coordinator
                    time.sleep(min(pause_s, max(0.0, deadline - time.monotonic())))
                    pause_s = min(2 * pause_s, REARRIVE_PAUSE_S[1])
        raise timed_out(name, timeout_s, last)

    def _log_rearrival(self, name: str, believed: int) -> None:
        """Arriving again is routine (someone joined or left), so INFO, with both generations."""
        _log.info(
            "barrier %r: membership changed before release (generation %d -> %d); "
            "worker %s arrives again",
            name,
            believed,
            self.generation,
            self.worker_id,
        )

    def _barrier_poll(
        self, name: str, generation: int | None, poll_s: float, remaining_s: float, timeout_s: float
    ) -> pb.BarrierResponse:
        """One arrival (a long poll), bound to this incarnation; rejoins if the leader forgot us.

        The request is rebuilt on every attempt, so a retry carries the
        generation and incarnation the worker knows by then.
        """
        seen = self._incarnation
        self._check_usable()
        try:
            response: pb.BarrierResponse = self._client.call(
                "Barrier",
                lambda: pb.BarrierRequest(
                    name=name,
                    worker_id=self.worker_id,
                    generation=self.generation if generation is None else generation,
                    timeout_s=poll_s,
                    incarnation=self._incarnation,
                ),
                operation=f"barrier {name!r}",
                mutating=True,
                policy=self._client.policy.with_deadline(remaining_s + BARRIER_GRACE_S),
                attempt_timeout_s=poll_s + BARRIER_GRACE_S,
            )
        except CoordinatorUnavailable as err:
            raise unavailable(name, timeout_s, err) from err
        except UnknownWorker as err:
            self.rejoin(seen)
            raise rejoined(name, self.worker_id, self.generation) from err
        except StaleIncarnation as err:
            with self._lock:  # a rejoin in flight (another thread's) finishes first
                current = self._incarnation
            if seen != current:  # this worker registered again during the call
                raise registered_again(name, self.worker_id, self._incarnation) from err
            self._superseded = True  # another process took the id: a twin
            raise superseded(name, self.worker_id) from err
        return response

    # -- checkpoints --------------------------------------------------------------
    def commit_checkpoint(self, record: CommitRecord, deadline_s: float | None = None) -> CommitAck:
        """Record a durable part with the leader (``CheckpointManager`` queues these first).

        ``deadline_s`` shortens the retry budget (the queue's flusher retries anyway).
        A closed worker raises ``CheckpointError``, not ``InvalidArgument``: the
        flusher would take the latter for the coordinator's refusal and drop
        the record, which the next process of this worker must still send.
        """
        if self._closed:
            raise CheckpointError(
                f"worker {self.worker_id} is closed; the commit of step {record.step} stays queued"
            )
        self._check_usable()
        policy = self._client.policy.with_deadline(deadline_s) if deadline_s else None
        return send_commit(self._client, record, policy)

    def latest_checkpoint(self, before_step: int | None = None) -> LatestCheckpoint | None:
        """The job's latest complete step (strictly below ``before_step``), or None."""
        self._check_usable()
        return fetch_latest(self._client, before_step)

    # -- leaving ------------------------------------------------------------------
    def close(
        self, reason: str | None = None, detail: str = "", *, deregister: bool = True
    ) -> None:
        """Stop beating and deregister (idempotent); errors are logged, not raised.

        ``reason``: None (shutdown), ``"preempted"`` or ``"error"``.
        ``deregister=False`` only stops beating: the leader replaces the member
        with the next rendezvous round, or declares it dead after its timeout.
        """
        if self._closed:
            return
        self._closed = True
        self._heartbeats.stop()
        if deregister and not self._superseded:
            try:
                self._client.call(
                    "Deregister",
                    lambda: pb.DeregisterRequest(
                        worker_id=self.worker_id,
                        incarnation=self._incarnation,
                        reason=DEREGISTER_REASON.get(reason, pb.DEREGISTER_REASON_SHUTDOWN),
                        detail=detail[:500],
                    ),
                    operation="deregister",
                    mutating=True,
                    policy=self._client.policy.with_deadline(_CLOSE_DEADLINE_S),
                )
            except DtrError as err:
                _log.warning("worker %s: deregistering failed: %s", self.worker_id, err)
        self._client.close()
        self.metrics.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, KeyboardInterrupt):
            self.close()
        else:
            # A rank of a torchrun round that fails (most often because a peer
            # died and the collective raised) leaves its record to the next
            # round, which replaces the whole group in one generation; ranks
            # deregistering one by one would move it once per rank.
            self.close("error", f"{type(exc).__name__}: {exc}", deregister=self.round_seat is None)

    def __repr__(self) -> str:
        return (
            f"Worker({self.worker_id!r}, job={self.job!r}, incarnation={self._incarnation}, "
            f"generation={self.generation}, leader={self.leader_address!r})"
        )
