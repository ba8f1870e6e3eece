"""The training script torchrun starts in the rendezvous tests: all-reduce, report, wait, finish.

``torchrun ... torchrun_child.py OUT_DIR`` (with ``DTR_TEST_NODE`` naming the
agent in its environment):

1. joins the gloo group torchrun set up and all-reduces ``rank + 1``;
2. writes ``OUT_DIR/ready-<node>-<pid>.json`` (rank, world size, the sum,
   torchrun's restart count) — the test kills this pid to fail the worker.
   Named by pid, not restart count: an agent whose peer failed restarts its
   own worker without counting a restart;
3. waits, up to a deadline, for ``OUT_DIR/go`` (the test's signal);
4. all-reduces again, writes ``done-<node>-<pid>.json``, exits 0.

A script, not a test: its checks are the test's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

GO_DEADLINE_S = 180.0


def all_reduce_rank() -> int:
    tensor = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(tensor)
    return int(tensor.item())


def report(path: Path, **fields: object) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(fields))
    temporary.rename(path)  # the test never reads half a file


def main() -> int:
    out = Path(sys.argv[1])
    node = os.environ["DTR_TEST_NODE"]
    dist.init_process_group("gloo")
    facts = {
        "pid": os.getpid(),
        "rank": dist.get_rank(),
        "world": dist.get_world_size(),
        "restart": int(os.environ["TORCHELASTIC_RESTART_COUNT"]),
    }
    report(out / f"ready-{node}-{os.getpid()}.json", total=all_reduce_rank(), **facts)
    deadline = time.monotonic() + GO_DEADLINE_S
    while not (out / "go").exists():
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.05)
    report(out / f"done-{node}-{os.getpid()}.json", total=all_reduce_rank(), **facts)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
