"""A local dtr cluster of real processes: etcd and N coordinator replicas.

The tests, ``dtr up``, the chaos harness and the demo all start clusters
here, so a fault a test injects is the fault a user would see. Replicas are
``CoordinatorProcess``es (``coordinator_process.py``, re-exported here);
etcd is started by ``dtr.etcd.EtcdCluster`` unless an existing one is reused.
Readiness and leadership are polled from every replica's gRPC health service
in parallel, against deadlines, never inferred from sleeps.

What is not here: fault schedules and invariant checks (the rest of
``dtr.chaos``).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from dtr.errors import InvalidArgument
from dtr.etcd import EtcdCluster, RunningEtcd, pick_free_ports
from dtr.keys import validate_name
from dtr.proto import coordinator_pb2
from dtr.store import parse_endpoints

from .coordinator_process import LOOPBACK, ClusterError, CoordinatorProcess

__all__ = ["LOOPBACK", "ClusterError", "CoordinatorProcess", "LocalCluster"]

_POLL_S = 0.05
# Strong references on purpose: the exit hook must find clusters whose owner forgot stop().
_live: set[LocalCluster] = set()


class LocalCluster:
    """etcd (started here, or reused) and N coordinator replicas of one job."""

    def __init__(
        self,
        replicas: Sequence[CoordinatorProcess],
        *,
        job: str,
        etcd_endpoints: Sequence[str],
        work_dir: Path,
        owned_etcd: EtcdCluster | None = None,
        owns_work_dir: bool = False,
    ) -> None:
        """Describe a cluster; ``LocalCluster.start`` is the way to get a running one.

        ``owned_etcd`` and an ``owns_work_dir`` directory are stopped and removed
        by ``stop()``; a reused etcd is left alone.
        """
        if not replicas:
            raise InvalidArgument("replicas must not be empty")
        self.replicas = list(replicas)
        self.job = job
        self.etcd_endpoints = list(etcd_endpoints)
        self.owned_etcd = owned_etcd
        self.work_dir = work_dir
        self._owns_work_dir = owns_work_dir
        self._pool = ThreadPoolExecutor(len(self.replicas), thread_name_prefix="dtr-cluster")
        self._stopped = False
        _live.add(self)

    @classmethod
    def start(
        cls,
        *,
        replicas: int = 3,
        etcd_members: int = 1,
        etcd: RunningEtcd | str | Sequence[str] | None = None,
        job: str = "default",
        lease_ttl_s: int = 3,
        renew_deadline_s: float = 2.0,
        heartbeat_timeout_s: float = 30.0,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 60.0,
        ports: Sequence[int] | None = None,
        advertise_ports: Sequence[int] | None = None,
        work_dir: Path | None = None,
        route_etcd: Callable[[int, list[str]], list[str]] | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> LocalCluster:
        """Start etcd (unless ``etcd`` is given) and ``replicas`` replicas; wait until all serve.

        Replica ``i`` is ``replica-<i>`` on ``ports[i]`` (default: free
        loopback ports), logging to ``work_dir/replica-<i>.log`` (default: a
        temporary directory removed by ``stop()``). With ``advertise_ports``,
        replica ``i`` advertises ``127.0.0.1:advertise_ports[i]`` instead of
        its own address (a ``TcpProxy`` in front of it, say): workers given
        ``coordinators`` and the leader hints go there, while the probes here
        dial the replicas. ``route_etcd(i, endpoints)`` gives the etcd
        endpoints replica ``i`` dials (proxies of its own, so the nemesis can
        cut one replica off from etcd); by default all dial etcd itself.
        ``extra_args`` are more ``dtr coordinator`` flags; ``environment`` more
        environment for every replica (the chaos harness's planted bug).
        On any failure nothing started is left running, and the error carries
        the failing replica's log tail.
        """
        if replicas < 1:
            raise InvalidArgument(f"replicas must be at least 1; got {replicas}")
        chosen = list(ports) if ports is not None else pick_free_ports(replicas)
        if len(chosen) != replicas:
            raise InvalidArgument(f"ports must name {replicas} ports; got {len(chosen)}")
        advertised = _advertised_addresses(advertise_ports, replicas)
        options = [
            *("--job", validate_name("job", job), "--lease-ttl-s", str(lease_ttl_s)),
            *("--renew-deadline-s", str(renew_deadline_s)),
            *("--heartbeat-timeout-s", str(heartbeat_timeout_s), *extra_args),
        ]
        reused = _endpoints_of(etcd) if etcd is not None else None  # checked before starting
        deadline = time.monotonic() + startup_timeout_s
        owned: EtcdCluster | None = None
        if reused is None:
            owned = EtcdCluster.start(etcd_members, startup_timeout_s=startup_timeout_s)
            endpoints = owned.endpoints
        else:
            endpoints = reused
        root = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="dtr-up-"))

        try:
            dialled = [
                route_etcd(i, list(endpoints)) if route_etcd is not None else endpoints
                for i in range(replicas)
            ]
        except BaseException:
            if owned is not None:
                owned.stop()
            raise

        def replica_options(i: int) -> list[str]:
            return ["--etcd", ",".join(dialled[i]), *options]

        cluster = cls(
            [
                CoordinatorProcess(
                    f"replica-{i}",
                    port,
                    replica_options(i),
                    root / f"replica-{i}.log",
                    advertise=advertise,
                    environment=environment,
                )
                for i, (port, advertise) in enumerate(zip(chosen, advertised, strict=True))
            ],
            job=job,
            etcd_endpoints=endpoints,
            work_dir=root,
            owned_etcd=owned,
            owns_work_dir=work_dir is None,
        )
        cluster._launch(deadline)
        return cluster

    def _launch(self, deadline: float) -> None:
        """Start every replica and wait until all serve; on any failure, stop everything."""
        try:
            for process in self.replicas:
                process.start()
            self._wait(self._all_started, deadline - time.monotonic(), "every replica serving")
        except BaseException:
            self.stop()
            raise

    # --- addresses --------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """The replicas' own ``127.0.0.1:PORT`` listen addresses, in replica order."""
        return [r.address for r in self.replicas]

    @property
    def coordinators(self) -> str:
        """The advertised addresses comma-joined: what a worker is given (``DTR_COORDINATORS``).

        The same as ``endpoints`` unless the cluster started with
        ``advertise_ports``.
        """
        return ",".join(r.advertised_address for r in self.replicas)

    @property
    def etcd_urls(self) -> list[str]:
        """``http://HOST:PORT`` per etcd endpoint: the value of ``DTR_ETCD``."""
        return [f"http://{e}" for e in self.etcd_endpoints]

    def replica(self, replica_id: str) -> CoordinatorProcess:
        for process in self.replicas:
            if process.replica_id == replica_id:
                return process
        raise InvalidArgument(
            f"no replica {replica_id!r}; have {[r.replica_id for r in self.replicas]}"
        )

    # --- waiting ----------------------------------------------------------------

    def _wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``condition`` until it holds; ClusterError naming ``what`` at the deadline."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() >= deadline:
                states = "; ".join(r.describe() for r in self.replicas)
                raise ClusterError(
                    f"timed out after {timeout_s:.1f} s waiting for {what}: {states}"
                )
            time.sleep(_POLL_S)

    def _responsive(self) -> list[CoordinatorProcess]:
        """Replicas that can answer a probe: running and not paused."""
        return [r for r in self.replicas if r.is_alive() and not r.is_paused()]

    def _all_started(self) -> bool:
        for process in self.replicas:
            if not process.is_alive():
                raise ClusterError(
                    f"coordinator {process.describe()} before serving (log: {process.log_path})\n"
                    f"last log lines:\n{process.log_tail()}"
                )
        return all(self._pool.map(CoordinatorProcess.is_serving, self.replicas))

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until every running, unpaused replica reports overall health SERVING."""

        def ready() -> bool:
            live = self._responsive()
            if not live:
                raise ClusterError("no coordinator replica is running")
            return all(self._pool.map(CoordinatorProcess.is_serving, live))

        self._wait(ready, timeout_s, "every live replica serving")

    def leaders(self) -> list[CoordinatorProcess]:
        """The replicas reporting ``dtr.v1.Leader`` SERVING in one round of probes."""
        live = self._responsive()
        return [
            r
            for r, leads in zip(
                live, self._pool.map(CoordinatorProcess.is_leader, live), strict=True
            )
            if leads
        ]

    def leader(self, timeout_s: float = 30.0) -> CoordinatorProcess:
        """The leader, once exactly one replica reports leading."""
        return self._wait_leader(lambda _: True, timeout_s, "exactly one leader")

    def wait_new_leader(
        self, old: CoordinatorProcess, timeout_s: float = 30.0
    ) -> CoordinatorProcess:
        """The leader, once exactly one replica other than ``old`` reports leading."""
        return self._wait_leader(
            lambda r: r is not old, timeout_s, f"a leader other than {old.replica_id}"
        )

    def _wait_leader(
        self, accept: Callable[[CoordinatorProcess], bool], timeout_s: float, what: str
    ) -> CoordinatorProcess:
        found: list[CoordinatorProcess] = []

        def one_leader() -> bool:
            found[:] = self.leaders()
            return len(found) == 1 and accept(found[0])

        self._wait(one_leader, timeout_s, what)
        return found[0]

    def status(self, timeout_s: float = 5.0) -> coordinator_pb2.ClusterStatusResponse:
        """``ClusterStatus`` from the first live replica that answers."""
        errors: list[str] = []
        for process in self._responsive():
            try:
                return process.cluster_status(timeout_s)
            except ClusterError as err:
                errors.append(str(err))
        raise ClusterError(
            f"no replica answered ClusterStatus: {'; '.join(errors) or 'none running'}"
        )

    # --- stopping ---------------------------------------------------------------

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop replicas, then the etcd started here, then remove the temporary directory.

        Every replica gets SIGTERM at once (a leader revokes its lease, which
        nobody needs now, but no replica waits for another); what outlives
        ``timeout_s`` gets SIGKILL. Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout_s
        try:
            for process in self.replicas:
                process.request_stop()
            for process in self.replicas:
                process.wait_stopped(deadline - time.monotonic())
        finally:
            for process in self.replicas:
                process.kill()  # a no-op unless terminate() itself failed
                process.close()
            self._pool.shutdown(wait=True)
            if self.owned_etcd is not None:
                self.owned_etcd.stop()
            if self._owns_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
            _live.discard(self)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalCluster(job={self.job!r}, endpoints={self.endpoints!r})"


def _advertised_addresses(ports: Sequence[int] | None, replicas: int) -> list[str | None]:
    """Per replica, the ``127.0.0.1:PORT`` it advertises; None: its own address."""
    if ports is None:
        return [None] * replicas
    if len(ports) != replicas:
        raise InvalidArgument(f"advertise_ports must name {replicas} ports; got {len(ports)}")
    for port in ports:
        if not 0 < port < 65536:
            raise InvalidArgument(f"advertise_ports must be in [1, 65535]; got {port}")
    return [f"{LOOPBACK}:{port}" for port in ports]


def _endpoints_of(etcd: RunningEtcd | str | Sequence[str] | None) -> list[str]:
    """``HOST:PORT`` endpoints of an etcd given as a running one, a string or a list."""
    if etcd is None:
        raise InvalidArgument("etcd must be given when it is not started here")
    if isinstance(etcd, str):
        return parse_endpoints(etcd)
    if isinstance(etcd, Sequence):
        return parse_endpoints(list(etcd))
    return parse_endpoints(list(etcd.endpoints))


@atexit.register
def _stop_forgotten_clusters() -> None:
    """Stop clusters whose owner exited without ``stop()``: no orphan coordinators."""
    for cluster in list(_live):
        cluster.stop(timeout_s=5.0)
