"""``dtr status`` output: a ClusterStatusResponse as a JSON-ready dict, and as a table.

Pure functions, no I/O, so the shape of ``dtr status --json`` (DESIGN §3) is
unit-tested from real protobuf messages without a cluster. The table is
rendered from the dict, never from the message, so both outputs always say
the same thing. Absence is ``None`` (JSON null), never a zero that could be
read as a value: no leader, no heartbeat age (answered by a follower), no
complete checkpoint.

Protobuf is only named for the type checker: this module is imported by the
CLI's parser and must stay light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtr.proto.coordinator_pb2 import (
        CheckpointProgress,
        ClusterStatusResponse,
        WorkerInfo,
    )


def status_to_dict(response: ClusterStatusResponse) -> dict[str, Any]:
    """The ``dtr status --json`` object: the keys DESIGN §3 promises, and a few more."""
    header = response.header
    return {
        "job": response.job,
        "leader": _leader(response),
        "replicas": [
            {"id": r.id, "address": r.address, "is_leader": r.is_leader} for r in response.replicas
        ],
        "workers": [_worker(w) for w in response.workers],
        "generation": response.generation,
        "datasets": [
            {
                "name": d.name,
                "num_shards": d.num_shards,
                "vnodes": d.vnodes,
                "load_factor": d.load_factor if d.HasField("load_factor") else None,
            }
            for d in response.datasets
        ],
        "open_barriers": [
            {
                "name": b.name,
                "generation": b.generation,
                "arrived": b.arrived,
                "expected": b.expected,
            }
            for b in response.open_barriers
        ],
        "latest_checkpoint": _latest_checkpoint(response),
        "answered_by": {"id": header.replica_id, "is_leader": header.is_leader},
    }


def _leader(response: ClusterStatusResponse) -> dict[str, Any] | None:
    if not response.HasField("leader"):
        return None
    leader = response.leader
    return {"id": leader.id, "address": leader.address, "term": leader.term}


def _latest_checkpoint(response: ClusterStatusResponse) -> dict[str, Any] | None:
    if not response.HasField("latest_checkpoint"):
        return None
    latest = response.latest_checkpoint
    return {
        "step": latest.step,
        "generation": latest.generation,
        "workers": list(latest.worker_ids),
    }


def _worker(worker: WorkerInfo) -> dict[str, Any]:
    age = worker.last_heartbeat_age_s if worker.HasField("last_heartbeat_age_s") else None
    return {
        "id": worker.id,
        "alive": worker.alive,
        "capacity": worker.capacity,
        "last_heartbeat_age_s": age,
        "incarnation": worker.incarnation,
        "step": worker.step,
        "samples_per_s": worker.samples_per_s,
        "shard_counts": dict(sorted(worker.shard_counts.items())),
        "host": worker.host,
        "pid": worker.pid,
        "checkpoint": _progress(worker.checkpoint) if worker.HasField("checkpoint") else None,
    }


def _progress(progress: CheckpointProgress) -> dict[str, Any]:
    durable = progress.HasField("last_durable_step")
    committed = progress.HasField("last_committed_step")
    return {
        "saves_in_flight": progress.saves_in_flight,
        "commits_queued": progress.commits_queued,
        "last_durable_step": progress.last_durable_step if durable else None,
        "last_committed_step": progress.last_committed_step if committed else None,
    }


# --- the readable table ------------------------------------------------------------


def render_status(status: Mapping[str, Any]) -> str:
    """The human view of ``status_to_dict``'s result: a summary, then one table per kind."""
    lines = [_summary_line(status), _leader_line(status.get("leader")), ""]
    replicas = status.get("replicas", [])
    lines += _section(
        f"REPLICAS ({len(replicas)})",
        ("ID", "ADDRESS", "LEADER"),
        [(r["id"], r["address"], "*" if r["is_leader"] else "") for r in replicas],
    )
    workers = status.get("workers", [])
    lines += _section(
        f"WORKERS ({len(workers)})",
        ("ID", "ALIVE", "CAPACITY", "LAST BEAT", "STEP", "SHARDS"),
        [_worker_row(w) for w in workers],
    )
    datasets = status.get("datasets", [])
    lines += _section(
        f"DATASETS ({len(datasets)})",
        ("NAME", "SHARDS"),
        [(d["name"], str(d["num_shards"])) for d in datasets],
    )
    barriers = status.get("open_barriers", [])
    lines += _section(
        f"OPEN BARRIERS ({len(barriers)})",
        ("NAME", "GENERATION", "ARRIVED"),
        [(b["name"], str(b["generation"]), f"{b['arrived']}/{b['expected']}") for b in barriers],
    )
    lines.append(_checkpoint_line(status.get("latest_checkpoint")))
    return "\n".join(lines)


def _summary_line(status: Mapping[str, Any]) -> str:
    answered = status.get("answered_by") or {}
    role = "leader" if answered.get("is_leader") else "follower"
    by = f"; answered by {answered['id']} ({role})" if answered.get("id") else ""
    return f"job {status.get('job', '')}: generation {status.get('generation', 0)}{by}"


def _leader_line(leader: Mapping[str, Any] | None) -> str:
    if leader is None:
        return "leader: none known"
    return f"leader: {leader['id']} at {leader['address']} (term {leader['term']})"


def _checkpoint_line(latest: Mapping[str, Any] | None) -> str:
    if latest is None:
        return "latest complete checkpoint: none"
    count = len(latest["workers"])
    return f"latest complete checkpoint: step {latest['step']} ({count} workers)"


def _worker_row(worker: Mapping[str, Any]) -> tuple[str, ...]:
    age = worker["last_heartbeat_age_s"]
    shards = ",".join(f"{name}={n}" for name, n in worker.get("shard_counts", {}).items())
    return (
        worker["id"],
        "yes" if worker["alive"] else "DEAD",
        f"{worker['capacity']:g}",
        "unknown" if age is None else f"{age:.1f}s ago",
        str(worker.get("step", 0)),
        shards or "-",
    )


def _section(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A titled, left-aligned table; an empty one is one line, "TITLE: none"."""
    if not rows:
        return [f"{title}: none", ""]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [title, "  " + line(headers), *("  " + line(row) for row in rows), ""]
