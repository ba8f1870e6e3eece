"""A worker process for the checkpoint tests, driven line by line on stdin.

``python checkpoint_child.py COORDINATORS JOB WORKER_ID URI QUEUE [FSIZE_LIMIT]``
joins the job, prints ``ready``, then obeys one command per line:

- ``save STEP MIB``: save a state of MIB mebibytes filled with STEP; prints
  ``saved STEP`` once the part is durable and its commit queued, or
  ``failed STEP <error type>: <message>``;
- ``wait``: waits until every queued commit is acknowledged; prints ``committed``
  (or ``wait failed <error type>: <message>``: a save failed since the last wait);
- ``load``: prints ``loaded STEP VALUE`` (the latest complete step and the
  value its state holds) or ``loaded none``;
- ``exit``: closes everything and exits 0.

A real process so tests can kill it with SIGKILL mid-write and restart it;
``FSIZE_LIMIT`` (bytes) caps the files it may write, a disk that fills up.
"""

from __future__ import annotations

import resource
import signal
import sys

import torch

from dtr.errors import DtrError
from dtr.worker import CheckpointManager, Worker


def state_of(step: int, mib: int) -> dict[str, object]:
    return {"weights": torch.full((mib * 262_144,), float(step)), "step": step}


def obey(manager: CheckpointManager, command: list[str]) -> str:
    if command[0] == "save":
        step, mib = int(command[1]), int(command[2])
        try:
            manager.save_async(state_of(step, mib), step).result()
        except DtrError as err:
            return f"failed {step} {type(err).__name__}: {err}"
        return f"saved {step}"
    if command[0] == "wait":
        try:
            manager.wait(timeout_s=60)
        except DtrError as err:  # the first save that failed since the last wait
            return f"wait failed {type(err).__name__}: {err}"
        return "committed"
    if command[0] == "load":
        state, step = manager.load_latest(default=(None, None))
        if state is None:
            return "loaded none"
        return f"loaded {step} {float(state['weights'][0])}"
    return f"unknown command {command!r}"


def main() -> int:
    coordinators, job, worker_id, uri, queue = sys.argv[1:6]
    if len(sys.argv) > 6:
        limit = int(sys.argv[6])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    worker = Worker(coordinators, worker_id=worker_id, job=job, heartbeat_interval_s=0.2)
    with worker, CheckpointManager(worker, uri, queue_path=queue) as manager:
        print("ready", flush=True)
        for line in sys.stdin:
            command = line.split()
            if not command or command[0] == "exit":
                break
            print(obey(manager, command), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
