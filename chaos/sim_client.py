"""The simulated workers' client: ``dtr.worker.aio_client.AsyncCoordinatorClient``.

Hundreds of simulated workers (``sim_worker.py``) share one client: the
public asyncio client of ``dtr.worker.aio``, under the name the harness has
always used, plus helpers that register bare workers for tests and
benchmarks.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Sequence

from dtr.proto import coordinator_pb2 as pb
from dtr.worker.aio_client import AnswerHook, AsyncCoordinatorClient

__all__ = [
    "AnswerHook",
    "AsyncCoordinatorClient",
    "SimClient",
    "register_request",
    "register_workers",
]


#: The harness's name for the public asyncio client.
SimClient = AsyncCoordinatorClient


def register_request(worker_id: str) -> Callable[[], pb.RegisterWorkerRequest]:
    """The builder of a bare registration of ``worker_id`` (this process, capacity 1)."""
    return functools.partial(
        pb.RegisterWorkerRequest,
        worker_id=worker_id,
        capacity=1.0,
        host="loopback",
        pid=os.getpid(),
        client_version="dtr-sim",
    )


async def register_workers(client: SimClient, worker_ids: Sequence[str]) -> int:
    """Register every id at once (tests and benchmarks); the generation once all are members.

    Bare registrations, no heartbeats: the caller's cluster needs a heartbeat
    timeout longer than what it measures.
    """
    answers = await asyncio.gather(
        *(
            client.call(
                "RegisterWorker",
                register_request(worker_id),
                caller=worker_id,
                operation=f"register {worker_id}",
                mutating=True,
            )
            for worker_id in worker_ids
        )
    )
    return int(max(answer.header.generation for answer in answers))
