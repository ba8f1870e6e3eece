"""The invariant checkers (DESIGN §5): pure functions of a history and the run's final state.

Each checker takes the events (``dtr.chaos.history``, sorted by time) and,
where it needs them, the end-of-run facts (``FinalState``), and returns a
``CheckResult``. They never do I/O, so a failing run is re-checked, and a
checker tested, from the history file alone. Unknown is not failed: an
``info`` (or an invoke never completed) is neither a success nor a failure,
and what the history cannot tell is counted as ``unchecked``, never flagged.

What each ``f`` records
=======================

Pairing and order. Every operation records an ``invoke`` and then one
``ok`` / ``fail`` / ``info`` with the same ``op_id`` from the same process
(``History.op_id``). Checkers order two operations only in real time: A
precedes B when A's completion time is before B's invoke time; overlapping
operations may take effect in either order. A completion without its invoke
is taken as concurrent with everything before it. Workers record as
``process="worker:<id>"`` (the id the coordinator knows, kept across
restarts); the harness as ``harness``. ``term`` / ``generation`` are the
answer's ``ResponseHeader`` fields. Extra value keys are allowed and ignored.

``write`` (workers and clients; invariant 1)
    One operation per mutating RPC (register, register_dataset, barrier
    arrival, commit, deregister, ...), around the RPC. ``ok`` only when the
    call succeeded: ``term`` = ``ResponseHeader.term``, ``value =
    {"replica": ResponseHeader.replica_id}``. Invoke value: free (e.g.
    ``{"rpc": "CommitCheckpoint"}``). ``fail`` / ``info`` carry nothing needed.
``barrier`` (workers; invariant 2)
    invoke ``{"name", "generation"}`` (the generation the worker believes);
    ok ``{"name", "generation": BarrierResponse.barrier_generation}``;
    fail ``{"name", "error": "MembershipChanged" | "BarrierMissed" |
    "BarrierTimeout" | "CoordinatorUnavailable"}``; info ``{"name"}``.
``membership`` (harness, from status polls; invariants 2 and 3)
    A single ``ok`` per poll (an invoke is optional): ``value =
    {"generation": G, "members": [ids of the live workers of G]}``.
``get_shards`` (workers; invariant 3)
    ok ``{"dataset", "epoch", "shard_ids": [...], "num_shards", "stale":
    bool}`` with ``generation`` = the assignment's generation
    (``GetShardsResponse.generation``, also on a stale answer).
``save`` (workers; invariant 5)
    invoke ``{"step"}``; ok ``{"step"}`` once the part is durable and its
    commit record is in the worker's queue (``save_async``'s future done).
``commit`` (workers; invariants 4 and 5)
    One operation per CommitCheckpoint attempt: invoke ``{"step"}``; ok
    when the record leaves the queue: ``{"step", "outcome": "accepted" |
    "duplicate" | "superseded" | "rejected", "latest_complete_step": int |
    None}`` (the ``CommitAck``); info when the attempt's outcome is unknown
    (the record stays queued and is replayed as a new attempt).
``claim`` (harness, a probe of one replica per poll; invariant 1)
    invoke ``{"replica"}``; ok ``{"replica", "is_leader": bool, "term": int |
    None}`` (the answer's ``ResponseHeader``); fail when it did not answer.
``status`` (harness; invariant 4)
    ok ``{"latest_step": int | None}``: the job's latest complete step from
    ClusterStatus / GetLatestCheckpoint.
``load`` (workers, first thing in every process, restarts included; 6)
    invoke ``{}``; ok ``{"step": int | None}``: what ``load_latest`` returned
    (None: no checkpoint, the default was used).
``train`` (workers; liveness)
    ok ``{"step"}`` after each training step completes.

Nemesis events (``kill``, ``pause``, ``partition``, ...) are not read, but
for one: a ``restart`` of kind ``job-restart`` with ``"etcd": "wiped"`` cuts
the history into job lives (``checker_lives.py``), each judged on its own.
``register`` (workers) ok ``{"incarnation", "job_life"}``: ``lives`` checks
the cut against the ``job_life`` each registration was told.
"""

from __future__ import annotations

from collections.abc import Sequence

from .checker_barriers import check_barriers, check_membership
from .checker_base import CheckResult, FinalState, Violation
from .checker_checkpoints import check_checkpoints, check_commits, check_loads
from .checker_commit_lives import check_commit_lives
from .checker_leadership import check_claims, check_writes
from .checker_liveness import check_liveness
from .checker_lives import check_lives, per_life, split_lives
from .checker_shards import check_shards
from .history import Event

__all__ = [
    "DEFAULT_SETTLE_S",
    "CheckResult",
    "FinalState",
    "Violation",
    "check_all",
    "check_barriers",
    "check_checkpoints",
    "check_claims",
    "check_commits",
    "check_liveness",
    "check_lives",
    "check_loads",
    "check_membership",
    "check_shards",
    "check_writes",
]

#: How long the harness lets the healed cluster run before it captures ``FinalState``.
DEFAULT_SETTLE_S = 10.0


def check_all(
    events: Sequence[Event],
    final: FinalState,
    *,
    settle_s: float = DEFAULT_SETTLE_S,
    reported_commits: bool = True,
) -> list[CheckResult]:
    """Every checker, invariant order: 1 (writes, claims), membership, 2, 3, 4, 5, 6, liveness.

    Each judges every job life on its own (``checker_lives.py``); the final
    state is the last life's, so the earlier ones are judged without it, and
    liveness only in the last. ``lives`` checks where the history was cut.
    ``reported_commits`` False: the workers record no commits (the DDP job),
    so ``checkpoints`` verifies the complete steps' parts without looking
    for their commits in the history.
    """
    lives = split_lives(events)

    def ended(last: bool) -> FinalState | None:
        return final if last else None

    return [
        per_life(lives, lambda life, last: check_writes(life)),
        per_life(lives, lambda life, last: check_claims(life)),
        per_life(lives, lambda life, last: check_membership(life)),
        per_life(lives, lambda life, last: check_barriers(life)),
        per_life(lives, lambda life, last: check_shards(life)),
        per_life(
            lives,
            lambda life, last: check_checkpoints(life, ended(last), reported=reported_commits),
        ),
        per_life(lives, lambda life, last: check_commits(life, ended(last))),
        per_life(lives, lambda life, last: check_loads(life, ended(last))),
        check_liveness(lives[-1], final, settle_s=settle_s),
        check_lives(lives),
        check_commit_lives(events),
    ]
