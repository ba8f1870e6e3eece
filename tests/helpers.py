"""Small helpers shared by the test layers: waiting on conditions, process state.

Tests wait for a condition with a deadline, never for a fixed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from dtr.chaos.cluster import LocalCluster
from dtr.chaos.proxy import TcpProxy
from dtr.etcd import RunningEtcd, pick_free_ports


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def is_process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class StatusError(grpc.RpcError):
    """An RpcError value shaped like the ones grpc raises (not a stand-in for a server).

    For unit tests of the code that reads status codes and trailing metadata.
    """

    def __init__(
        self, code: grpc.StatusCode, details: str = "", metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._code, self._details, self._metadata = code, details or code.name, metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def run_in_own_session(
    argv: list[str], env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` for a launcher (torchrun) whose children must not outlive a timeout.

    On timeout ``subprocess.run`` kills only the launcher; its ranks, orphaned,
    would wait for peers forever. Here the launcher leads its own session, and
    a timeout SIGKILLs that whole process group before the test fails.
    """
    process = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{argv[0]} ran over {timeout_s} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def stop_gracefully(process: subprocess.Popen[Any], grace_s: float = 20.0) -> None:
    """SIGTERM a process this test started (torchrun stops its ranks), SIGKILL it if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def cluster_dialing_etcd_through_proxies(
    etcd: RunningEtcd, **options: Any
) -> Iterator[tuple[LocalCluster, list[TcpProxy]]]:
    """A local cluster whose replicas reach etcd only through ``TcpProxy`` objects of the test's.

    The test slows (``delay``) or heals those proxies to make etcd slow for
    the coordinators alone; each replica gets proxies of its own.
    """
    proxies: list[TcpProxy] = []

    def route(replica: int, endpoints: list[str]) -> list[str]:
        del replica
        started = [TcpProxy(endpoint).start() for endpoint in endpoints]
        proxies.extend(started)
        return [proxy.address for proxy in started]

    try:
        with LocalCluster.start(etcd=etcd, route_etcd=route, **options) as cluster:
            yield cluster, proxies
    finally:
        for proxy in proxies:
            proxy.close()


@dataclass
class ProxiedCluster:
    """A local cluster whose replica ``i`` advertises (and is reached through) ``proxies[i]``."""

    cluster: LocalCluster
    proxies: list[TcpProxy]


@contextmanager
def proxied_cluster(etcd: RunningEtcd, replicas: int, **options: Any) -> Iterator[ProxiedCluster]:
    """Replicas of a fresh job on ``etcd``, each behind a ``TcpProxy`` it advertises.

    Clients given ``cluster.coordinators`` and every ``dtr-leader`` hint go
    through the proxies, so blackholing them cuts those clients off while the
    launcher's own probes still reach the replicas.
    """
    ports = pick_free_ports(2 * replicas)  # one call: no port handed out twice
    listen, fronts = ports[:replicas], ports[replicas:]
    proxies = [
        TcpProxy(f"127.0.0.1:{port}", listen_port=front).start()
        for port, front in zip(listen, fronts, strict=True)
    ]
    try:
        options.setdefault("job", f"proxied-{uuid.uuid4().hex[:10]}")
        with LocalCluster.start(
            replicas=replicas, etcd=etcd, ports=listen, advertise_ports=fronts, **options
        ) as cluster:
            yield ProxiedCluster(cluster, proxies)
    finally:
        for proxy in proxies:
            proxy.close()
