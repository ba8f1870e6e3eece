"""Planted bugs for the chaos harness to find (issue 16, mutation testing).

A harness that reports 0 violations proves something only if it reports
violations when the bugs it is meant to catch are present. Each mutant below
re-plants one break fixed in issue 15 ("Where the parts meet",
docs/failure-semantics.md) as a small branch at the one place its fix lives,
marked ``# MUTANT <name>``. The chaos harness runs a scenario with one
mutant active (``run_scenario(..., mutant=...)``, ``dtr chaos run --mutant``)
and the named checker must fail.

The switch is one environment variable, ``DTR_UNSAFE_MUTANT``, read once per
process. Only the harness sets it, and only in the environment of the
processes it starts (its child environments drop every other ``DTR_*``
variable), like the hidden ``--unsafe-disable-fencing`` flag. An unknown
name refuses to start (``InvalidArgument``); an active mutant says so at
WARNING, once per process. When the variable is unset every branch is
dead code: ``active`` is False.
"""

from __future__ import annotations

import functools
import logging
import os

from dtr.errors import InvalidArgument

_log = logging.getLogger(__name__)

#: The environment variable the harness sets in every process of a run.
ENV = "DTR_UNSAFE_MUTANT"

#: Leader writes without the fence compare, and a replica that never steps down.
UNFENCED_WRITES = "unfenced-writes"
#: Arrivals counted by worker id, whatever the incarnation; a restart under a
#: live id is no membership change.
INCARNATION_BLIND_BARRIERS = "incarnation-blind-barriers"
#: A worker's part of a step always has the same object name, so a re-save
#: overwrites (or its refusal deletes) the committed object.
PARTS_OVERWRITTEN = "parts-overwritten"
#: Every dead member declared in one transaction, never checked against etcd's limits.
UNBOUNDED_MARK_DEAD = "unbounded-mark-dead"
#: A worker replays queued commits of another job life, stamped as this life's.
REPLAY_OTHER_LIFE = "replay-other-life"
#: Lease keep-alives time out after 0.2 s (the pre-fix ``--etcd-timeout-s``).
SHORT_KEEPALIVE = "short-keepalive"
#: ``latest`` (and the complete record) written once all live members but one committed.
LATEST_WITHOUT_LAST_PART = "latest-without-last-part"
#: A leader write is cancelled with the call that asked for it.
CANCELLED_WRITE = "cancelled-write"

NAMES = (
    UNFENCED_WRITES,
    INCARNATION_BLIND_BARRIERS,
    PARTS_OVERWRITTEN,
    UNBOUNDED_MARK_DEAD,
    REPLAY_OTHER_LIFE,
    SHORT_KEEPALIVE,
    LATEST_WITHOUT_LAST_PART,
    CANCELLED_WRITE,
)

#: The keep-alive timeout of ``short-keepalive`` (seconds).
SHORT_KEEPALIVE_TIMEOUT_S = 0.2


def parse(value: str | None) -> str | None:
    """The mutant ``value`` names (None for unset or empty); ``InvalidArgument`` if unknown."""
    name = (value or "").strip()
    if not name:
        return None
    if name not in NAMES:
        raise InvalidArgument(f"{ENV}: unknown mutant {name!r}; known mutants: {', '.join(NAMES)}")
    return name


@functools.cache
def selected() -> str | None:
    """The mutant this process runs with, read from the environment once.

    Raises ``InvalidArgument`` for an unknown name, so a process started with
    a misspelt mutant refuses to start rather than run unmutated and let a
    harness count a bug it never planted as caught.
    """
    name = parse(os.environ.get(ENV))
    if name is not None:
        _log.warning(
            "UNSAFE: mutant %r is active (%s); this process carries a planted bug (test only)",
            name,
            ENV,
        )
    return name


def active(name: str) -> bool:
    """Whether the planted bug ``name`` is active in this process."""
    if name not in NAMES:
        raise InvalidArgument(f"unknown mutant {name!r}; known mutants: {', '.join(NAMES)}")
    return selected() == name
