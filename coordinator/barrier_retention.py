"""Barrier retention: delete released barriers beyond the newest few hundred, and failed ones.

A job with a barrier per step would otherwise grow etcd (and the leader's
cache) by one state key and one arrival key per worker at every step. The
leader runs a pass after every ``retention_period(keep)`` releases; the
choice of what to forget is pure (``barriers.barriers_to_forget``), and each
deletion is guarded by the barrier's mod revision, so a barrier reopened
since the listing is left alone until the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from dtr.errors import DtrError

from .barriers import (
    FORGET_PER_TXN,
    StoredBarrier,
    barriers_to_forget,
    forget_ops,
    stored_barriers,
)
from .listing import iter_prefix

if TYPE_CHECKING:
    from .leader import Coordinator

_log = logging.getLogger(__name__)


def _list_barriers(core: Coordinator) -> list[StoredBarrier]:
    """Every barrier's state key, page by page (``listing.py``: the arrivals are most keys)."""
    keys = core.keys

    def past_arrivals(key: str) -> str | None:
        # A barrier's arrival keys sort before its state key: jump past them.
        name = keys.last_segment(key, keys.barriers_prefix)
        arrivals = keys.barrier_arrivals_prefix(name)
        return arrivals if key.startswith(arrivals) else None

    kvs = iter_prefix(core.store, keys.barriers_prefix, skip_after=past_arrivals)
    return stored_barriers(keys, kvs)


async def forget_barriers(core: Coordinator) -> int:
    """One retention pass; returns how many barriers it deleted (errors are logged)."""
    try:
        stored = await asyncio.to_thread(_list_barriers, core)
        generation = (await core.read_view()).generation
        forget = barriers_to_forget(stored, generation, core.config.keep_barriers)
        forgotten = 0
        for start in range(0, len(forget), FORGET_PER_TXN):
            batch = forget[start : start + FORGET_PER_TXN]
            result = await core.fenced_txn(*forget_ops(core.keys, batch))
            if result.succeeded:  # else one was reopened meanwhile: the next pass
                forgotten += len(batch)
                for barrier in batch:
                    core.barriers.forget(barrier)
        if forgotten:
            _log.info("barrier retention: forgot %d of %d barriers", forgotten, len(stored))
        return forgotten
    except DtrError as err:  # tried again after the next releases
        _log.warning("barrier retention failed: %s", err)
        return 0
