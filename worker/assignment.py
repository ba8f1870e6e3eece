"""What one worker owns of a dataset for an epoch, as the coordinator said it.

``ShardAssignment`` is the value ``Worker.shard_assignment`` returns and the
sampler plans an epoch from. It carries, besides the worker's own shard ids,
the most and fewest shards any member holds at that generation: the sampler
needs them to give every worker the same number of samples per epoch
(unequal batch counts hang DDP's all-reduce) without knowing anyone else's
shards. ``stale`` says the value came from the worker's cache because no
coordinator answered (DESIGN §1, partition tolerance).

No gRPC or torch here: the sampler and its tests use this type alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dtr.errors import InvalidArgument


@dataclass(frozen=True)
class ShardAssignment:
    """One worker's shards of ``dataset`` at membership ``generation``."""

    dataset: str
    epoch: int
    shard_ids: tuple[int, ...]
    generation: int
    num_shards: int
    num_members: int
    #: The most / fewest shards any live member holds at ``generation``.
    max_member_shards: int
    min_member_shards: int
    #: True when no coordinator answered and this is the last assignment seen.
    stale: bool = False

    def __post_init__(self) -> None:
        if any(not 0 <= s < self.num_shards for s in self.shard_ids):
            raise InvalidArgument(
                f"shard_ids must lie in [0, {self.num_shards}); got {self.shard_ids!r}"
            )
        if not self.min_member_shards <= len(self.shard_ids) <= self.max_member_shards:
            raise InvalidArgument(
                f"this worker holds {len(self.shard_ids)} shards, outside the members' range "
                f"[{self.min_member_shards}, {self.max_member_shards}]"
            )

    @classmethod
    def of_response(cls, dataset: str, epoch: int, response: Any) -> ShardAssignment:
        """The assignment a ``GetShardsResponse`` carries (the threaded and asyncio workers)."""
        return cls(
            dataset=dataset,
            epoch=epoch,
            shard_ids=tuple(response.shard_ids),
            generation=response.generation,
            num_shards=response.num_shards,
            num_members=response.num_members,
            max_member_shards=response.max_member_shards,
            min_member_shards=response.min_member_shards,
        )

    def as_stale(self, epoch: int) -> ShardAssignment:
        """This assignment served again for ``epoch`` while partitioned.

        Assignment does not depend on the epoch (the ring hashes dataset and
        shard only), so the last one seen is the right one for any epoch of the
        same generation, and the best guess for a newer one.
        """
        return replace(self, epoch=epoch, stale=True)
