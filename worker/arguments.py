"""The worker API's argument rules and shared constants (``Worker`` and ``AsyncWorker``).

Every value a caller passes is checked here before anything is sent, so bad
input is refused as ``InvalidArgument`` naming its field (DESIGN §8), the
same way by the threaded and the asyncio worker. The ranges mirror the
coordinator's (``coordinator/validation.py``, which the worker may not
import): a value out of range is refused naming its field before protobuf
raises a bare ``ValueError`` on a uint32/uint64 field.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable
from typing import Literal

from dtr.errors import InvalidArgument
from dtr.keys import validate_name
from dtr.proto import coordinator_pb2 as pb

#: A barrier call is one long poll of at most this long (the server holds
#: polls for at most 10 s and answers WAITING); the worker then polls again.
BARRIER_POLL_S = 10.0
#: How much longer than a poll the worker waits for its answer, so a slow
#: answer arrives as the server's verdict (TIMEOUT) rather than as a deadline.
BARRIER_GRACE_S = 2.0
#: ``barrier(on_change=...)``: arrive again under the new generation, or raise.
BarrierOnChange = Literal["rearrive", "raise"]
#: A membership-changed answer that taught no newer generation (yet) is
#: followed by a pause before arriving again, doubling from the first bound
#: to the second, so such an answer never becomes a hot loop.
REARRIVE_PAUSE_S = (0.05, 1.0)
DEREGISTER_REASON = {
    None: pb.DEREGISTER_REASON_SHUTDOWN,
    "preempted": pb.DEREGISTER_REASON_PREEMPTED,
    "error": pb.DEREGISTER_REASON_ERROR,
}

#: A worker's capacity weight, at most (the coordinator refuses more).
MAX_CAPACITY = 1e6
_MAX_NUM_SHARDS = 10_000_000
_MAX_VNODES = 10_000
_MIN_LOAD_FACTOR, _MAX_LOAD_FACTOR = 1.0, 100.0
_EPOCH_LIMIT = 2**63


def default_worker_id() -> str:
    """``$DTR_WORKER_ID``, else ``<host>-rank<RANK>`` (stable across restarts), else host-pid."""
    explicit = os.environ.get("DTR_WORKER_ID")
    if explicit:
        return explicit
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:64] or "worker"
    rank = os.environ.get("RANK")
    return f"{host}-rank{rank}" if rank and rank.isdigit() else f"{host}-{os.getpid()}"


def positive(name: str, value: object, at_most: float = math.inf) -> float:
    """A finite number in (0, ``at_most``], as float; ``InvalidArgument`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number; got {value!r}")
    if not (math.isfinite(value) and 0 < value <= at_most):
        bound = "" if at_most == math.inf else f" and <= {at_most:g}"
        raise InvalidArgument(f"{name} must be finite and > 0{bound}; got {value!r}")
    return float(value)


def whole(name: str, value: object, low: int, high: int) -> int:
    """An int in [low, high] (bools refused): what a protobuf integer field will hold."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{name} must be an integer in [{low}, {high}]; got {value!r}")
    return value


def epoch_arg(epoch: object) -> int:
    """An epoch the coordinator accepts: it must fit a signed 64-bit integer."""
    return whole("epoch", epoch, 0, _EPOCH_LIMIT - 1)


def progress_args(step: object, samples_per_s: object) -> None:
    """``report_progress``'s arguments: a step a beat can carry (uint64), a finite
    throughput >= 0 (or None). Checked when reported: a value the wire cannot carry
    would otherwise fail the next beat, far from the call that caused it."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**64:
        raise InvalidArgument(f"step must be an integer in [0, 2**64); got {step!r}")
    if samples_per_s is None:
        return
    if isinstance(samples_per_s, bool) or not isinstance(samples_per_s, int | float):
        raise InvalidArgument(f"samples_per_s must be a number; got {samples_per_s!r}")
    if not (math.isfinite(samples_per_s) and samples_per_s >= 0):
        raise InvalidArgument(f"samples_per_s must be finite and >= 0; got {samples_per_s}")


def dataset_request(
    name: str, num_shards: int, *, vnodes: int | None = None, load_factor: float | None = None
) -> Callable[[], pb.RegisterDatasetRequest]:
    """A validated ``RegisterDataset`` request's builder (``InvalidArgument`` naming the field)."""
    validate_name("dataset", name)
    whole("num_shards", num_shards, 1, _MAX_NUM_SHARDS)
    if vnodes is not None:
        whole("vnodes", vnodes, 1, _MAX_VNODES)
    if load_factor is not None and not (
        positive("load_factor", load_factor, _MAX_LOAD_FACTOR) >= _MIN_LOAD_FACTOR
    ):  # positive refuses what is not a number; the floor is the coordinator's
        raise InvalidArgument(
            f"load_factor must be in [{_MIN_LOAD_FACTOR:g}, {_MAX_LOAD_FACTOR:g}]; "
            f"got {load_factor!r}"
        )
    return lambda: pb.RegisterDatasetRequest(
        name=name, num_shards=num_shards, vnodes=vnodes, load_factor=load_factor
    )
