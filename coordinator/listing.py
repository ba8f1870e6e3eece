"""Paged listings of prefixes that grow with the job (barriers, checkpoint steps).

One range over ``barriers/`` at 1,000 workers and 256 kept barriers is a
quarter of a million keys: tens of megabytes in one answer, which no short
per-request timeout lets through, so retention never ran and etcd grew
toward its quota. Reading a page of keys per request keeps every request
small and bounded, whatever the job's size. These are plain reads (no fence):
what they find is only acted on by writes guarded by compares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from dtr.keys import prefix_range_end
from dtr.store import EtcdStore, Get
from dtr.store_types import KeyValue

#: Keys one listing request returns at most.
PAGE_KEYS = 1000


def iter_prefix(
    store: EtcdStore,
    prefix: str,
    *,
    page_keys: int = PAGE_KEYS,
    skip_after: Callable[[str], str | None] | None = None,
) -> Iterator[KeyValue]:
    """Every key under ``prefix`` in key order, one page per request.

    ``skip_after(key)`` may name a sub-prefix to jump over once ``key`` was
    seen (for example the rest of a step's parts when only the steps are
    wanted); the next page starts after it.
    """
    start: str | None = None
    while True:
        page = store.txn([], [Get(prefix, prefix=True, start=start, limit=page_keys)]).results[0]
        kvs = page if isinstance(page, tuple) else ()
        for kv in kvs:
            skipped = skip_after(kv.key) if skip_after is not None else None
            yield kv
            if skipped is not None:
                start = prefix_range_end(skipped)
                break
        else:
            if len(kvs) < page_keys:
                return
            start = kvs[-1].key + "\0"
