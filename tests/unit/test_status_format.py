"""``dtr status`` output from real ClusterStatusResponse messages (DESIGN §3).

The JSON keys are a public contract: scripts parse ``dtr status --json``.
Absence must read as null, never as a zero that looks like a value.
"""

from __future__ import annotations

import json

import pytest

from dtr.cli.status_format import render_status, status_to_dict
from dtr.proto import coordinator_pb2 as pb

DESIGN_KEYS = {
    "job",
    "leader",
    "replicas",
    "workers",
    "generation",
    "datasets",
    "latest_checkpoint",
}


def full_response() -> pb.ClusterStatusResponse:
    """A job with a leader, two workers (one dead), a dataset, a barrier and a checkpoint."""
    return pb.ClusterStatusResponse(
        header=pb.ResponseHeader(term=41, generation=7, replica_id="replica-1", is_leader=True),
        job="run-7",
        leader=pb.LeaderInfo(id="replica-1", address="127.0.0.1:50052", term=41),
        replicas=[
            pb.ReplicaInfo(id="replica-0", address="127.0.0.1:50051", is_leader=False),
            pb.ReplicaInfo(id="replica-1", address="127.0.0.1:50052", is_leader=True),
        ],
        workers=[
            pb.WorkerInfo(
                id="w-0",
                alive=True,
                capacity=2.0,
                last_heartbeat_age_s=0.5,
                step=120,
                samples_per_s=512.0,
                shard_counts={"tokens": 3000, "images": 10},
                incarnation=2,
                host="node-a",
                pid=4242,
                checkpoint=pb.CheckpointProgress(
                    saves_in_flight=1, commits_queued=2, last_durable_step=100
                ),
            ),
            pb.WorkerInfo(id="w-1", alive=False, capacity=1.0),
        ],
        generation=7,
        datasets=[pb.Dataset(name="tokens", num_shards=4096, vnodes=150, load_factor=0.25)],
        open_barriers=[pb.BarrierInfo(name="step-120", generation=7, arrived=1, expected=2)],
        latest_checkpoint=pb.CheckpointSummary(step=100, generation=7, worker_ids=["w-0", "w-1"]),
    )


def test_status_json_has_every_key_design_promises_and_is_serializable() -> None:
    status = status_to_dict(full_response())
    assert set(status) >= DESIGN_KEYS
    assert json.loads(json.dumps(status)) == status


def test_status_json_carries_leader_replicas_and_generation() -> None:
    status = status_to_dict(full_response())
    assert status["job"] == "run-7"
    assert status["leader"] == {"id": "replica-1", "address": "127.0.0.1:50052", "term": 41}
    assert status["replicas"] == [
        {"id": "replica-0", "address": "127.0.0.1:50051", "is_leader": False},
        {"id": "replica-1", "address": "127.0.0.1:50052", "is_leader": True},
    ]
    assert status["generation"] == 7
    assert status["answered_by"] == {"id": "replica-1", "is_leader": True}


def test_status_json_describes_each_worker() -> None:
    alive, dead = status_to_dict(full_response())["workers"]
    assert alive["id"] == "w-0" and alive["alive"] is True
    assert alive["capacity"] == 2.0
    assert alive["last_heartbeat_age_s"] == pytest.approx(0.5)
    assert alive["shard_counts"] == {"images": 10, "tokens": 3000}
    assert list(alive["shard_counts"]) == ["images", "tokens"]
    assert alive["checkpoint"] == {
        "saves_in_flight": 1,
        "commits_queued": 2,
        "last_durable_step": 100,
        "last_committed_step": None,
    }
    assert dead["alive"] is False


def test_unknown_heartbeat_age_is_null_not_zero() -> None:
    dead = status_to_dict(full_response())["workers"][1]
    assert dead["last_heartbeat_age_s"] is None
    assert dead["checkpoint"] is None


def test_datasets_and_latest_checkpoint() -> None:
    status = status_to_dict(full_response())
    assert status["datasets"] == [
        {"name": "tokens", "num_shards": 4096, "vnodes": 150, "load_factor": 0.25}
    ]
    assert status["latest_checkpoint"] == {"step": 100, "generation": 7, "workers": ["w-0", "w-1"]}
    assert status["open_barriers"] == [
        {"name": "step-120", "generation": 7, "arrived": 1, "expected": 2}
    ]


def test_a_job_with_no_leader_and_no_checkpoint_reads_as_null() -> None:
    status = status_to_dict(pb.ClusterStatusResponse(job="empty"))
    assert status["leader"] is None
    assert status["latest_checkpoint"] is None
    assert status["replicas"] == [] and status["workers"] == [] and status["datasets"] == []
    assert status["generation"] == 0


def test_a_dataset_without_load_factor_is_unbounded_null() -> None:
    response = pb.ClusterStatusResponse(datasets=[pb.Dataset(name="d", num_shards=8)])
    assert status_to_dict(response)["datasets"][0]["load_factor"] is None


def test_a_checkpoint_at_step_zero_is_not_mistaken_for_none() -> None:
    response = pb.ClusterStatusResponse(latest_checkpoint=pb.CheckpointSummary(step=0))
    assert status_to_dict(response)["latest_checkpoint"] == {
        "step": 0,
        "generation": 0,
        "workers": [],
    }


def test_the_table_shows_what_the_json_says() -> None:
    text = render_status(status_to_dict(full_response()))
    assert "job run-7: generation 7; answered by replica-1 (leader)" in text
    assert "leader: replica-1 at 127.0.0.1:50052 (term 41)" in text
    assert "REPLICAS (2)" in text and "127.0.0.1:50051" in text
    assert "WORKERS (2)" in text
    assert "0.5s ago" in text
    assert "images=10,tokens=3000" in text
    assert "DEAD" in text and "unknown" in text
    assert "tokens  4096" in text
    assert "step-120" in text and "1/2" in text
    assert "latest complete checkpoint: step 100 (2 workers)" in text


def test_the_table_of_an_empty_job_says_none_everywhere() -> None:
    text = render_status(status_to_dict(pb.ClusterStatusResponse(job="empty")))
    assert "leader: none known" in text
    assert "WORKERS (0): none" in text
    assert "latest complete checkpoint: none" in text
    assert all(line == line.rstrip() for line in text.splitlines())
