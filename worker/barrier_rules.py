"""What a barrier answer means for the worker: shared by ``Worker`` and ``AsyncWorker``.

The threaded and the asyncio worker wait differently (a blocking call, an
awaited one) but must decide alike: which answer releases, which is final
(``BarrierMissed``), which makes the worker arrive again, and what each error
says. Those rules live here once, as plain functions of the answer.
"""

from __future__ import annotations

from dtr.errors import (
    BarrierMissed,
    BarrierTimeout,
    CoordinatorUnavailable,
    InvalidArgument,
    MembershipChanged,
    WorkerSuperseded,
)
from dtr.keys import validate_name
from dtr.proto import coordinator_pb2 as pb

from .arguments import BarrierOnChange, positive, whole

_ON_CHANGE: tuple[BarrierOnChange, ...] = ("rearrive", "raise")


def barrier_arguments(
    name: str, timeout_s: float, generation: int | None, on_change: BarrierOnChange
) -> tuple[int | None, float, bool]:
    """(generation, timeout_s, whether to arrive again on a change), validated."""
    validate_name("barrier name", name)
    if generation is not None:
        generation = whole("generation", generation, 1, 2**64 - 1)
    timeout_s = positive("timeout_s", timeout_s)
    if on_change not in _ON_CHANGE:
        raise InvalidArgument(f"on_change must be one of {_ON_CHANGE}; got {on_change!r}")
    return generation, timeout_s, on_change == "rearrive" and generation is None


def released_generation(
    answer: pb.BarrierResponse, name: str, worker_id: str, incarnation: int
) -> int | None:
    """The generation a RELEASED answer carries; ``BarrierMissed`` for MISSED; else None."""
    if answer.status == pb.BARRIER_STATUS_RELEASED:
        return int(answer.barrier_generation)
    if answer.status == pb.BARRIER_STATUS_MISSED:
        raise BarrierMissed(
            f"barrier {name!r} was released without this worker ({worker_id}, incarnation "
            f"{incarnation}): resume from the latest complete checkpoint "
            "(CheckpointManager.load_latest) if it is ahead of this worker's step, "
            "else go on to the next step; docs/concepts.md shows the loop"
        )
    return None


def membership_changed(name: str, generation: int) -> MembershipChanged:
    return MembershipChanged(
        f"barrier {name!r}: membership changed before release (now generation "
        f"{generation}); refresh shards and call the barrier again"
    )


def rejoined(name: str, worker_id: str, generation: int) -> MembershipChanged:
    return MembershipChanged(
        f"barrier {name!r}: worker {worker_id} had been removed from the job and rejoined "
        f"(generation {generation}); refresh shards and call the barrier again"
    )


def registered_again(name: str, worker_id: str, incarnation: int) -> MembershipChanged:
    return MembershipChanged(
        f"barrier {name!r}: worker {worker_id} registered again during the call "
        f"(incarnation {incarnation}); call the barrier again"
    )


def superseded(name: str, worker_id: str) -> WorkerSuperseded:
    return WorkerSuperseded(
        f"worker {worker_id}: a newer incarnation of this id registered (barrier {name!r}); "
        "stop this process"
    )


def unavailable(name: str, timeout_s: float, err: Exception) -> CoordinatorUnavailable:
    return CoordinatorUnavailable(
        f"barrier {name!r}: no coordinator answered within its timeout of {timeout_s:g} s ({err})"
    )


def timed_out(name: str, timeout_s: float, last: pb.BarrierResponse | None) -> BarrierTimeout:
    missing = ", ".join(last.missing_worker_ids) if last else "unknown"
    arrived = f"{last.arrived}/{last.expected}" if last else "?"
    return BarrierTimeout(
        f"barrier {name!r}: not released within {timeout_s:g} s ({arrived} arrived; "
        f"missing: {missing})"
    )
