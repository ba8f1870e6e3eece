"""Checkpoint bookkeeping: commit records, complete steps, the ``latest`` pointer, retention.

Checkpoint bytes never come here (DESIGN §1): a worker writes its part to
storage, then commits a description of it (uri, size, checksum). A step is
**complete** when every live member of the generation the commits name has
committed; only then are ``complete/<step>`` and ``latest`` written, in the
same fenced transaction as the last commit, so a complete step always has
every part recorded (DESIGN §5 invariant 4). ``latest`` only moves forward.

A commit is SUPERSEDED — recorded nowhere, and the worker drops it from its
queue — when its generation is not the current one (membership changed: the
step can no longer complete under it), when it names an incarnation that is
no longer the member's (an earlier process of the id: a step completes only
with parts of its live member incarnations, DESIGN §5 invariant 4), or when a
step at or after it is already complete. The same key (step, worker,
generation) with the same part again is a DUPLICATE; with another part it is
refused (``AlreadyExists``), unless it is an earlier incarnation's.

Retention keeps the newest ``keep`` complete steps; older steps, and steps
below ``latest`` that never completed (abandoned), lose their records. The
leader deletes them, fenced. The bytes on storage are their writers' to
delete (the coordinator has no storage access by design).

The leader keeps what etcd holds about recent steps in a per-term cache
(``CheckpointBook``), so a commit costs no read of every part of its step, and
writes the commits that arrive together in one transaction
(``commit_batches``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from dtr import mutants
from dtr.errors import AlreadyExists, WrongJobLife
from dtr.keys import JobKeys
from dtr.store import Compare, Delete, EtcdStore, Get, KeyValue, Op, Put

from .listing import iter_prefix
from .membership import WritePlan
from .state import ClusterView
from .validation import CheckpointCommit

#: Complete steps kept by default (older ones lose their records).
DEFAULT_KEEP_COMPLETE = 3
#: Bound on the deletions one retention transaction carries (etcd allows 128 ops).
MAX_RETENTION_OPS = 100


@dataclass(frozen=True)
class PartRecord:
    """One worker's committed part of a step, as stored under ``steps/<step>/<worker>``."""

    worker_id: str
    generation: int
    uri: str
    size_bytes: int
    algorithm: str
    hex_digest: str
    format_version: int
    manifest_uri: str | None
    replicated: bool

    @classmethod
    def of(cls, commit: CheckpointCommit) -> PartRecord:
        part = commit.part
        return cls(
            worker_id=commit.worker_id,
            generation=commit.generation,
            uri=part.uri,
            size_bytes=part.size_bytes,
            algorithm=part.algorithm,
            hex_digest=part.hex_digest,
            format_version=part.format_version,
            manifest_uri=part.manifest_uri,
            replicated=part.replicated,
        )

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> PartRecord:
        return cls(**json.loads(value))


@dataclass(frozen=True)
class CompleteRecord:
    """A complete step: the generation it completed under and how many members it had.

    The members themselves are the step's part records of that generation.
    Listing them here too (as records before this one did) made the record
    grow with the job, written twice per completion (``complete/<step>`` and
    ``latest``): at 10,000 workers with long ids, more than etcd's 1.5 MiB.
    ``stored`` keeps the exact bytes read, for compare-and-set guards.
    """

    step: int
    generation: int
    num_workers: int
    stored: bytes | None = field(default=None, compare=False, repr=False)

    def encode(self) -> bytes:
        return json.dumps(
            {"step": self.step, "generation": self.generation, "num_workers": self.num_workers}
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> CompleteRecord:
        raw = json.loads(value)
        count = raw.get("num_workers")
        if count is None:  # written before num_workers: a list of ids
            count = len(raw.get("workers", ()))
        return cls(int(raw["step"]), int(raw["generation"]), int(count), stored=bytes(value))


@dataclass(frozen=True)
class StepState:
    """What etcd holds about one step: its parts (worker → record) and whether it completed."""

    step: int
    parts: Mapping[str, PartRecord] = field(default_factory=dict)
    complete: CompleteRecord | None = None


@dataclass(frozen=True)
class CommitDecision:
    """The answer to one commit, and the write that makes it true (None: nothing to write)."""

    status: str  # "accepted", "duplicate" or "superseded"
    step_complete: bool
    latest: CompleteRecord | None
    plan: WritePlan | None = None
    state: StepState | None = None  # the step as it will be once the plan applies


def step_reads(keys: JobKeys, step: int) -> list[Get]:
    return [
        Get(keys.checkpoint_step_prefix(step), prefix=True),
        Get(keys.checkpoint_complete(step)),
    ]


def decode_step(
    step: int, parts: tuple[KeyValue, ...], complete: tuple[KeyValue, ...]
) -> StepState:
    records = (PartRecord.decode(kv.value) for kv in parts)
    return StepState(
        step=step,
        parts={r.worker_id: r for r in records},
        complete=CompleteRecord.decode(complete[0].value) if complete else None,
    )


def latest_guard(keys: JobKeys, latest: CompleteRecord | None) -> Compare:
    if latest is None:
        return Compare.absent(keys.latest_checkpoint)
    return Compare.value_is(keys.latest_checkpoint, latest.stored or latest.encode())


def plan_commit(
    keys: JobKeys,
    view: ClusterView,
    state: StepState,
    latest: CompleteRecord | None,
    commit: CheckpointCommit,
) -> CommitDecision:
    """Decide a commit against the view, the step's state and ``latest``; no I/O."""
    if commit.job_life and view.job_life and commit.job_life != view.job_life:
        raise WrongJobLife(
            f"job_life: the record was made for job life {commit.job_life!r}, this job is "
            f"life {view.job_life!r} (the job was recreated); the worker sets it aside"
        )
    record = PartRecord.of(commit)
    # An earlier process of this id (paused, then resumed) may know the new
    # generation from any answer; its part is not the live incarnation's.
    member = view.members.get(commit.worker_id)
    stale = member is not None and commit.incarnation not in (0, member.incarnation)
    existing = state.parts.get(commit.worker_id)
    if existing is not None and existing.generation == commit.generation:
        if existing != record:
            if stale:
                return CommitDecision("superseded", False, latest)
            raise AlreadyExists(
                f"part: step {commit.step} of worker {commit.worker_id!r} (generation "
                f"{commit.generation}) is already committed as {existing.uri!r} with checksum "
                f"{existing.hex_digest}; a step's part cannot change"
            )
        return CommitDecision("duplicate", state.complete is not None, latest)
    if (latest is not None and latest.step >= commit.step) or state.complete is not None:
        return CommitDecision("superseded", False, latest)
    members = view.live_members()
    if commit.generation != view.generation or commit.worker_id not in members or stale:
        return CommitDecision("superseded", False, latest)
    return _accept(keys, view, state, latest=latest, record=record, existing=existing)


def _accept(
    keys: JobKeys,
    view: ClusterView,
    state: StepState,
    *,
    latest: CompleteRecord | None,
    record: PartRecord,
    existing: PartRecord | None,
) -> CommitDecision:
    key = keys.checkpoint_commit(state.step, record.worker_id)
    compares: list[Compare] = [
        Compare.absent(key) if existing is None else Compare.value_is(key, existing.encode()),
        Compare.value_is(keys.generation, str(view.generation).encode()),
        latest_guard(keys, latest),
    ]
    ops: list[Op] = [Put(key, record.encode())]
    parts = {**state.parts, record.worker_id: record}
    current = {w for w, p in parts.items() if p.generation == view.generation}
    new_state = replace(state, parts=parts)
    if _completes(current, set(view.live_members())):
        done = CompleteRecord(state.step, view.generation, len(view.live_members()))
        ops += [Put(keys.checkpoint_complete(state.step), done.encode())]
        ops += [Put(keys.latest_checkpoint, done.encode())]
        compares.append(Compare.absent(keys.checkpoint_complete(state.step)))
        new_state, latest = replace(new_state, complete=done), done
    plan = WritePlan(tuple(compares), tuple(ops), view)
    return CommitDecision("accepted", new_state.complete is not None, latest, plan, new_state)


def _completes(committed: set[str], live: set[str]) -> bool:
    """Whether the step is complete once ``committed`` (this generation's parts) is."""
    if mutants.active(mutants.LATEST_WITHOUT_LAST_PART):  # MUTANT: all but one live member
        return len(live - committed) <= 1 and len(live) > 1
    return committed >= live


def plan_retention(
    keys: JobKeys, complete_steps: list[int], part_steps: list[int], keep: int
) -> list[Op]:
    """Deletions that keep the newest ``keep`` complete steps and drop what is older or abandoned.

    ``part_steps`` are the steps with any commit record. A step is dropped
    when it is older than the oldest kept complete step, or below the newest
    complete step without being complete itself (it can never complete).
    """
    kept = sorted(complete_steps)[-keep:] if keep > 0 else []
    if not kept:
        return []
    oldest_kept, newest = kept[0], kept[-1]
    doomed = {s for s in complete_steps if s < oldest_kept}
    doomed |= {s for s in part_steps if s < oldest_kept or (s < newest and s not in kept)}
    ops: list[Op] = []
    for step in sorted(doomed)[: MAX_RETENTION_OPS // 2]:
        ops.append(Delete(keys.checkpoint_step_prefix(step), prefix=True))
        if step in complete_steps:
            ops.append(Delete(keys.checkpoint_complete(step)))
    return ops


def retention_ops(store: EtcdStore, keys: JobKeys, keep: int) -> list[Op]:
    """Read which steps have records and plan the deletions retention calls for.

    The steps are listed one key each (``listing.iter_prefix`` jumps over the
    rest of a step's parts), so the reads stay small at any number of workers.
    """
    complete = [
        CompleteRecord.decode(kv.value).step
        for kv in iter_prefix(store, keys.checkpoint_complete_prefix)
    ]

    def rest_of_step(key: str) -> str:
        return keys.checkpoint_step_prefix(keys.step_of(key))

    listed = iter_prefix(store, keys.checkpoint_steps_prefix, skip_after=rest_of_step)
    parts = sorted({keys.step_of(kv.key) for kv in listed})
    return plan_retention(keys, complete, parts, keep)


def read_latest(
    store: EtcdStore, keys: JobKeys, before_step: int | None
) -> tuple[CompleteRecord, list[PartRecord]] | None:
    """The newest complete step (strictly below ``before_step``) and its parts, sorted by worker.

    Complete records are few (retention keeps K of them), so reading them all
    is cheap; only the chosen step's parts are read. Parts of other
    generations at that step (an abandoned attempt) are left out.
    """
    complete = [
        CompleteRecord.decode(kv.value)
        for kv in iter_prefix(store, keys.checkpoint_complete_prefix)
    ]
    eligible = [c for c in complete if before_step is None or c.step < before_step]
    if not eligible:
        return None
    chosen = max(eligible, key=lambda c: c.step)
    parts = [
        PartRecord.decode(kv.value)
        for kv in iter_prefix(store, keys.checkpoint_step_prefix(chosen.step))
    ]
    current = sorted(
        (p for p in parts if p.generation == chosen.generation), key=lambda p: p.worker_id
    )
    return chosen, current


@dataclass
class CheckpointBook:
    """The leader's per-term cache of ``latest`` and recently committed steps."""

    latest: CompleteRecord | None = None
    loaded: bool = False
    steps: dict[int, StepState] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget everything (a new term, or a write whose outcome is unknown)."""
        self.latest, self.loaded = None, False
        self.steps.clear()

    def on_applied(self, decision: CommitDecision) -> None:
        if decision.state is not None:
            self.steps[decision.state.step] = decision.state
        self.latest = decision.latest
        if len(self.steps) > 64:  # old steps are settled; keep the cache small
            for step in sorted(self.steps)[:-32]:
                del self.steps[step]
