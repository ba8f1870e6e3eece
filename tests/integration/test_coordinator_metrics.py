"""Prometheus metrics of a real replica: off by default, on with --metrics-port."""

from __future__ import annotations

import urllib.request
import uuid

import grpc

from dtr.chaos.cluster import LocalCluster
from dtr.etcd import RunningEtcd, pick_free_ports
from dtr.proto import coordinator_pb2 as pb
from dtr.proto import coordinator_pb2_grpc as pb_grpc
from helpers import wait_until


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as reply:
        text: str = reply.read().decode()
    return text


def test_a_leader_exports_term_workers_and_rpc_latency(etcd: RunningEtcd) -> None:
    (port,) = pick_free_ports(1)
    job = f"m-{uuid.uuid4().hex[:8]}"
    extra = ("--metrics-port", str(port))
    with LocalCluster.start(replicas=1, etcd=etcd, job=job, extra_args=extra) as cluster:
        leader = cluster.leader()
        with grpc.insecure_channel(leader.address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id="w0", capacity=1.0))
            stub.Heartbeat(pb.HeartbeatRequest(beat=pb.WorkerBeat(worker_id="w0")))
        wait_until(
            lambda: 'dtr_coordinator_workers{state="alive"} 1.0' in scrape(port),
            10.0,
            "the alive-workers gauge",
        )
        text = scrape(port)
    assert "dtr_coordinator_is_leader 1.0" in text
    assert 'dtr_coordinator_rpc_seconds_count{code="OK",method="Heartbeat"} 1.0' in text
    assert 'dtr_coordinator_etcd_txn_seconds_count{kind="write"}' in text
    assert "dtr_coordinator_generation 1.0" in text
