"""``dtr up``: a whole local cluster in one command, for development and demos.

etcd and N coordinator replicas, started by ``dtr.chaos.cluster.LocalCluster``
(the launcher the tests use, so what a developer runs is what is tested). The
command prints where everything is, as ``export`` lines a shell can paste,
waits for a leader, and then only watches: it reports replicas that die and
stops everything, replicas first, on Ctrl-C or SIGTERM.

Signals only set an event (``signals.py``): a Ctrl-C during start-up is acted
on once start-up returns, so no half-started process is ever left behind.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dtr.errors import InvalidArgument

from .options import (
    ENV_NOTE,
    Commands,
    EnvOption,
    Parser,
    add_debug,
    add_options,
    port,
    positive_float,
    positive_int,
)
from .signals import signals_set

if TYPE_CHECKING:
    from dtr.chaos.cluster import CoordinatorProcess, LocalCluster

_WATCH_INTERVAL_S = 0.5

_UP_OPTIONS = (
    EnvOption("--replicas", "DTR_UP_REPLICAS", 3, positive_int, "N", "coordinator replicas"),
    EnvOption(
        "--etcd-members",
        "DTR_UP_ETCD_MEMBERS",
        1,
        positive_int,
        "N",
        "etcd members (3 or more needs etcd >= 3.5.3 on PATH or in DTR_ETCD_BIN)",
    ),
    EnvOption("--job", "DTR_JOB", "default", str, "NAME", "the job the replicas coordinate"),
    EnvOption(
        "--base-port",
        "DTR_UP_BASE_PORT",
        None,
        port,
        "P",
        "replica i listens on 127.0.0.1:P+i (default: free ports)",
    ),
    EnvOption(
        "--work-dir",
        "DTR_UP_WORK_DIR",
        None,
        Path,
        "DIR",
        "where replica logs go and stay (default: a temporary directory removed on stop)",
    ),
    EnvOption(
        "--startup-timeout-s",
        "DTR_UP_STARTUP_TIMEOUT_S",
        60.0,
        positive_float,
        "S",
        "give up when the cluster is not serving with a leader within this long",
    ),
)


def add_up_command(commands: Commands[Parser]) -> None:
    parser = commands.add_parser(
        "up",
        help="start a local cluster: etcd and N coordinator replicas",
        description="Start etcd and N coordinator replicas on 127.0.0.1, print their "
        "addresses and the leader, and run until Ctrl-C or SIGTERM, then stop them all.",
        epilog=ENV_NOTE,
    )
    add_debug(parser, default=argparse.SUPPRESS)
    add_options(parser, _UP_OPTIONS)
    parser.set_defaults(run=run_up)


def run_up(args: argparse.Namespace) -> int:
    """Start, report, watch until a signal, stop; exit 0 after a requested stop."""
    from dtr.chaos.cluster import LocalCluster

    ports = replica_ports(args.base_port, args.replicas)
    stop_requested = threading.Event()
    with signals_set(stop_requested):
        cluster = LocalCluster.start(
            replicas=args.replicas,
            etcd_members=args.etcd_members,
            job=args.job,
            ports=ports,
            work_dir=args.work_dir,
            startup_timeout_s=args.startup_timeout_s,
        )
        try:
            _print_cluster(cluster)
            leader = _wait_for_leader(cluster, stop_requested, args.startup_timeout_s)
            if leader is not None:
                print(f"leader: {leader.replica_id} at {leader.address}", flush=True)
                print(f"dtr up: job {args.job} is running; Ctrl-C stops it", flush=True)
                _watch(cluster, stop_requested)
        finally:
            cluster.stop()
    print("dtr up: stopped", flush=True)
    return 0


def replica_ports(base_port: int | None, replicas: int) -> list[int] | None:
    """``base_port + i`` per replica, each checked free now; None to pick free ports."""
    from dtr.etcd import port_unavailable_reason

    if base_port is None:
        return None
    ports = list(range(base_port, base_port + replicas))
    if ports[-1] > 65535:
        raise InvalidArgument(f"--base-port {base_port}: {replicas} replicas would pass port 65535")
    for number in ports:
        reason = port_unavailable_reason("127.0.0.1", number)
        if reason is not None:
            raise InvalidArgument(
                f"--base-port {base_port}: port {number} is unavailable: {reason}"
            )
    return ports


def _print_cluster(cluster: LocalCluster) -> None:
    if cluster.owned_etcd is not None:
        for member in cluster.owned_etcd.members:
            print(f"etcd {member.name} at {member.client_url} (pid {member.pid})", flush=True)
    for replica in cluster.replicas:
        print(
            f"coordinator {replica.replica_id} at {replica.address} "
            f"(pid {replica.pid}; log {replica.log_path})",
            flush=True,
        )
    print(f"export DTR_ETCD={','.join(cluster.etcd_urls)}", flush=True)
    print(f"export DTR_COORDINATORS={cluster.coordinators}", flush=True)


def _wait_for_leader(
    cluster: LocalCluster, stop_requested: threading.Event, timeout_s: float
) -> CoordinatorProcess | None:
    """The leader, waiting in short rounds so Ctrl-C is honoured; None if stopped first."""
    from dtr.chaos.cluster import ClusterError

    deadline = time.monotonic() + timeout_s
    while not stop_requested.is_set():
        try:
            return cluster.leader(timeout_s=min(1.0, max(deadline - time.monotonic(), 0.0)))
        except ClusterError as err:
            if time.monotonic() >= deadline:
                raise ClusterError(f"no leader within {timeout_s:g} s ({err})") from err
    return None


def _watch(cluster: LocalCluster, stop_requested: threading.Event) -> None:
    """Until a stop is requested, report each replica that exits on its own (once)."""
    reported: set[str] = set()
    while not stop_requested.wait(_WATCH_INTERVAL_S):
        for replica in cluster.replicas:
            if replica.replica_id not in reported and not replica.is_alive():
                reported.add(replica.replica_id)
                print(
                    f"dtr up: coordinator {replica.replica_id} exited with code "
                    f"{replica.returncode}; see {replica.log_path}",
                    flush=True,
                )
