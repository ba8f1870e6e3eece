"""The smallest torchrun job: every rank all-reduces its rank + 1 and prints the sum.

Run it on two nodes with ``--rdzv-backend=dtr`` as docs/torchrun.md shows;
the sum printed on every rank is 1 + 2 + ... + WORLD_SIZE.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_* come from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    print(f"rank {rank} of {world}: all-reduced sum {int(total.item())}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
