"""CheckpointManager.prepare end to end: staging readied ahead of the first save, real cluster.

Saves go to ``file://`` storage and commit through a real coordinator; every
state saved is loaded back with ``load_latest`` and compared bit for bit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from dtr.chaos.cluster import LocalCluster
from dtr.errors import CheckpointError, InvalidArgument
from dtr.etcd import RunningEtcd
from dtr.worker import CheckpointManager, Worker

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=1, etcd=etcd, job=f"p-{uuid.uuid4().hex[:10]}") as started:
        yield started


def training_state(steps: int) -> tuple[dict[str, Any], torch.nn.Module, torch.optim.Optimizer]:
    """A model (2 MiB) and Adam after ``steps`` steps (none: Adam has no state yet, and its
    state, twice the model, outgrows a buffer prepared for the model alone)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 8)
    )
    opt = torch.optim.Adam(model.parameters())
    for _ in range(steps):
        model(torch.randn(4, 256)).sum().backward()
        opt.step()
    return {"model": model.state_dict(), "opt": opt.state_dict(), "steps": steps}, model, opt


def assert_bit_exact(loaded: object, expected: object) -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(loaded, torch.Tensor) and loaded.dtype == expected.dtype
        raw = loaded.reshape(-1).view(torch.uint8)
        assert torch.equal(raw, expected.contiguous().reshape(-1).view(torch.uint8))
    elif isinstance(expected, dict):
        assert isinstance(loaded, dict) and list(loaded) == list(expected)
        for key, value in expected.items():
            assert_bit_exact(loaded[key], value)
    elif isinstance(expected, list | tuple):
        assert type(loaded) is type(expected) and len(loaded) == len(expected)
        for got, value in zip(loaded, expected, strict=True):
            assert_bit_exact(got, value)
    else:
        assert loaded == expected


def manager_for(worker: Worker, root: Path, **options: Any) -> CheckpointManager:
    return CheckpointManager(worker, f"file://{root}/ckpt", queue_path=root / "q.sqlite", **options)


def test_the_first_save_after_prepare_reuses_the_prepared_buffer_and_loads_back(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    state, _, _ = training_state(steps=1)
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        manager_for(worker, tmp_path) as manager,
    ):
        manager.prepare(state).result(timeout=60)
        assert manager._pool.allocations == 1

        for step in (1, 2):
            manager.save_async(state, step).result(timeout=60)
        manager.wait(timeout_s=60)
        loaded, step = manager.load_latest()

        assert step == 2 and manager._pool.allocations == 1
        assert manager._layouts.plans_made == 1  # planned by prepare, reused by both saves
        assert_bit_exact(loaded, state)


def test_a_state_that_grows_after_prepare_is_saved_whole(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    before, model, opt = training_state(steps=0)  # Adam's state appears at its first step
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        manager_for(worker, tmp_path) as manager,
    ):
        manager.prepare(before).result(timeout=60)
        model(torch.randn(4, 256)).sum().backward()
        opt.step()
        grown = {"model": model.state_dict(), "opt": opt.state_dict(), "steps": 1}

        manager.save_async(grown, 1).result(timeout=60)
        manager.wait(timeout_s=60)
        loaded, _ = manager.load_latest()

        assert_bit_exact(loaded, grown)
        assert manager._pool.allocations == 2  # the grown state needed a bigger buffer


def test_a_save_right_after_prepare_waits_for_it_instead_of_being_dropped(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    state, _, _ = training_state(steps=1)
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        manager_for(worker, tmp_path, when_full="drop") as manager,
    ):
        prepared = manager.prepare(state)
        result = manager.save_async(state, 5).result(timeout=60)  # no wait for prepared

        assert not result.dropped and result.size_bytes > 0
        prepared.result(timeout=60)
        manager.wait(timeout_s=60)
        assert_bit_exact(manager.load_latest()[0], state)
        assert manager._pool.allocations == 1


def test_prepare_refuses_bad_state_at_once_and_a_closed_manager(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    with Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker:
        manager = manager_for(worker, tmp_path)
        with pytest.raises(InvalidArgument, match=r"state\['opt'\]\['fn'\]: cannot checkpoint"):
            manager.prepare({"w": torch.ones(3), "opt": {"fn": print}})
        assert manager._pool.allocations == 0
        manager.close()
        with pytest.raises(CheckpointError, match="closed"):
            manager.prepare({"w": torch.ones(3)})


def test_a_replicated_member_that_does_not_write_prepares_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    state, _, _ = training_state(steps=1)
    with (
        Worker(cluster.coordinators, worker_id="w1", job=cluster.job) as worker,
        manager_for(worker, tmp_path, replicated=True, writer=False) as manager,
    ):
        manager.prepare(state).result(timeout=60)
        assert manager._pool.allocations == 0
