"""Which samples this worker reads in an epoch: the torch side of shard assignment.

The coordinator tells each worker which shards of a dataset it owns at the
current membership generation (``ShardAssignment``). This module turns that
into what a training loop consumes:

- :func:`plan_epoch`, a pure function from an assignment to this worker's
  sample indices for one epoch. Every worker of a generation gets a list of
  the same length (unequal batch counts hang DDP's collectives), computed from
  the assignment alone: nobody needs anyone else's shard list.
- :class:`ShardSampler`, a ``torch.utils.data.Sampler`` over that plan, for
  map-style datasets. It asks for the assignment once per epoch, so a
  membership change takes effect at the next epoch boundary, never mid-epoch.
- :class:`ShardIterableDataset`, for streaming whole shards through
  ``load_shard``; it splits this worker's shards across DataLoader workers.

Order is seeded from ``(seed, epoch)`` only (torch's generator, as
``DistributedSampler`` does), so every process and every rerun agrees; never
Python's salted ``hash()``. What must not live here: gRPC or the worker
client. The assignment comes through :class:`AssignmentSource`, and that
source is only ever called from the process that built the sampler, never
from a DataLoader worker process (the real one holds gRPC channels, which do
not survive a fork).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import torch
from torch.utils.data import IterableDataset, Sampler, get_worker_info

from dtr.errors import InvalidArgument
from dtr.keys import validate_name
from dtr.worker.assignment import ShardAssignment

__all__ = ["AssignmentSource", "ShardIterableDataset", "ShardSampler", "plan_epoch"]

log = logging.getLogger(__name__)

T_co = TypeVar("T_co", covariant=True)

_SEED_MODULUS = 2**64  # torch.Generator.manual_seed takes an unsigned 64-bit seed


class AssignmentSource(Protocol):
    """Where the sampler gets shard assignments: ``dtr.worker.Worker`` in production."""

    def shard_assignment(self, dataset: str, epoch: int) -> ShardAssignment:
        """This worker's shards of ``dataset`` for ``epoch``."""
        ...


# --- the plan: a pure function of the assignment ------------------------------------


def plan_epoch(
    assignment: ShardAssignment,
    *,
    shard_size: int,
    num_samples: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> list[int]:
    """The sample indices this worker yields in ``epoch``, the same count on every worker.

    Shard ``s`` holds samples ``[s * shard_size, min((s + 1) * shard_size,
    num_samples))``; only the last shard may be short. The worker's own
    samples are shuffled together with a generator seeded from ``(seed,
    epoch)``.

    Without ``drop_last`` every worker yields ``max_member_shards *
    shard_size`` indices, repeating its own (cyclically, in shuffled order)
    to get there; a worker that owns nothing repeats a seeded permutation of
    the whole dataset. Across the workers, every sample is yielded at least once.

    With ``drop_last`` every worker yields ``min_member_shards * shard_size``
    less the last shard's shortfall, dropping its surplus. That is
    conservative: the shortfall is subtracted even when no worker with the
    fewest shards holds the short shard, because no worker can tell. No
    sample is yielded twice; some are not yielded this epoch.

    Raises:
        InvalidArgument: an argument, or ``num_samples`` against the
            assignment's ``num_shards``, can never work.
    """
    size = _validated_int(shard_size, "shard_size", minimum=1)
    total = _checked_num_samples(num_samples, assignment.num_shards, size)
    generator = _generator(seed, epoch)
    own = _shard_indices(assignment.shard_ids, size, total)
    if shuffle:
        own = own[torch.randperm(len(own), generator=generator)]
    if drop_last:
        shortfall = assignment.num_shards * size - total
        return own[: max(0, assignment.min_member_shards * size - shortfall)].tolist()
    target = assignment.max_member_shards * size
    if len(own) == 0:  # every worker that owns nothing pads from the same order
        own = (
            torch.randperm(total, generator=_generator(seed, epoch))
            if shuffle
            else torch.arange(total)
        )
    return _repeated(own, target).tolist()


def _repeated(pool: torch.Tensor, length: int) -> torch.Tensor:
    """``pool`` repeated cyclically, or cut, to ``length`` entries."""
    if length == 0:
        return pool[:0]
    if len(pool) == 0:
        raise InvalidArgument(f"assignment: {length} samples to yield but the dataset has none")
    return pool[torch.arange(length) % len(pool)]


def _shard_indices(shard_ids: Iterable[int], shard_size: int, num_samples: int) -> torch.Tensor:
    """The sample indices of ``shard_ids``, ascending, clipped at ``num_samples``."""
    ids = torch.tensor(sorted(shard_ids), dtype=torch.int64)
    grid = (ids[:, None] * shard_size + torch.arange(shard_size)[None, :]).flatten()
    return grid[grid < num_samples]


def _checked_num_samples(num_samples: int | None, num_shards: int, shard_size: int) -> int:
    """``num_samples`` (default: all shards full) if only the last shard is short."""
    full = num_shards * shard_size
    if num_samples is None:
        return full
    total = _validated_int(num_samples, "num_samples", minimum=0)
    if not (num_shards - 1) * shard_size < total <= full:
        raise InvalidArgument(
            f"num_samples must lie in ({(num_shards - 1) * shard_size}, {full}] for "
            f"{num_shards} shards of {shard_size} (only the last shard may be short); got {total}"
        )
    return total


def _generator(seed: int, epoch: int) -> torch.Generator:
    """A generator every process seeds alike from ``(seed, epoch)``, as DistributedSampler does."""
    value = _validated_int(seed, "seed", minimum=None) + _validated_int(epoch, "epoch", minimum=0)
    return torch.Generator().manual_seed(value % _SEED_MODULUS)


def _shard_order(shard_ids: Iterable[int], seed: int, epoch: int, shuffle: bool) -> tuple[int, ...]:
    """``shard_ids`` ascending, or in the seeded order of ``(seed, epoch)``."""
    ordered = sorted(shard_ids)
    if not shuffle:
        return tuple(ordered)
    permutation = torch.randperm(len(ordered), generator=_generator(seed, epoch)).tolist()
    return tuple(ordered[i] for i in permutation)


# --- validation -------------------------------------------------------------------------


def _validated_int(value: object, name: str, *, minimum: int | None) -> int:
    """Any integer (numpy's too) but not bool, which is almost always a bug."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"{name} must be an int, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise InvalidArgument(f"{name} must be >= {minimum}, got {number}")
    return number


def _validated_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be a bool, got {value!r}")
    return value


def _fetch(
    source: AssignmentSource, dataset: str, epoch: int, previous: ShardAssignment | None
) -> ShardAssignment:
    """Ask ``source`` once, logging a generation change and a stale answer."""
    assignment = source.shard_assignment(dataset, epoch)
    if previous is not None and previous.generation != assignment.generation:
        log.info(
            "dataset %s epoch %d: membership generation %d -> %d; this worker now holds "
            "%d of %d shards",
            dataset,
            epoch,
            previous.generation,
            assignment.generation,
            len(assignment.shard_ids),
            assignment.num_shards,
        )
    if assignment.stale:
        log.warning(
            "dataset %s epoch %d: no coordinator answered; reading the cached shards of "
            "generation %d, which other workers may now also read",
            dataset,
            epoch,
            assignment.generation,
        )
    return assignment


# --- map-style: a torch Sampler ------------------------------------------------------------


class ShardSampler(Sampler[int]):
    """This worker's sample indices of a sharded map-style dataset, one epoch at a time.

    Use it as ``DistributedSampler`` is used: pass it to ``DataLoader(sampler=…)``
    and call :meth:`set_epoch` before each epoch. The assignment is fetched on
    the first ``len()`` or ``iter()`` of an epoch and kept for that epoch, so
    both agree and a membership change lands only at an epoch boundary.
    Samplers run in the DataLoader's main process, so the source is never
    called from a loader worker.
    """

    def __init__(
        self,
        source: AssignmentSource,
        dataset: str,
        *,
        shard_size: int,
        num_samples: int | None = None,
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self._source = source
        self._dataset = validate_name("dataset", dataset)
        self._shard_size = _validated_int(shard_size, "shard_size", minimum=1)
        self._num_samples = (
            None if num_samples is None else _validated_int(num_samples, "num_samples", minimum=0)
        )
        self._epoch = _validated_int(epoch, "epoch", minimum=0)
        self._seed = _validated_int(seed, "seed", minimum=None)
        self._shuffle = _validated_bool(shuffle, "shuffle")
        self._drop_last = _validated_bool(drop_last, "drop_last")
        self._plan: tuple[int, list[int]] | None = None
        self._assignment: ShardAssignment | None = None

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def assignment(self) -> ShardAssignment | None:
        """The assignment the latest plan came from (log its ``generation`` and ``stale``)."""
        return self._assignment

    def set_epoch(self, epoch: int) -> None:
        """Plan ``epoch`` next; its assignment is fetched on the next ``len()`` or ``iter()``."""
        self._epoch = _validated_int(epoch, "epoch", minimum=0)

    def __iter__(self) -> Iterator[int]:
        return iter(self._current_plan())

    def __len__(self) -> int:
        return len(self._current_plan())

    def _current_plan(self) -> list[int]:
        if self._plan is not None and self._plan[0] == self._epoch:
            return self._plan[1]
        assignment = _fetch(self._source, self._dataset, self._epoch, self._assignment)
        indices = plan_epoch(
            assignment,
            shard_size=self._shard_size,
            num_samples=self._num_samples,
            seed=self._seed,
            epoch=self._epoch,
            shuffle=self._shuffle,
            drop_last=self._drop_last,
        )
        self._assignment = assignment
        self._plan = (self._epoch, indices)
        return indices


# --- streaming: whole shards through load_shard ------------------------------------------


class ShardIterableDataset(IterableDataset[T_co]):
    """Streams the samples of this worker's shards, ``load_shard(shard_id)`` after another.

    The shard list is resolved in the process that calls :meth:`set_epoch`
    (or, without it, on the first iteration of epoch ``epoch`` in that same
    process); DataLoader worker k then streams shards ``k::num_workers`` of
    it. A loader worker never calls the source: with ``num_workers > 0`` call
    ``set_epoch`` before iterating, or iteration fails saying so. Pickling
    (the ``spawn`` start method) drops the source and keeps plain data, so
    ``load_shard`` must be picklable there (a module-level function).

    Shard order is seeded from ``(seed, epoch)``; order within a shard is
    ``load_shard``'s. Workers hold different numbers of shards, and shards
    need not hold equal numbers of samples, so equal per-worker step counts
    are the caller's job here (stop every worker after the same number of
    steps); :class:`ShardSampler` gives them for map-style datasets.
    """

    def __init__(
        self,
        source: AssignmentSource,
        dataset: str,
        *,
        load_shard: Callable[[int], Iterable[T_co]],
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self._source: AssignmentSource | None = source
        self._dataset = validate_name("dataset", dataset)
        if not callable(load_shard):
            raise InvalidArgument(f"load_shard must be callable, got {load_shard!r}")
        self._load_shard = load_shard
        self._epoch = _validated_int(epoch, "epoch", minimum=0)
        self._seed = _validated_int(seed, "seed", minimum=None)
        self._shuffle = _validated_bool(shuffle, "shuffle")
        self._shards: tuple[int, tuple[int, ...]] | None = None
        self._assignment: ShardAssignment | None = None

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def assignment(self) -> ShardAssignment | None:
        """The assignment the current shard list came from, or None before one is fetched."""
        return self._assignment

    def set_epoch(self, epoch: int) -> None:
        """Stream ``epoch`` next, fetching its assignment now, in the calling process."""
        self._epoch = _validated_int(epoch, "epoch", minimum=0)
        self._resolve()

    def __iter__(self) -> Iterator[T_co]:
        shards = self._resolve()
        info = get_worker_info()
        if info is not None:
            shards = shards[info.id :: info.num_workers]
        for shard_id in shards:
            yield from self._load_shard(shard_id)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_source"] = None
        return state

    def _resolve(self) -> tuple[int, ...]:
        """This worker's shards for the current epoch, in streaming order; fetched once."""
        if self._shards is not None and self._shards[0] == self._epoch:
            return self._shards[1]
        if self._source is None or get_worker_info() is not None:
            raise InvalidArgument(
                f"epoch: the shards of dataset {self._dataset!r} for epoch {self._epoch} were "
                "not fetched, and this copy has no assignment source (it runs in a DataLoader "
                "worker, or was unpickled); call set_epoch(epoch) in the main process before "
                "iterating through DataLoader workers"
            )
        assignment = _fetch(self._source, self._dataset, self._epoch, self._assignment)
        order = _shard_order(assignment.shard_ids, self._seed, self._epoch, self._shuffle)
        self._assignment = assignment
        self._shards = (self._epoch, order)
        return order
