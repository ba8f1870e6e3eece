"""A plain PyTorch training script: the starting point of docs/tutorial.md."""

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def dataset(num_samples: int = 8192) -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    inputs = torch.randn(num_samples, 32, generator=generator)
    labels = (inputs @ torch.randn(32, 10, generator=generator)).argmax(dim=1)
    return TensorDataset(inputs, labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkpoint", default="checkpoint.pt")
    args = parser.parse_args()

    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    epoch, step = 0, 0
    if os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step = state["epoch"], state["step"]

    loader = DataLoader(dataset(), shuffle=True, batch_size=64)
    while epoch < args.epochs:
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 100 == 0:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                torch.save({**state, "epoch": epoch, "step": step}, args.checkpoint)
        print(f"epoch {epoch}: step {step}, loss {loss.item():.4f}", flush=True)
        epoch += 1


if __name__ == "__main__":
    main()
