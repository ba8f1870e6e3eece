"""The rank torchrun starts in test_round_torchrun.py: join, register, report, then crash once.

``torchrun ... round_child.py OUT_DIR``: joins the gloo group, builds a dtr
``Worker`` (which joins its rendezvous round as one, coordinator/rounds.py),
and writes ``OUT_DIR/<restart>-<rank>.json`` with what the registration
answered. In torchrun's first attempt rank 1 then dies (``os._exit``, a
crash: no deregistration) while rank 0 waits in a collective, which raises
(its peer is gone; the ``Worker`` leaves its record to the next round), and
torchrun starts both again in a new round; in the second attempt both
finish. A script, not a test: its checks are the test's.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from dtr.worker import Worker


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, restart = dist.get_rank(), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    with Worker(heartbeat_interval_s=0.5) as worker:
        seat = worker.round_seat
        fields = {
            "rank": rank,
            "worker_id": worker.worker_id,
            "incarnation": worker.incarnation,
            "generation": worker.generation,
            "round": seat.round if seat is not None else None,
            "life": seat.life if seat is not None else None,
        }
        path = out / f"{restart}-{rank}.json"
        path.with_suffix(".tmp").write_text(json.dumps(fields))
        path.with_suffix(".tmp").rename(path)
        if restart == 0 and rank == 1:
            os._exit(1)
        # In the first attempt rank 1 never arrives: gloo raises here (its peer is gone),
        # and the Worker leaves its record to the next round instead of deregistering.
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
