"""A chaos worker: a small real training loop that records what it sees into a history.

``python -m dtr.chaos.workload --coordinators A,B --job J --worker-id W
--history PATH --start T0 --checkpoint URI --queue PATH`` trains an MLP on
synthetic data with ``Worker``, ``ShardSampler`` and ``CheckpointManager``,
the way a user's script does, and appends every operation to its own JSONL
history (``dtr.chaos.history``) on the harness's clock (``--start`` is the
harness's monotonic zero). It is what the nemesis kills, pauses and cuts off;
the checkers read what it wrote.

What it records (the schema ``dtr.chaos.checkers`` reads): ``register``,
``load`` (the step resumed from), ``get_shards`` (per epoch), ``train`` (per
step), ``save`` (invoke at ``save_async``, ok when durable and queued),
``commit`` (each answered commit record), ``barrier`` (after each save) and
``write`` (every mutating call a coordinator accepted, with its term and
replica). It exits 0 after ``--steps`` steps, once every commit is answered;
SIGTERM (the harness's settle deadline) ends training early the same way:
queued commits answered, the ``done`` barrier, deregistration, exit 0.

``--step-time-s`` adds that much simulated compute to every step: the MLP
trains a step in about a millisecond, so without it a run's length would be
set by the machine's speed; with it, ``steps x step time`` sizes a run that
lasts as long as the chaos schedule, on any machine.

Workers keep in step the way data-parallel ranks do: a barrier named after
the step (``step-<n>``) follows every save. ``Worker.barrier`` arrives again
by itself when membership moves before the release. A barrier released
without this worker (it restarted, or was declared dead and came back)
answers ``BarrierMissed``: the worker then loads the latest complete step if
it is ahead of its own (recorded as ``load``) and otherwise replays on, so it
meets the others at the step where they wait — the one loop pattern of
docs/concepts.md. Any other barrier failure is recorded and training goes on.
``WorkerSuperseded`` (recorded as ``superseded``) ends one membership: the
process registers again and resumes, as a job script's launcher would.

Training is not deterministic: torch is seeded from ``os.urandom`` and every
saved state holds a fresh random ``nonce``, so a step saved twice differs
(an overwritten part is visible). ``register`` records the ``incarnation``
and ``job_life``; every ``save`` ok its ``job_life``. SIGUSR1 / SIGUSR2 turn
``client-cancel``'s short call deadlines on and off (``workload_deadlines.py``;
each change is recorded as ``deadline``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import torch

from dtr.errors import BarrierMissed, DtrError, WorkerSuperseded
from dtr.proto import coordinator_pb2 as pb
from dtr.worker import CheckpointManager, SaveResult, ShardSampler, Worker
from dtr.worker.commit_flusher import CommitAck
from dtr.worker.commit_queue import CommitRecord

from .history import Event, EventType, History
from .workload_deadlines import Deadlines

_log = logging.getLogger(__name__)

_T = TypeVar("_T")
FEATURES, CLASSES, SHARD_SIZE = 16, 4, 32


class Recorder:
    """Events of one process: ``invoke`` then ``ok`` / ``fail`` / ``info`` for each operation."""

    def __init__(self, history: History, process: str) -> None:
        self.history, self.process = history, process

    def event(
        self, kind: EventType, f: str, value: dict[str, Any], op_id: str | None = None, **extra: Any
    ) -> None:
        self.history.record(
            Event(self.history.clock(), self.process, kind, f, value, op_id, **extra)
        )

    def call(
        self,
        f: str,
        value: dict[str, Any],
        run: Callable[[], _T],
        done: Callable[[_T], dict[str, Any]],
    ) -> _T:
        """Run ``run`` between an invoke and its outcome; a ``DtrError`` is recorded as fail."""
        op_id = self.history.op_id(self.process)
        self.event("invoke", f, value, op_id)
        try:
            result = run()
        except DtrError as err:
            self.event("fail", f, {**value, "error": type(err).__name__}, op_id)
            raise
        except BaseException as err:
            self.event("info", f, {**value, "error": type(err).__name__}, op_id)
            raise
        self.event("ok", f, done(result), op_id)
        return result


def synthetic_data(num_samples: int) -> torch.utils.data.TensorDataset:
    """Inputs from a fixed seed, labels from a fixed linear teacher: the same on every worker."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(num_samples, FEATURES, generator=generator)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    return torch.utils.data.TensorDataset(inputs, (inputs @ teacher).argmax(dim=1))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dtr.chaos.workload", description=__doc__)
    for flag in ("--coordinators", "--job", "--worker-id", "--history", "--checkpoint", "--queue"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--deadline-file", type=Path, help="client-cancel's deadline, on SIGUSR1")
    parser.add_argument("--start", type=float, required=True, help="the harness's monotonic zero")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--save-every", type=int, default=20)
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--heartbeat-interval-s", type=float, default=0.5)
    parser.add_argument("--step-time-s", type=float, default=0.0, help="simulated compute per step")
    parser.add_argument("--barrier-timeout-s", type=float, default=60.0)
    return parser.parse_args(argv)


#: Set by SIGTERM: the harness's settle deadline passed; finish like a job that is told to stop.
STOPPING = threading.Event()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    level = logging.INFO if os.environ.get("DTR_DEBUG") else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    # Every process trains its own way: a re-saved step differs from the first save.
    torch.manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))
    signal.signal(signal.SIGTERM, lambda signum, frame: STOPPING.set())
    deadlines = Deadlines(args.deadline_file)
    deadlines.install()
    with History(Path(args.history), start=args.start) as history:
        recorder = Recorder(history, f"worker:{args.worker_id}")
        while True:
            try:
                run(args, recorder, deadlines)
                return 0
            except WorkerSuperseded as err:
                # What a job script's launcher does with a process told to stop:
                # start it again, registering anew and resuming from the latest step.
                recorder.event("info", "superseded", {"error": str(err)})


def run(args: argparse.Namespace, recorder: Recorder, deadlines: Deadlines) -> None:
    """One life of this process's membership: register, train, drain, leave together."""
    worker = recorder.call(
        "register",
        {},
        lambda: Worker(
            args.coordinators,
            worker_id=args.worker_id,
            job=args.job,
            heartbeat_interval_s=args.heartbeat_interval_s,
        ),
        lambda w: {"incarnation": w.incarnation, "job_life": w.job_life},
    )
    worker.add_answer_listener(_write_recorder(recorder))
    deadlines.attach(worker)
    with (
        worker,
        CheckpointManager(
            worker, args.checkpoint, queue_path=args.queue, on_commit=_commit_recorder(recorder)
        ) as manager,
    ):
        train(args, worker, manager, recorder, deadlines)
        _drain(manager)
        # Leave together: a member that deregisters before the others'
        # commits of the last steps arrive bumps the generation, and
        # those steps can then never complete.
        _barrier(worker, recorder, "done", args.barrier_timeout_s)


def _drain(manager: CheckpointManager) -> None:
    """Wait until every save is durable and every commit answered.

    ``wait()`` raises the first save that failed since the last call (a full
    disk, under chaos): those are recorded as ``fail`` by ``_save`` already
    and expected here, so wait once more for the commits of the others.
    """
    try:
        manager.wait(timeout_s=120)
    except DtrError as err:
        _log.info("a save failed earlier (recorded): %s; waiting for the commits", err)
        manager.wait(timeout_s=120)


def _write_recorder(recorder: Recorder) -> Callable[[str, str, pb.ResponseHeader, bool], None]:
    def record(method: str, address: str, header: pb.ResponseHeader, accepted: bool) -> None:
        # Only the leader's answers are writes: a follower answering a released
        # barrier (or a deposed leader finishing a fenced write) stamps its header
        # with the newest term it knows, which is another replica's.
        if accepted and header.term and header.is_leader:
            value = {"replica": header.replica_id, "method": method}
            recorder.event("ok", "write", value, term=header.term, generation=header.generation)

    return record


def _commit_recorder(recorder: Recorder) -> Callable[[CommitRecord, CommitAck], None]:
    def record(commit: CommitRecord, ack: CommitAck) -> None:
        value = {
            "step": commit.step,
            "outcome": str(ack.outcome),
            "step_complete": ack.step_complete,
            "latest_complete_step": ack.latest_complete_step,
        }
        recorder.event("ok", "commit", value, generation=commit.generation)

    return record


def train(
    args: argparse.Namespace,
    worker: Worker,
    manager: CheckpointManager,
    recorder: Recorder,
    deadlines: Deadlines,
) -> None:
    """The loop: resume, then epochs of shards, a save and a barrier every ``save_every`` steps."""
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, CLASSES)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state, step = _load(manager, recorder)
    _restore(model, optimizer, state)
    worker.register_dataset("chaos", args.shards)
    sampler = ShardSampler(worker, "chaos", shard_size=SHARD_SIZE)
    loader = torch.utils.data.DataLoader(
        synthetic_data(args.shards * SHARD_SIZE), sampler=sampler, batch_size=16
    )
    epoch = 0
    while step < args.steps and not STOPPING.is_set():
        sampler.set_epoch(epoch)
        len(sampler)  # fetches this epoch's assignment
        _record_assignment(recorder, sampler, epoch)
        for inputs, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if args.step_time_s > 0:
                time.sleep(args.step_time_s)  # the rest of a real step's compute
            step += 1
            worker.report_progress(step)
            recorder.event("ok", "train", {"step": step, "loss": round(float(loss), 4)})
            if (change := deadlines.change()) is not None:
                recorder.event("info", "deadline", change)
            if step % args.save_every == 0:
                state = {
                    "model": model.state_dict(),
                    "opt": optimizer.state_dict(),
                    "nonce": torch.rand(4),  # fresh each save: a re-save is never byte-identical
                }
                _save(manager, recorder, state, step, worker.job_life)
                if _barrier(worker, recorder, f"step-{step}", args.barrier_timeout_s):
                    resumed = _catch_up(manager, recorder, model, optimizer, step)
                    if resumed > step:  # further on: a fresh pass over this worker's shards
                        step = resumed
                        break
            if step >= args.steps or STOPPING.is_set():
                break
        epoch += 1


def _load(manager: CheckpointManager, recorder: Recorder) -> Any:
    """``(state, step)`` of the latest complete step (recorded as ``load``), else ``(None, 0)``."""
    return recorder.call(
        "load", {}, lambda: manager.load_latest(default=(None, 0)), lambda r: {"step": r[1] or None}
    )


def _catch_up(
    manager: CheckpointManager,
    recorder: Recorder,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
) -> int:
    """After a missed barrier: the latest complete step if it is ahead (loaded), else ``step``.

    Never going back is what ends the loop: a restarted worker replays steps
    whose barriers were released without its new incarnation, and reloading
    the same older step at each of them would replay them forever.
    """
    state, latest = _load(manager, recorder)
    if latest <= step:
        return step
    _restore(model, optimizer, state)
    return int(latest)


def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: Any) -> None:
    """Load a real worker's saved state; a simulated worker's part (no model) leaves them be.

    In a mixed run the part ``load_latest`` picks may be a simulated
    worker's (``sim_checkpoint.py``): the step is resumed, the weights kept.
    """
    if isinstance(state, dict) and "model" in state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["opt"])


def _record_assignment(recorder: Recorder, sampler: ShardSampler, epoch: int) -> None:
    assignment = sampler.assignment
    if assignment is None:
        return
    value = {
        "dataset": assignment.dataset,
        "epoch": epoch,
        "shard_ids": list(assignment.shard_ids),
        "num_shards": assignment.num_shards,
        "stale": assignment.stale,
    }
    recorder.event("ok", "get_shards", value, generation=assignment.generation)


def _save(
    manager: CheckpointManager,
    recorder: Recorder,
    state: dict[str, Any],
    step: int,
    job_life: str,
) -> None:
    """Save asynchronously; ``ok`` (with the ``job_life`` it was saved in) once durable."""
    op_id = recorder.history.op_id(recorder.process)
    recorder.event("invoke", "save", {"step": step}, op_id)
    future = manager.save_async(state, step)
    lock = threading.Lock()

    def done(finished: Future[SaveResult]) -> None:
        with lock:
            error = finished.exception()
            if error is None:
                recorder.event("ok", "save", {"step": step, "job_life": job_life}, op_id)
            else:
                recorder.event("fail", "save", {"step": step, "error": type(error).__name__}, op_id)

    future.add_done_callback(done)


def _barrier(worker: Worker, recorder: Recorder, name: str, timeout_s: float) -> bool:
    """Arrive at ``name`` (recorded); True if it was released without this worker.

    ``Worker.barrier`` arrives again by itself after membership changes, so
    one call is one recorded operation. Failures are expected under chaos:
    none stops training, and a missed barrier is never retried (the answer
    is final); the caller decides whether to resume from a checkpoint.
    """
    try:
        recorder.call(
            "barrier",
            {"name": name, "generation": worker.generation},
            lambda: worker.barrier(name, timeout_s=timeout_s),
            lambda generation: {"name": name, "generation": generation},
        )
    except BarrierMissed:
        return True
    except WorkerSuperseded:
        raise  # this membership is over: the process starts a new one (``main``)
    except DtrError:
        pass
    return False


if __name__ == "__main__":
    sys.exit(main())
