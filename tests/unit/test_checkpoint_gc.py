"""OwnPartCollector on real file storage: own old parts go, nothing else does, nothing waits.

The collector deletes this worker's objects of steps before the oldest kept
one, except those a pending commit names; it lists the store once per
manager (for leftovers of earlier processes) and never again; it works on
its own thread, so a store that hangs never blocks the caller (the commit
flusher), and requests made meanwhile coalesce into one more pass.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtr.errors import CheckpointError
from dtr.storage import FileStorage
from dtr.worker.checkpoint import part_name, step_of
from dtr.worker.checkpoint_gc import OwnPartCollector


class CountingStorage(FileStorage):
    """Real file storage that counts listings and can hold deletions or fail listings."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listings = 0
        self.fail_listing = False
        self.hold = threading.Event()
        self.hold.set()
        self.deleting = threading.Event()

    def list(self, prefix: str = "") -> list[str]:
        self.listings += 1
        if self.fail_listing:
            raise CheckpointError("listing refused (test)")
        return super().list(prefix)

    def delete(self, name: str) -> None:
        self.deleting.set()
        assert self.hold.wait(30), "the test never released the deletion"
        super().delete(name)


def own(name: str) -> bool:
    return re.fullmatch(r"w0(?:\.\d{10}-[0-9a-f]{16})?\.dtr", name.rpartition("/")[2]) is not None


def put(storage: FileStorage, step: int, worker: str, token: str = "") -> str:
    name = part_name(step, worker, token)
    storage.write(name, [b"part"])
    return name


@pytest.fixture
def storage(tmp_path: Path) -> CountingStorage:
    return CountingStorage(tmp_path / "ckpt")


@pytest.fixture
def referenced() -> set[str]:
    return set()


@pytest.fixture
def collector(storage: CountingStorage, referenced: set[str]) -> Iterator[OwnPartCollector]:
    made = OwnPartCollector(storage, is_own=own, step_of=step_of, referenced=lambda: referenced)
    yield made
    storage.hold.set()
    made.close()


def test_only_own_objects_of_old_unreferenced_steps_are_deleted_leftovers_included(
    storage: CountingStorage, collector: OwnPartCollector, referenced: set[str]
) -> None:
    leftover = put(storage, 5, "w0")  # an earlier process of w0 crashed before deleting it
    others = [put(storage, step, "w1", f"{step:010d}-{'a' * 16}") for step in (10, 20, 30)]
    mine = {step: put(storage, step, "w0", f"{step:010d}-{'b' * 16}") for step in (10, 20, 30)}
    for name in mine.values():
        collector.wrote(name)
    pending = put(storage, 15, "w0", f"{15:010d}-{'c' * 16}")
    collector.wrote(pending)
    referenced.add(storage.uri_of(pending))

    collector.collect_before(30)
    assert collector.wait_idle(30)

    left = set(storage.list("step-"))
    assert leftover not in left and mine[10] not in left and mine[20] not in left
    assert {mine[30], pending, *others} <= left, "kept, foreign or pending objects were deleted"


def test_the_store_is_listed_once_per_manager_not_once_per_commit(
    storage: CountingStorage, collector: OwnPartCollector
) -> None:
    for step in range(10, 70, 10):
        collector.wrote(put(storage, step, "w0", f"{step:010d}-{'d' * 16}"))
        collector.collect_before(step - 10)
        assert collector.wait_idle(30)
    before = storage.listings
    assert before == 1, f"the store was listed {before} times"
    remaining = [n for n in FileStorage(storage.root).list("step-") if own(n)]
    assert [step_of(n) for n in remaining] == [50, 60]


def test_a_hung_store_never_blocks_the_caller_and_requests_meanwhile_coalesce(
    storage: CountingStorage, collector: OwnPartCollector
) -> None:
    for step in (10, 20, 30):
        collector.wrote(put(storage, step, "w0", f"{step:010d}-{'e' * 16}"))
    storage.hold.clear()
    collector.collect_before(20)  # its pass hangs in the first deletion
    assert storage.deleting.wait(30)
    for oldest in (25, 30, 40):  # the caller (the flusher) goes on at once
        collector.collect_before(oldest)
    assert not collector.wait_idle(0.2), "the pass should still hang in the store"
    storage.hold.set()
    assert collector.wait_idle(30)
    assert [n for n in storage.list("step-") if own(n)] == []


def test_a_failed_listing_is_tried_again_on_the_next_pass(
    storage: CountingStorage, collector: OwnPartCollector
) -> None:
    leftover = put(storage, 5, "w0")
    storage.fail_listing = True
    collector.collect_before(10)
    assert collector.wait_idle(30)
    assert leftover in FileStorage(storage.root).list("step-")
    storage.fail_listing = False
    collector.collect_before(10)
    assert collector.wait_idle(30)
    assert leftover not in storage.list("step-")
    assert storage.listings == 3  # two sweeps and the look above
