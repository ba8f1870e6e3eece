"""A DistributedDataParallel training script with dtr's data sharding and checkpoints.

Run it under torchrun on dtr's rendezvous (docs/tutorial.md, "DDP under torchrun")::

    dtr run --nnodes 1 --nproc-per-node 2 --max-restarts 3 -m dtr.examples.train --steps 200

An ordinary DDP script; the lines marked ``# dtr`` are what dtr adds. ``Worker()`` joins
the rank to the job (``DTR_COORDINATORS``, ``DTR_JOB``). ``ShardSampler`` replaces
``DistributedSampler``: the coordinators hand out the shards. ``CheckpointManager``
(replicated: rank 0 writes each save once, every rank commits it) and ``resume``: every
(re)start goes on from the latest *complete* step, the same on every rank, so a group that
torchrun restarts after a failure loses only the steps since that save. Under dtr's
rendezvous each restart is one new round, and the ranks of a round join dtr's membership
together (docs/torchrun.md, "Membership follows the rendezvous").

``--events DIR`` appends JSON lines to ``DIR/rank-<RANK>.jsonl`` for tests and fault
injection. The first, ``start``, is written before torch is imported (hence the imports
inside functions), so it times a restart from the process's start.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from dtr.worker import CheckpointManager

SHARD_SIZE = 32  # samples per dtr shard
BATCH_SIZE = 32
#: How often the ranks compare the checkpoint step each loaded before they give up.
RESUME_ROUNDS = 10


class Position(NamedTuple):
    """Where training stands: optimizer steps done, the epoch, and batches done in it."""

    step: int
    epoch: int
    batch: int


class Events:
    """One JSON line per event in ``DIR/rank-<RANK>.jsonl`` (off without ``--events``)."""

    def __init__(self, directory: str | None) -> None:
        rank = int(os.environ.get("RANK", "0"))
        self.path = Path(directory) / f"rank-{rank}.jsonl" if directory else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.common = {
            "rank": rank,
            "world": int(os.environ.get("WORLD_SIZE", "1")),
            "pid": os.getpid(),
            "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "round": os.environ.get("DTR_RDZV_ROUND") or None,
        }

    def emit(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {"event": event, "t": time.time(), **self.common, **fields}
        with self.path.open("a", encoding="utf-8") as out:  # one write per line, flushed
            out.write(json.dumps(record) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps in all")
    parser.add_argument("--checkpoint", default="file:///tmp/dtr-ddp", help="file:// or s3:// URI")
    parser.add_argument("--save-every", type=int, default=50, metavar="K")
    parser.add_argument(
        "--step-time", type=float, default=0.0, metavar="S", help="simulated compute per step"
    )
    parser.add_argument("--events", metavar="DIR", help="JSON lines in DIR/rank-<RANK>.jsonl")
    parser.add_argument("--dataset", default="ddp-demo", help="the dtr dataset's name")
    parser.add_argument("--num-shards", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("steps", "save_every", "num_shards"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.step_time < 0:
        parser.error("--step-time must be at least 0")
    return args


def synthetic_dataset(num_samples: int) -> TensorDataset:
    """The same samples in every process (a fixed generator), as a real dataset would be."""
    import torch
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(1234)
    inputs = torch.randn(num_samples, 32, generator=generator)
    labels = (inputs @ torch.randn(32, 10, generator=generator)).argmax(dim=1)
    return TensorDataset(inputs, labels)


def all_ranks(values: list[int], op: Any, device: torch.device) -> list[int]:
    """``values`` all-reduced with ``op`` across the ranks."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=op)
    return [int(v) for v in tensor.tolist()]


def resume(
    checkpoints: CheckpointManager,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> Position:
    """Load the latest complete checkpoint, at the same step on every rank (fresh: step 0).

    Two ranks can read the latest step on either side of a step completing (a restarted
    rank's queued commit lands while the group starts), so the ranks compare the steps
    they loaded (all-reduce MAX of step and -step) and a rank behind loads again.
    """
    import torch.distributed as dist

    from dtr.errors import CheckpointError

    state, step = checkpoints.load_latest(default=(None, 0))  # dtr
    for _ in range(RESUME_ROUNDS):
        newest, minus_oldest = all_ranks([step, -step], dist.ReduceOp.MAX, device)
        if newest == -minus_oldest:
            break
        if step < newest:
            state, step = checkpoints.load_latest(default=(None, 0))  # dtr
    else:
        raise CheckpointError(f"the ranks loaded different checkpoint steps {RESUME_ROUNDS} times")
    if state is None:
        return Position(0, 0, 0)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return Position(step, int(state["epoch"]), int(state["batch"]))


def param_sha256(model: nn.Module) -> str:
    """SHA-256 over every parameter's bytes in order: equal on ranks that hold equal models."""
    digest = hashlib.sha256()
    for parameter in model.parameters():
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def init_distributed() -> tuple[int, torch.device]:
    """Join torchrun's process group (RANK, WORLD_SIZE, MASTER_* in the environment)."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), device


def build_model(seed: int, device: torch.device) -> nn.Module:
    import torch
    from torch import nn

    torch.manual_seed(seed)  # the same initial weights on every rank
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    events = Events(args.events)
    events.emit("start")  # before torch is imported
    import torch.distributed as dist

    rank, device = init_distributed()
    try:
        train(args, events, rank, device)
    finally:
        dist.destroy_process_group()


def train(args: argparse.Namespace, events: Events, rank: int, device: torch.device) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from dtr.worker import CheckpointManager, ShardSampler, Worker  # dtr

    with (
        Worker() as worker,  # dtr: this rank joins the job
        CheckpointManager(  # dtr: rank 0 writes each save once, every rank commits it
            worker, args.checkpoint, replicated=True, writer=rank == 0
        ) as checkpoints,
    ):
        events.emit("joined", generation=worker.generation)
        model = build_model(args.seed, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        at = resume(checkpoints, model, optimizer, device)  # dtr: where the job left off
        events.emit("resumed", step=at.step, epoch=at.epoch)
        ddp = DistributedDataParallel(model)  # on the device the model is on

        dataset = synthetic_dataset(args.num_shards * SHARD_SIZE)
        worker.register_dataset(args.dataset, num_shards=args.num_shards)  # dtr
        # dtr: in place of DistributedSampler, the shards the coordinators assign this rank
        sampler = ShardSampler(worker, args.dataset, shard_size=SHARD_SIZE, seed=args.seed)
        loader = DataLoader(dataset, sampler=sampler, batch_size=BATCH_SIZE)
        step, epoch, batch = at
        while step < args.steps:
            sampler.set_epoch(epoch)  # dtr: this epoch's shards, from the coordinators
            # Ranks may plan under different membership generations: run the fewest
            # batches any rank has, or DDP's collectives would hang.
            (batches,) = all_ranks([len(loader)], dist.ReduceOp.MIN, device)
            for inputs, labels in itertools.islice(loader, batch, batches):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(ddp(inputs.to(device)), labels.to(device))
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                if args.step_time:
                    time.sleep(args.step_time)  # the simulated rest of a real step
                step, batch = step + 1, batch + 1
                worker.report_progress(step)  # dtr: shown by dtr status
                value, generation = loss.item(), worker.generation
                events.emit("step", step=step, loss=value, epoch=epoch, generation=generation)
                if rank == 0 and step % 50 == 0:
                    print(f"step {step} loss {value:.4f}", flush=True)
                if step % args.save_every == 0:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                    checkpoints.save_async({**state, "epoch": epoch, "batch": batch}, step)  # dtr
                    events.emit("saved", step=step)
                if step >= args.steps:
                    break
            else:  # the epoch ran out (or had been done before a restart)
                epoch, batch = epoch + 1, 0

        checkpoints.wait()  # dtr: every save written and committed
        dist.barrier()  # no rank leaves the job (the Worker's exit) before all committed
        digest = param_sha256(model)
        events.emit("done", step=step, param_sha256=digest)
        print(f"rank {rank} param_sha256 {digest}", flush=True)


if __name__ == "__main__":
    main()
