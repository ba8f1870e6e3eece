"""Shard assignments per (generation, dataset), computed once and shared.

Every ``GetShards`` and ``ClusterStatus`` needs the whole ring's answer for a
membership generation; computing it is the coordinator's one CPU-heavy step
(about 30 ms for 1,000 members and 100,000 shards), so it runs on a thread
while heartbeats keep flowing, concurrent callers share one computation, and
the result is kept until the cache fills (generations only move forward, so
clearing it then loses nothing that is still asked for often).
"""

from __future__ import annotations

import asyncio

from dtr.ring import assign_shards

from .state import ClusterView, DatasetRecord

CACHE_SIZE = 64
_Key = tuple[int, str]


class ShardCache:
    """The ring's answers and their most/fewest counts, per (generation, dataset)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._assignments: dict[_Key, dict[str, list[int]]] = {}
        self._bounds: dict[_Key, tuple[int, int]] = {}
        self._tasks: dict[_Key, asyncio.Future[dict[str, list[int]]]] = {}

    async def assignment(self, view: ClusterView, dataset: DatasetRecord) -> dict[str, list[int]]:
        """Shards of every live member; a miss computes the ring on a thread, once."""
        key = (view.generation, dataset.name)
        cached = self._assignments.get(key)
        if cached is not None:
            return cached
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(_assign, view, dataset))
            self._tasks[key] = task
        try:
            result = await asyncio.shield(task)
        finally:
            if task.done():
                self._tasks.pop(key, None)
        if len(self._assignments) >= self._size:
            self._assignments.clear()
            self._bounds.clear()
        self._assignments[key] = result
        return result

    async def bounds(self, view: ClusterView, dataset: DatasetRecord) -> tuple[int, int]:
        """The most and fewest shards any live member holds, counted once per key.

        Every GetShards answers them; counting over 1,000 members on each call
        would put that loop on the hot path.
        """
        key = (view.generation, dataset.name)
        bounds = self._bounds.get(key)
        if bounds is None:
            assignment = await self.assignment(view, dataset)
            counts = [len(assignment.get(member, ())) for member in view.live_members()] or [0]
            bounds = self._bounds[key] = (max(counts), min(counts))
        return bounds


def _assign(view: ClusterView, dataset: DatasetRecord) -> dict[str, list[int]]:
    members = view.live_members()
    if not members:
        return {}
    return assign_shards(
        members,
        dataset.name,
        dataset.num_shards,
        vnodes=dataset.vnodes,
        load_factor=dataset.load_factor,
    )
