"""A worker's Prometheus metrics against a real replica: off by default, on with metrics_port.

Everything is real: a coordinator process on the session etcd, a worker that
registers, reads shards, passes a barrier, saves a checkpoint to files and
reports progress, and ``/metrics`` read over HTTP from the worker's own server.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dtr.chaos.cluster import LocalCluster
from dtr.errors import InvalidArgument
from dtr.etcd import RunningEtcd, pick_free_ports
from dtr.worker import CheckpointManager, Worker
from dtr.worker.metrics import ENV_METRICS_PORT
from helpers import wait_until

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def cluster(etcd: RunningEtcd) -> Iterator[LocalCluster]:
    with LocalCluster.start(replicas=1, etcd=etcd, job=f"wm-{uuid.uuid4().hex[:8]}") as started:
        yield started


def scrape(port: int) -> Samples:
    """Every sample ``/metrics`` serves, keyed by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_a_worker_exports_rpcs_heartbeats_barriers_checkpoints_and_its_step(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    (port,) = pick_free_ports(1)
    with Worker(
        cluster.coordinators,
        worker_id="w0",
        job=cluster.job,
        heartbeat_interval_s=0.2,
        metrics_port=port,
    ) as worker:
        worker.register_dataset("tokens", num_shards=8)
        assert worker.get_shards("tokens") == list(range(8))
        worker.barrier("step-1", timeout_s=30)
        with CheckpointManager(
            worker, f"file://{tmp_path}/ckpt", queue_path=tmp_path / "queue.sqlite"
        ) as manager:
            saved = manager.save_async({"w": torch.ones(4096)}, 7).result(timeout=30)
            manager.wait(timeout_s=30)
            worker.report_progress(7, samples_per_s=12.5)
            wait_until(
                lambda: total(scrape(port), "dtr_worker_heartbeat_rtt_seconds_count") >= 2,
                15,
                "two timed heartbeats",
            )
            found = scrape(port)
    assert total(found, "dtr_worker_rpc_seconds_count", method="RegisterWorker", code="OK") >= 1
    assert total(found, "dtr_worker_rpc_seconds_count", method="GetShards", code="OK") >= 1
    assert total(found, "dtr_worker_rpc_seconds_count", method="CommitCheckpoint", code="OK") >= 1
    assert total(found, "dtr_worker_barrier_wait_seconds_count", outcome="released") == 1
    assert total(found, "dtr_worker_step") == 7
    assert total(found, "dtr_worker_samples_per_second") == 12.5
    assert total(found, "dtr_worker_checkpoint_bytes_total") == saved.size_bytes > 4 * 4096
    assert total(found, "dtr_worker_checkpoint_write_seconds_count") == 1
    assert total(found, "dtr_worker_checkpoint_stall_seconds_count") == 1
    assert total(found, "dtr_worker_commit_queue_depth") == 0
    assert 0 <= total(found, "dtr_worker_heartbeat_age_seconds") < 15
    assert total(found, "dtr_worker_generation") >= 1
    with pytest.raises(urllib.error.URLError):  # close() stopped the server
        scrape(port)


def test_metrics_are_off_by_default_and_the_variable_turns_them_on(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_METRICS_PORT, raising=False)
    with Worker(cluster.coordinators, worker_id="quiet", job=cluster.job) as quiet:
        assert quiet.metrics.url is None
    (port,) = pick_free_ports(1)
    monkeypatch.setenv(ENV_METRICS_PORT, str(port))
    with Worker(cluster.coordinators, worker_id="loud", job=cluster.job) as loud:
        assert loud.metrics.url == f"http://127.0.0.1:{port}/metrics"
        loud.report_progress(3)
        assert total(scrape(port), "dtr_worker_step") == 3


def test_a_bad_metrics_port_is_refused_before_any_call(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="metrics_port"):
        Worker("127.0.0.1:1", metrics_port=70000)
    monkeypatch.setenv(ENV_METRICS_PORT, "nine")
    with pytest.raises(InvalidArgument, match=ENV_METRICS_PORT):
        Worker("127.0.0.1:1")
