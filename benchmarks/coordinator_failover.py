"""Failover timing for ``benchmarks/coordinator.py``: signal the leader, time the first write.

One repetition: the client holds a connected channel to every replica; the
leader gets SIGKILL (a crash: its lease must expire) or SIGTERM (a graceful
stop: it revokes its lease); from just before the signal until the first
``RegisterDataset`` of a fresh name succeeds, the client retries the way a
dtr worker does, minus the jitter: a FAILED_PRECONDITION answer with a
``dtr-leader`` trailing-metadata hint sends the next attempt to that address
at once; any other failure sends it to the next replica in turn after
``RETRY_PAUSE_S``. Every attempt has ``ATTEMPT_TIMEOUT_S``, and the whole
loop a deadline. The stopped replica is then started again and the cluster
left with one leader, ready for the next repetition.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass

import grpc

from dtr.chaos.cluster import LocalCluster
from dtr.proto import LEADER_METADATA_KEY
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc

ATTEMPT_TIMEOUT_S = 0.5
RETRY_PAUSE_S = 0.02
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


@dataclass(frozen=True)
class Takeover:
    """One repetition: seconds from the signal to the first acknowledged write."""

    signal: str
    lease_ttl_s: int
    seconds: float
    attempts: int
    hints_followed: int
    old_leader: str
    new_leader: str


class LeaderFollowingClient:
    """Connected channels to every replica, and the retry loop of one write."""

    def __init__(self, addresses: list[str], job: str) -> None:
        self.job = job
        self.channels = {a: grpc.insecure_channel(a, options=_CHANNEL_OPTIONS) for a in addresses}
        for channel in self.channels.values():
            grpc.channel_ready_future(channel).result(timeout=10.0)
        self.stubs = {a: pb_grpc.CoordinatorStub(c) for a, c in self.channels.items()}

    def write_until_acknowledged(
        self, first: str, name: str, deadline: float
    ) -> tuple[float, int, int, str]:
        """(time acknowledged, attempts, hints followed, replica that answered)."""
        request = pb.RegisterDatasetRequest(
            header=pb.RequestHeader(job=self.job, caller_id="bench-failover"),
            name=name,
            num_shards=16,
        )
        order = list(self.stubs)
        target, attempts, hints = first, 0, 0
        while time.monotonic() < deadline:
            attempts += 1
            try:
                self.stubs[target].RegisterDataset(request, timeout=ATTEMPT_TIMEOUT_S)
                return time.monotonic(), attempts, hints, target
            except grpc.RpcError as err:
                hint = _leader_hint(err)
                if hint in self.stubs and hint != target:
                    target, hints = hint, hints + 1
                    continue
                target = order[(order.index(target) + 1) % len(order)]
                time.sleep(RETRY_PAUSE_S)
        raise TimeoutError(f"no write acknowledged within the deadline ({attempts} attempts)")

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def _leader_hint(err: grpc.RpcError) -> str | None:
    """The ``dtr-leader`` address of a FAILED_PRECONDITION (NOT_LEADER) answer, if any."""
    if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    for item in err.trailing_metadata() or ():
        if item.key == LEADER_METADATA_KEY:
            value: str | bytes = item.value
            return value if isinstance(value, str) else value.decode()
    return None


def takeover(cluster: LocalCluster, signal_name: str, lease_ttl_s: int) -> Takeover:
    """Signal the leader, time the first write, then restore three serving replicas."""
    old = cluster.leader(timeout_s=30.0)
    client = LeaderFollowingClient(cluster.endpoints, cluster.job)
    name = f"failover-{uuid.uuid4().hex[:10]}"
    try:
        started = time.monotonic()
        if signal_name == "SIGKILL":
            old.kill()
        else:
            old.request_stop()
        done, attempts, hints, answered = client.write_until_acknowledged(
            old.address, name, started + lease_ttl_s + 15.0
        )
    finally:
        client.close()
        old.wait_stopped(10.0)
    old.start()
    cluster.wait_ready(timeout_s=30.0)
    cluster.leader(timeout_s=30.0)
    return Takeover(
        signal_name, lease_ttl_s, done - started, attempts, hints, old.replica_id, answered
    )


def takeovers(cluster: LocalCluster, lease_ttl_s: int, repeats: int) -> list[dict[str, object]]:
    """``repeats`` SIGKILL repetitions, then ``repeats`` SIGTERM ones."""
    return [
        asdict(takeover(cluster, signal_name, lease_ttl_s))
        for signal_name in ("SIGKILL", "SIGTERM")
        for _ in range(repeats)
    ]
