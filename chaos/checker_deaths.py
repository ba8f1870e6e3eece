"""``record-deaths``: every worker the nemesis killed for good is declared dead in etcd's record.

A ``rack-failure`` SIGKILLs whole simulated-worker processes and never
restarts them. Their members stop beating, so the leader must declare each
one dead (``alive: false``) once its heartbeat timeout passes, in bounded
transactions ("A rack fails at once", docs/failure-semantics.md). The
worker-side checkers cannot see a death that never lands: the survivors
train on whether or not a barrier ever releases. This check reads the
outcome from etcd's record, after the run settled: a killed worker that was
a live member of the last job life must not still be one when the record
ends.

It is what sees the ``unbounded-mark-dead`` mutant (``dtr.mutants``): etcd
refuses a transaction of the whole rack ("too many operations in txn
request") on every leader cycle, so none of them is ever declared dead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from dtr.keys import JobKeys

from .checker_base import MAX_VIOLATIONS, CheckResult, Violation
from .etcd_record import RecordEvent
from .sim_pool import SimWorkerPool

NAME = "record-deaths"


def killed_workers(sims: SimWorkerPool | None) -> list[str]:
    """The simulated worker ids whose process the nemesis killed for good (none: no sims)."""
    if sims is None:
        return []
    return [
        worker
        for index, name in enumerate(sims.names)
        if sims.outcomes[name].killed
        for worker in sims.worker_ids_of(index)
    ]


def check_deaths(
    events: Iterable[RecordEvent], keys: JobKeys, killed: Sequence[str]
) -> CheckResult:
    """Judge each killed worker that was a member of the last life: dead by the record's end."""
    if not killed:
        return CheckResult(NAME, True, 0, ())
    alive = _last_life_members(events, keys)
    judged = [w for w in killed if w in alive]
    still = [w for w in judged if alive[w]]
    violations = []
    if still:
        shown = ", ".join(sorted(still)[:10])
        more = f" and {len(still) - 10} more" if len(still) > 10 else ""
        violations.append(
            Violation(
                f"{len(still)} of {len(judged)} worker(s) killed for good were still live "
                f"members when etcd's record ended: {shown}{more}"
            )
        )
    return CheckResult(NAME, not still, len(judged), tuple(violations[:MAX_VIOLATIONS]))


def _last_life_members(events: Iterable[RecordEvent], keys: JobKeys) -> dict[str, bool]:
    """worker id → alive, as of the record's last revision; a wiped generation starts over."""
    members: dict[str, bool] = {}
    for event in events:
        if event.key == keys.generation and event.kind == "delete":
            members = {}  # the job's prefix was wiped: a new life starts
        if not event.key.startswith(keys.members_prefix):
            continue
        worker = event.key[len(keys.members_prefix) :]
        if event.kind != "put":
            members.pop(worker, None)
        else:
            members[worker] = bool(json.loads(event.value).get("alive", True))
    return members
