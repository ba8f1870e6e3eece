"""The same script on dtr: the end point of docs/tutorial.md."""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dtr.errors import BarrierMissed
from dtr.worker import CheckpointManager, ShardSampler, Worker


def dataset(num_samples: int = 8192) -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    inputs = torch.randn(num_samples, 32, generator=generator)
    labels = (inputs @ torch.randn(32, 10, generator=generator)).argmax(dim=1)
    return TensorDataset(inputs, labels)


def resume(checkpoints: CheckpointManager, model: nn.Module, optimizer, at: tuple[int, int]):
    """Load the latest complete checkpoint if it is past step ``at[1]``; (epoch, step) to go on."""
    state, step = checkpoints.load_latest(default=(None, 0))
    if step <= at[1]:
        return at
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"], step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkpoint", default="file:///tmp/dtr-tutorial")
    args = parser.parse_args()

    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with Worker() as worker, CheckpointManager(worker, args.checkpoint) as checkpoints:
        epoch, step = resume(checkpoints, model, optimizer, (0, 0))

        worker.register_dataset("tutorial", num_shards=64)
        sampler = ShardSampler(worker, "tutorial", shard_size=128)
        loader = DataLoader(dataset(), sampler=sampler, batch_size=64)
        while epoch < args.epochs:
            sampler.set_epoch(epoch)
            for inputs, labels in loader:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs), labels)
                loss.backward()
                optimizer.step()
                step += 1
                worker.report_progress(step)
                if step % 100 == 0:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                    checkpoints.save_async({**state, "epoch": epoch}, step)
            print(f"epoch {epoch}: step {step}, loss {loss.item():.4f}", flush=True)
            try:
                worker.barrier(f"epoch-{epoch}")  # all live workers; arrives again on changes
                epoch += 1
            except BarrierMissed:  # the others finished this epoch without this worker
                epoch, step = resume(checkpoints, model, optimizer, (epoch + 1, step))
        checkpoints.wait()


if __name__ == "__main__":
    main()
