"""Train a small MLP on sharded synthetic data with dtr: the script to copy.

Every worker process runs this same script. dtr decides which shards of the
dataset each one reads (``ShardSampler``), keeps the membership current as
workers join and leave, and lines the workers up at the end of every epoch
(``Worker.barrier``). There is no ``torch.distributed`` here: each worker
trains its own copy of the model on its own shards, which is enough to show
the moving parts; wrapping the model in DDP changes nothing below.

Run it against a local cluster::

    # terminal 1: etcd and three coordinator replicas; it prints export lines
    dtr up --replicas 3

    # terminals 2 and 3: paste the ``export DTR_COORDINATORS=...`` line, then
    python examples/train_mlp.py --worker-id w0
    python examples/train_mlp.py --worker-id w1

    # or name the coordinators explicitly
    python examples/train_mlp.py --coordinators 127.0.0.1:50051,127.0.0.1:50052 --worker-id w0

Start and stop workers while the others train: each epoch prints the
membership generation and how many shards the worker owns, and both change
at the next epoch boundary. Kill a coordinator replica (even the leader) and
training goes on; while no coordinator answers at all, the worker trains on
the shards it last received and the epoch line says ``stale True``.

The data is deterministic: inputs from a fixed seed, labels from a fixed
random linear "teacher", so every worker agrees on sample ``i`` without
sharing anything, and the loss falls as the MLP learns the teacher.
Checkpointing is not shown yet (``CheckpointManager`` comes later).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dtr.errors import BarrierMissed, DtrError
from dtr.worker import ShardSampler, Worker

log = logging.getLogger("train_mlp")

DATASET = "synthetic-mlp"
FEATURES = 32
CLASSES = 10
DATA_SEED = 1234  # the same on every worker: sample i must mean the same thing everywhere


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, each defaulting to its environment variable where dtr defines one."""
    parser = argparse.ArgumentParser(
        description="Train a small MLP on sharded synthetic data with dtr.",
        epilog="--coordinators defaults to $DTR_COORDINATORS, --job to $DTR_JOB, "
        "--worker-id to $DTR_WORKER_ID (else host and rank or pid).",
    )
    parser.add_argument(
        "--coordinators",
        default=os.environ.get("DTR_COORDINATORS"),
        help="HOST:PORT[,HOST:PORT...] of the coordinator replicas ($DTR_COORDINATORS)",
    )
    parser.add_argument(
        "--job", default=os.environ.get("DTR_JOB") or "default", help="job name ($DTR_JOB)"
    )
    parser.add_argument(
        "--worker-id", default=None, help="this worker's id, stable across restarts of it"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=65_536)
    parser.add_argument("--shards", type=int, default=64, help="shards the dataset is split in")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--barrier-timeout-s", type=float, default=300.0, help="how long an epoch end may wait"
    )
    args = parser.parse_args(argv)
    if not args.coordinators:
        parser.error("give --coordinators HOST:PORT[,...] or set DTR_COORDINATORS")
    for name in ("epochs", "num_samples", "shards", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.num_samples < args.shards:
        parser.error("--num-samples must be at least --shards (no empty shards)")
    return args


def synthetic_dataset(num_samples: int) -> TensorDataset:
    """Inputs and teacher labels that every worker builds identically from ``DATA_SEED``.

    A real job reads its own data here; what matters is that index ``i``
    names the same sample on every worker, since dtr hands out indices.
    """
    generator = torch.Generator().manual_seed(DATA_SEED)
    inputs = torch.randn(num_samples, FEATURES, generator=generator)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    labels = (inputs @ teacher).argmax(dim=1)
    return TensorDataset(inputs, labels)


def shard_size_for(num_samples: int, shards: int) -> int:
    """Samples per shard so that ``shards`` shards cover the data and only the last is short."""
    return -(-num_samples // shards)  # ceiling division


def end_epoch(worker: Worker, epoch: int, timeout_s: float) -> None:
    """Wait at this epoch's barrier; ``barrier`` arrives again by itself when membership moves.

    ``BarrierMissed`` means the others finished this epoch without this
    worker (it joined late, or was declared dead and came back), and the
    answer is final. A script with checkpoints would load the latest
    complete one if it is ahead of this worker (docs/concepts.md, Barrier);
    this one keeps none, so it goes on to the next epoch and meets the others
    at that epoch's barrier, where they wait for it. Never retrying the
    missed barrier is what makes the loop end.
    """
    try:
        worker.barrier(f"epoch-{epoch}", timeout_s=timeout_s)
    except BarrierMissed as err:
        log.info("%s; going on to the next epoch", err)


def train(args: argparse.Namespace) -> float:
    """Train ``args.epochs`` epochs on this worker's shards; returns the last epoch's mean loss."""
    torch.manual_seed(0)  # the same initial weights on every worker, as DDP would enforce
    dataset = synthetic_dataset(args.num_samples)
    model = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    loss = float("nan")
    with Worker(args.coordinators, worker_id=args.worker_id, job=args.job) as worker:
        created = worker.register_dataset(DATASET, num_shards=args.shards)  # idempotent
        log.info(
            "joined job %s as %s; dataset created here: %s", worker.job, worker.worker_id, created
        )
        sampler = ShardSampler(
            worker,
            DATASET,
            shard_size=shard_size_for(args.num_samples, args.shards),
            num_samples=args.num_samples,
        )
        loader = DataLoader(dataset, sampler=sampler, batch_size=args.batch_size)
        step = 0
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)  # the next iteration asks dtr for this epoch's shards
            started, total, samples = time.monotonic(), 0.0, 0
            for inputs, labels in loader:
                optimizer.zero_grad()
                batch_loss = loss_fn(model(inputs), labels)
                batch_loss.backward()
                optimizer.step()
                step += 1
                total += batch_loss.item() * len(labels)
                samples += len(labels)
                # Read by the coordinator on the next heartbeat (straggler detection).
                worker.report_progress(step, samples_per_s=samples / (time.monotonic() - started))
            loss = total / max(samples, 1)
            end_epoch(worker, epoch, args.barrier_timeout_s)
            assignment = sampler.assignment
            assert assignment is not None  # set by the epoch's first iteration
            print(
                f"epoch {epoch}: generation {assignment.generation}, "
                f"shards {len(assignment.shard_ids)}/{assignment.num_shards}, "
                f"samples {samples}, loss {loss:.4f}, stale {assignment.stale}",
                flush=True,
            )
    return loss


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        loss = train(args)
    except DtrError as err:  # typed, with a message that says what to do
        log.error("training stopped: %s: %s", type(err).__name__, err)
        return 1
    print(f"done: {args.epochs} epochs, final loss {loss:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
