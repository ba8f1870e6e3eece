"""Adversarial review of issue 19 end to end: a real CheckpointManager, real coordinators.

Saves go to ``file://`` storage in a temporary directory and commit through a
real coordinator (``LocalCluster``); every state saved is read back — with
``load_latest`` and, for saves that were in flight together, from the part
files themselves — and compared bit for bit with the values it had when
``save_async`` returned. Faults are real: a file-size limit for a full disk, a
lock on the commit queue's SQLite file to hold the writer thread, a second
etcd for a new job life over the same state directory, and child processes
for states that crash the interpreter.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import torch
from tensor_support import assert_bit_exact

from dtr.chaos.cluster import LocalCluster
from dtr.errors import CheckpointError, DtrError
from dtr.etcd import RunningEtcd
from dtr.worker import CheckpointManager, Worker
from dtr.worker.checkpoint import SaveResult
from dtr.worker.checkpoint_format import decode
from helpers import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
_SPLIT = 8 << 20  # dtr.worker.snapshot._SPLIT_MIN_BYTES: the copy runs on two threads past it


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=1, etcd=etcd, job=f"a19-{uuid.uuid4().hex[:10]}") as started:
        yield started


def manager_for(worker: Worker, root: Path, **options: Any) -> CheckpointManager:
    return CheckpointManager(worker, f"file://{root}/ckpt", queue_path=root / "q.sqlite", **options)


def frozen(state: object) -> Any:
    """A deep copy of ``state`` with every tensor's current value cloned."""
    if isinstance(state, torch.Tensor):
        return state.detach().resolve_conj().resolve_neg().clone()
    if isinstance(state, dict):
        return {k: frozen(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(frozen(v) for v in state)
    return state


def part_state(result: SaveResult) -> Any:
    """The state stored in one part file, decoded straight from the file."""
    assert result.uri.startswith("file://")
    return decode(bytearray(Path(result.uri.removeprefix("file://")).read_bytes()))[0]


def changing_states() -> list[dict[str, Any]]:
    """Saves of one job whose tensors keep dtype and shape while everything else moves."""
    g = torch.Generator().manual_seed(19)
    x, y = torch.randn(64, 48, generator=g), torch.randn(64, 48, generator=g)
    flat = torch.randn(5000, generator=g)
    wide = torch.randn(48, 64, generator=g)
    big = torch.randn(_SPLIT // 4 + 4321, generator=g)  # past the split: two copy threads
    z = torch.randn(6, 5, dtype=torch.complex64, generator=g)
    mask = torch.rand(77, generator=g) > 0.5
    return [
        {"a": x, "b": y, "big": big, "n": 1, "s": "one", "o": None},
        {"b": y, "a": x, "big": big, "n": 2, "s": "two", "o": [1, None]},  # keys reordered
        {"renamed": x, "b": y, "big": big, "n": None, "s": b"\x00", "o": {"k": (1, "v")}},
        {"a": x, "b": x, "big": big, "c": y},  # a tie, the same tensors' signature
        {"a": x, "b": y, "big": big, "c": y},  # the tie moved
        {"a": flat[7:3079].view(64, 48), "b": wide.t(), "big": big[1:]},  # offset, strided
        {"a": x.view(48, 64), "b": y.view(-1), "big": big},  # the same numel, other shapes
        {"a": x.to(torch.bfloat16), "b": y.view(torch.int32), "big": big, "m": mask},
        {"a": x.to(torch.int8), "z": z.conj(), "neg": z.conj().imag, "big": big.view(-1, 1)},
        {"a": x, "b": y, "big": big, "n": 1, "s": "one", "o": None},  # back to the first
    ]


def test_states_that_keep_shapes_while_the_rest_changes_load_back_bit_exact(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    states = changing_states()
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        manager_for(worker, tmp_path, max_in_flight=2) as manager,
    ):
        manager.prepare(states[0])  # not awaited: the first save races the preparation
        step = 0
        for pair in (states[i : i + 2] for i in range(0, len(states), 2)):
            futures: list[tuple[Future[SaveResult], Any]] = []
            for state in pair:
                step += 1
                future = manager.save_async(state, step)
                futures.append((future, frozen(state)))
                for tensor in (v for v in state.values() if isinstance(v, torch.Tensor)):
                    if tensor.dtype.is_floating_point and not tensor.is_neg():
                        tensor.add_(1)  # training goes on the moment save_async returns
            for future, expected in futures:
                result = future.result(timeout=60)
                assert not result.dropped
                assert_bit_exact(part_state(result), expected)
            manager.wait(timeout_s=60)
            loaded, latest = manager.load_latest()
            assert latest == step
            assert_bit_exact(loaded, futures[-1][1])


def test_a_small_bool_mask_built_from_bytes_is_the_latest_step_that_loads(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """A mask made by viewing bytes as bool: its step completes, so it must load.

    The part is committed and its checksum verifies, but the raw ``memmove``
    copied bytes other than 0 and 1; ``load_latest`` refuses the part as
    corrupt and silently resumes from the step before (DESIGN §5.6: a restart
    resumes from the latest complete step).
    """
    weights = torch.randn(100)
    flags = torch.tensor([0, 1, 2, 4, 0, 64, 255, 1, 0, 3], dtype=torch.uint8)
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        manager_for(worker, tmp_path) as manager,
    ):
        manager.save_async({"w": weights, "mask": torch.zeros(10, dtype=torch.bool)}, 1)
        state = {"w": weights, "mask": flags.view(torch.bool)}  # 10 bytes: was copy_'d
        manager.save_async(state, 2).result(timeout=60)
        manager.wait(timeout_s=60)

        loaded, step = manager.load_latest()

        assert step == 2, "the latest complete step did not load; it fell back"
        assert loaded["mask"].tolist() == state["mask"].tolist()


def test_a_cancelled_save_gives_its_staging_buffer_back(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """``Future.cancel()`` on a save still queued for the writer thread.

    The snapshot was taken (it holds a staging buffer); only the writer
    releases it, and a cancelled future never reaches the writer. With
    ``max_in_flight=1`` every later save is then dropped (or, with
    ``when_full="wait"``, blocks forever).
    """
    g = torch.Generator().manual_seed(5)

    def state(step: int) -> dict[str, Any]:
        return {"w": torch.randn(4096, generator=g), "step": step}

    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        manager_for(worker, tmp_path, when_full="drop") as manager,
    ):
        manager.save_async(state(1), 1).result(timeout=60)
        manager.wait(timeout_s=60)
        holder = sqlite3.connect(tmp_path / "q.sqlite", isolation_level=None, timeout=5)
        queued: list[Future[SaveResult]] = []
        try:
            holder.execute("BEGIN IMMEDIATE")  # the writer blocks appending step 2's commit
            written = manager.save_async(state(2), 2)

            def queue_one() -> bool:  # the buffer is back once step 2 is on storage
                future = manager.save_async(state(3), 3)
                if future.done() and future.result().dropped:
                    return False
                queued.append(future)
                return True

            wait_until(queue_one, 4, "a save queued behind the blocked writer")
            assert queued[0].cancel(), "the save was not queued behind the writer"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        written.result(timeout=60)
        manager.wait(timeout_s=60)

        latest = frozen(state(4))
        result = manager.save_async(latest, 4).result(timeout=60)

        assert not result.dropped, "nothing is in flight, yet the save was dropped"
        manager.wait(timeout_s=60)
        loaded, step = manager.load_latest()
        assert step == 4
        assert_bit_exact(loaded, latest)


class HeldOpen(dict[str, Any]):
    """A state whose walk stops at ``_metadata`` (read by the walk) until the test lets it go."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()

    @property
    def _metadata(self) -> None:
        self.entered.set()
        assert self.release.wait(30), "the test never released the walk"


def run_on_thread(call: Any) -> tuple[threading.Thread, list[BaseException | object]]:
    outcome: list[BaseException | object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_save_async_racing_close_fails_with_a_typed_error(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """close() from another thread while save_async walks the state (a SIGTERM handler, say).

    The snapshot goes on into a closed pool and the writer's submit raises
    ``RuntimeError('cannot schedule new futures after shutdown')``.
    """
    with Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker:
        manager = manager_for(worker, tmp_path)
        state = HeldOpen(w=torch.randn(1000))
        thread, outcome = run_on_thread(lambda: manager.save_async(state, 1))
        assert state.entered.wait(30)
        manager.close()
        state.release.set()
        thread.join(30)

        assert not thread.is_alive()
        (answer,) = outcome
        assert isinstance(answer, CheckpointError), f"{type(answer).__name__}: {answer}"


def test_prepare_racing_close_fails_with_a_typed_error(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    with Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker:
        manager = manager_for(worker, tmp_path)
        state = HeldOpen(w=torch.randn(1000))
        thread, outcome = run_on_thread(lambda: manager.prepare(state))
        assert state.entered.wait(30)
        manager.close()
        state.release.set()
        thread.join(30)

        assert not thread.is_alive()
        (answer,) = outcome
        if isinstance(answer, Future):
            with pytest.raises(CheckpointError):
                answer.result(timeout=30)
        else:
            assert isinstance(answer, CheckpointError), f"{type(answer).__name__}: {answer}"


def test_a_step_saved_again_and_by_a_restarted_worker_keeps_the_committed_bytes(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    g = torch.Generator().manual_seed(11)

    def state() -> dict[str, Any]:
        return {"w": torch.randn(_SPLIT // 4 + 99, generator=g), "b": torch.randn(7, generator=g)}

    first = state()
    committed = frozen(first)
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        manager_for(worker, tmp_path) as manager,
    ):
        manager.save_async(first, 5).result(timeout=60)
        manager.wait(timeout_s=60)
        again = manager.save_async(state(), 5)  # the same step, other values
        with contextlib.suppress(DtrError):
            again.result(timeout=60)
        with contextlib.suppress(DtrError):
            manager.wait(timeout_s=60)
        loaded, step = manager.load_latest()
        assert step == 5
        assert_bit_exact(loaded, committed)
    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as restarted,
        manager_for(restarted, tmp_path) as manager,
    ):
        with contextlib.suppress(DtrError):
            manager.save_async(state(), 5).result(timeout=60)
        with contextlib.suppress(DtrError):
            manager.wait(timeout_s=60)
        loaded, step = manager.load_latest()
        assert step == 5
        assert_bit_exact(loaded, committed)

        later = state()
        expected = frozen(later)
        manager.save_async(later, 6).result(timeout=60)
        manager.wait(timeout_s=60)
        loaded, step = manager.load_latest()
        assert step == 6
        assert_bit_exact(loaded, expected)


@contextlib.contextmanager
def disk_full_after(limit_bytes: int) -> Iterator[None]:
    """No file of this process may grow past ``limit_bytes`` (EFBIG): a disk that fills up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_save_that_fills_the_disk_leaves_the_next_saves_exact(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    g = torch.Generator().manual_seed(23)

    def state() -> dict[str, Any]:
        return {
            "big": torch.randn(_SPLIT // 4 + 1000, generator=g),
            "small": [torch.randn(33, generator=g) for _ in range(20)],
            "t": torch.randn(30, 20, generator=g).t(),
        }

    with (
        Worker(cluster.coordinators, worker_id="w0", job=cluster.job) as worker,
        manager_for(worker, tmp_path) as manager,
    ):
        manager.save_async(state(), 1).result(timeout=60)
        manager.wait(timeout_s=60)
        with disk_full_after(1 << 20), pytest.raises(CheckpointError, match=r"(?i)too large"):
            manager.save_async(state(), 2).result(timeout=60)
        with pytest.raises(CheckpointError, match=r"(?i)too large"):
            manager.wait(timeout_s=60)  # the failure is reported once

        for step, value in ((3, state()), (4, {"other": torch.arange(10)}), (5, state())):
            expected = frozen(value)
            manager.save_async(value, step).result(timeout=60)
            manager.wait(timeout_s=60)
            loaded, latest = manager.load_latest()
            assert latest == step
            assert_bit_exact(loaded, expected)


def test_a_new_job_life_over_the_old_lifes_state_dir_starts_from_nothing(
    etcd: RunningEtcd, fresh_etcd: RunningEtcd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same job name on another etcd cluster (a new job life), the same DTR_STATE_DIR.

    Loading and saving are right, but the commit queue's ``last_committed_step``
    (reported in every heartbeat: ``dtr status``, the chaos checker) is the
    old life's.
    """
    monkeypatch.setenv("DTR_STATE_DIR", str(tmp_path / "state"))
    job, uri = f"a19-life-{uuid.uuid4().hex[:8]}", f"file://{tmp_path}/ckpt"
    with (
        LocalCluster.start(replicas=1, etcd=etcd, job=job) as old,
        Worker(old.coordinators, worker_id="w0", job=job) as worker,
        CheckpointManager(worker, uri) as manager,
    ):
        for step in (1, 2):
            manager.save_async({"w": torch.full((1000,), float(step))}, step).result(timeout=60)
        manager.wait(timeout_s=60)
        assert manager.last_committed_step == 2

    fresh = {"w": torch.randn(1000), "n": 7}
    with (
        LocalCluster.start(replicas=1, etcd=fresh_etcd, job=job) as new,
        Worker(new.coordinators, worker_id="w0", job=job) as worker,
        CheckpointManager(worker, uri) as manager,
    ):
        assert manager.load_latest(default=None) is None
        committed_before = manager.last_committed_step
        manager.save_async(fresh, 1).result(timeout=60)
        manager.wait(timeout_s=60)
        loaded, step = manager.load_latest()
        assert step == 1
        assert_bit_exact(loaded, fresh)

        assert committed_before is None, f"a new job life reports step {committed_before}"
        assert manager.last_committed_step == 1


# --- states that crash the process: run in a child so the test can see it ------------------

_CHILD = """
import sys, torch
from dtr.errors import DtrError
from dtr.worker import CheckpointManager, Worker
coordinators, job, root, kind = sys.argv[1:5]
if kind == "zero":
    state = {"z": torch._efficientzerotensor(5), "w": torch.ones(3)}
else:
    freed = torch.randn(1000)
    freed.untyped_storage().resize_(0)  # what a sharded module does to a parameter's storage
    state = {"freed": freed, "w": torch.ones(3)}
with Worker(coordinators, worker_id="w0", job=job) as worker, CheckpointManager(
    worker, f"file://{root}/ckpt", queue_path=f"{root}/q.sqlite"
) as manager:
    print("saving", flush=True)
    try:
        manager.save_async(state, 1).result(timeout=60)
        manager.wait(timeout_s=60)
    except DtrError as err:
        print("refused", type(err).__name__, flush=True)
    else:
        loaded, step = manager.load_latest()
        print("loaded", step, loaded["z"].tolist() if "z" in loaded else "?", flush=True)
"""


def run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_saving_a_zero_tensor_does_not_crash_the_training_process(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """``torch._efficientzerotensor`` (autograd's zeros): data_ptr() is 0.

    Before issue 19, a small tensor went through ``copy_`` (zeros saved);
    now ``memmove`` reads address 0: SIGSEGV.
    """
    done = run_child(_CHILD, cluster.coordinators, cluster.job, str(tmp_path), "zero")

    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.splitlines()[-1] == "loaded 1 [0.0, 0.0, 0.0, 0.0, 0.0]"


def test_a_tensor_whose_storage_was_freed_is_refused_not_a_crash(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    done = run_child(_CHILD, cluster.coordinators, cluster.job, str(tmp_path), "freed")

    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.splitlines()[-1] == "refused InvalidArgument"


_FORKED = """
import multiprocessing, os, torch
from dtr.worker.snapshot import StagingPool, snapshot

# Made before the fork: a torch op run in parallel (filling 8 MiB) in a forked child hangs in
# libgomp, which is not fork-safe, before dtr's code runs at all. The copy itself is memmove.
STATE = {"w": torch.ones((8 << 20) // 4 + 10)}

def save() -> None:
    with snapshot(STATE, {}, StagingPool(1)) as snap:
        assert len(snap.buffers()) > 1

def child() -> None:
    save()
    os._exit(0)

save()  # the split's helper thread now exists in this process
process = multiprocessing.get_context("fork").Process(target=child)
process.start()
process.join(10)
print("child exit", process.exitcode, flush=True)
if process.exitcode is None:
    process.kill()
    process.join(10)
"""


def test_a_forked_child_can_snapshot_past_the_split() -> None:
    """A process forked after a save (multiprocessing's default on Linux) saves again.

    The copy helper is a module-global ThreadPoolExecutor: in the child its
    thread is gone, the submitted half never runs and ``snapshot`` waits forever.
    """
    done = run_child(_FORKED)

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "child exit 0"
