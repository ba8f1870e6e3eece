"""Which torchrun rendezvous round this process is a rank of, and joining it as one.

dtr's rendezvous handler (``rendezvous.py``) puts the round it completed in
the agent's environment (``DTR_RDZV_ROUND``) before torchrun starts the
ranks, which inherit it next to torchrun's own ``TORCHELASTIC_RUN_ID``,
``RANK`` and ``WORLD_SIZE``. A ``Worker`` built in such a process registers
as that rank of that round: the leader holds the registration until every
rank of the round has asked, then adds them all in one transaction, one
membership generation per round (coordinator/rounds.py; docs/torchrun.md).

The consequence a script must know: ``Worker()`` returns once every rank of
the round has built its ``Worker``. A script that builds one on some ranks
only sets ``DTR_JOIN_ROUND=0`` (each rank then registers on its own, as
under any other rendezvous backend). Torch-free: ``Worker`` imports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dtr.errors import InvalidArgument, RoundIncomplete
from dtr.keys import validate_name
from dtr.proto import coordinator_pb2 as pb

#: Set by dtr's rendezvous handler in the agent: the round torchrun's ranks belong to,
#: and the life of the rendezvous (its state key's etcd create_revision).
ROUND_ENV = "DTR_RDZV_ROUND"
LIFE_ENV = "DTR_RDZV_LIFE"
#: ``0`` opts a job out of joining rounds (its ranks register one by one).
JOIN_ENV = "DTR_JOIN_ROUND"
#: How long ``Worker()`` waits for the other ranks of its round (``$DTR_ROUND_JOIN_TIMEOUT_S``).
DEFAULT_JOIN_TIMEOUT_S = 300.0
#: One registration attempt: the leader holds it about 4 s (rounds.ROUND_HOLD_S).
ATTEMPT_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class RoundSeat:
    """This process's place in a round: the rendezvous, the round, the world, the rank."""

    rdzv_id: str
    round: int
    world_size: int
    rank: int
    life: int = 0

    def message(self) -> pb.RendezvousRound:
        return pb.RendezvousRound(
            rdzv_id=self.rdzv_id,
            round=self.round,
            world_size=self.world_size,
            rank=self.rank,
            life=self.life,
        )


def _whole(environ: Mapping[str, str], name: str, low: int) -> int:
    raw = environ[name]
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        raise InvalidArgument(f"${name} must be a whole number >= {low}; got {raw!r}")
    return value


def round_from_env(environ: Mapping[str, str] | None = None) -> RoundSeat | None:
    """The seat torchrun and dtr's handler describe, or None (not a rank of a dtr round)."""
    env = os.environ if environ is None else environ
    names = (ROUND_ENV, "TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE")
    if env.get(JOIN_ENV, "1") == "0" or not all(env.get(name) for name in names):
        return None
    world_size = _whole(env, "WORLD_SIZE", 1)
    rank = _whole(env, "RANK", 0)
    if rank >= world_size:
        raise InvalidArgument(f"$RANK must be below $WORLD_SIZE ({world_size}); got {rank}")
    return RoundSeat(
        rdzv_id=validate_name("TORCHELASTIC_RUN_ID", env["TORCHELASTIC_RUN_ID"]),
        round=_whole(env, ROUND_ENV, 0),
        world_size=world_size,
        rank=rank,
        life=_whole(env, LIFE_ENV, 0) if env.get(LIFE_ENV) else 0,
    )


def join_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    raw = env.get("DTR_ROUND_JOIN_TIMEOUT_S")
    if raw is None:
        return DEFAULT_JOIN_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidArgument(f"$DTR_ROUND_JOIN_TIMEOUT_S must be a number > 0; got {raw!r}")
    return value


def register_in_round(
    register: Callable[[], pb.RegisterWorkerResponse],
    seat: RoundSeat,
    worker_id: str,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> pb.RegisterWorkerResponse:
    """Ask until the round is whole; ``RoundIncomplete`` after ``timeout_s``.

    Each ask is one long poll the leader holds, so this loop does not spin.
    """
    deadline = clock() + timeout_s
    while True:
        response = register()
        if not response.round_pending:
            return response
        if clock() >= deadline:
            raise RoundIncomplete(
                f"worker {worker_id}: round {seat.round} of rendezvous {seat.rdzv_id!r} did not "
                f"form within {timeout_s:g} s ({seat.world_size} ranks expected); every rank "
                f"must build a Worker, or set {JOIN_ENV}=0 to register ranks one by one"
            )
