"""The four ways ``benchmarks/checkpoint.py`` saves one state, each into its own directory.

dtr through the run's ``CheckpointManager``; ``dcp.async_save`` with one
``DefaultStager`` reused for every save (its staged CPU storages are cached);
``torch.save`` + fsync; and a raw ``os.write`` + fsync of exactly the bytes of
dtr's part, read back once it exists. ``clean_up`` runs outside every timed
window: commits acknowledged, old parts deleted by the manager, the
references' files removed. ``BareCopies`` are the floor of a stall: the
state's bytes copied into buffers reused from copy to copy, nothing else.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.staging import (
    BlockingAsyncStager,
    DefaultStager,
    StagingOptions,
)
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save

from dtr.worker import CheckpointManager
from dtr.worker.checkpoint import part_name

WORKER_ID = "bench-ckpt"
State = dict[str, torch.Tensor]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.01)


class Savers:
    """The four ways to save the state, each into its own directory under ``root``."""

    def __init__(
        self, state: State, manager: CheckpointManager, root: Path, steps: Iterator[int]
    ) -> None:
        """``steps``: shared by every manager of the run's worker (a step is committed once)."""
        self.state, self.manager, self.root = state, manager, root
        self.stager = DefaultStager(StagingOptions(False, False, False, False))
        self.raw: memoryview | None = None  # dtr's part, read back once it exists
        self._steps = steps
        for name in ("dcp", "torch", "raw"):
            (root / name).mkdir()

    def start_dtr(self) -> Future[Any]:
        return self.manager.save_async(self.state, next(self._steps))

    def start_dcp(self) -> Future[Any]:
        target = self.root / "dcp" / f"step-{next(self._steps)}"
        future = dcp_async_save(self.state, checkpoint_id=target, async_stager=self.stager)
        assert isinstance(future, Future)  # synchronous staging: the upload future
        return future

    def torch_save(self) -> None:
        with (self.root / "torch" / "state.pt").open("wb") as file:
            torch.save(self.state, file)
            file.flush()
            os.fsync(file.fileno())

    def raw_write(self) -> None:
        assert self.raw is not None
        fd = os.open(self.root / "raw" / "part.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            view = self.raw
            while view.nbytes:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def load_raw(self, step: int) -> None:
        """The bytes of dtr's part of ``step`` (read into memory, every page touched)."""
        prefix = part_name(step, WORKER_ID).rsplit("/", 1)[0] + "/"
        (name,) = self.manager.storage.list(prefix)  # one save of the step: one unique name
        self.raw = memoryview(self.manager.storage.read(name))

    def clean_up(self) -> None:
        """Outside every timed window: commits acknowledged, old parts and copies deleted."""
        self.manager.wait(timeout_s=30.0)
        keep = self.manager.keep
        wait_until(
            lambda: len(self.manager.storage.list("step-")) <= keep, 30.0, "old parts deleted"
        )
        for name in ("dcp", "torch", "raw"):
            for child in (self.root / name).iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()


class BareCopies:
    """A stall's references: the state's bytes copied into reused buffers, nothing else.

    ``per_tensor``: one ``torch._foreach_copy_`` of the state's tensors into
    tensors of the same shapes (what a stager does at best, with no layout,
    header or bookkeeping); ``flat``: the same number of bytes as one tensor
    (``copy_``), what no count of tensors can beat. Both are warmed (every
    page touched) before they are timed.
    """

    def __init__(self, state: State) -> None:
        self.sources = list(state.values())
        self.targets = [torch.empty_like(t) for t in self.sources]
        self.flat_source = torch.cat([t.reshape(-1) for t in self.sources])
        self.flat_target = torch.empty_like(self.flat_source)
        self.per_tensor()
        self.flat()

    def per_tensor(self) -> float:
        started = time.perf_counter()
        torch._foreach_copy_(self.targets, self.sources)
        return time.perf_counter() - started

    def flat(self) -> float:
        started = time.perf_counter()
        self.flat_target.copy_(self.flat_source)
        return time.perf_counter() - started


def blocking_stager_problem() -> str | None:
    """Why ``BlockingAsyncStager(cache_staged_state_dict=True)`` cannot be the reference here."""
    try:
        BlockingAsyncStager(cache_staged_state_dict=True).stage({"probe": torch.zeros(4)})
    except Exception as err:  # whatever torch raises is the finding
        return f"{type(err).__name__}: {err}"
    return None
