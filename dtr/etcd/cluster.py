"""Local etcd clusters of real processes, for tests, the chaos harness and ``dtr up``.

``EtcdCluster.start(3)`` picks a safe binary, free loopback ports and a data
directory per member, starts every member and returns once each answers
``/health`` with ``true`` -- or raises ``EtcdError`` carrying the log tail of
the member that failed. Member-level controls (stop, SIGKILL, restart on the
same ports and data, SIGSTOP/SIGCONT) exist for fault injection.

A cluster signals only the processes it started, and stops them at exit if
its owner forgot (a safety net, not a substitute for ``with`` or ``stop()``).
"""

from __future__ import annotations

import atexit
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from dtr.errors import EtcdError, InvalidArgument

from .discovery import select_etcd_binary
from .member import EtcdMember, EtcdTimings, EtcdTls, wait_until
from .ports import LOOPBACK, pick_free_ports

_PORT_ATTEMPTS = 3
_SETTLE_S = 2.0  # longest wait for a member to see departed peers as gone
# Strong references on purpose: a cluster its owner dropped without stop()
# still has running processes, and the exit hook must still find it.
_live: set[EtcdCluster] = set()


class EtcdCluster:
    """Running etcd members that form one cluster, and the means to hurt them."""

    def __init__(
        self,
        members: list[EtcdMember],
        *,
        binary: str,
        version: str,
        token: str | None = None,
        timings: EtcdTimings | None = None,
        owned_root: Path | None = None,
    ) -> None:
        """Describe a cluster without starting it; ``start``/``start_single`` start one.

        ``owned_root`` is a directory this cluster created and removes on stop.
        """
        if not members:
            raise InvalidArgument("members must not be empty")
        self._members = members
        self.binary = binary
        self.version = version
        self.token = token or f"dtr-{uuid.uuid4().hex[:12]}"
        self.timings = timings or EtcdTimings()
        self._owned_root = owned_root
        self._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)

    # --- starting --------------------------------------------------------

    @classmethod
    def start(
        cls,
        members: int = 1,
        *,
        data_root: Path | None = None,
        binary: str | None = None,
        startup_timeout_s: float = 30.0,
        timings: EtcdTimings | None = None,
        tls: EtcdTls | None = None,
        extra_args: Sequence[str] = (),
    ) -> EtcdCluster:
        """Start ``members`` members on free 127.0.0.1 ports and wait until all are healthy.

        Member ``i`` is named ``etcd{i}`` and lives in ``data_root/etcd{i}``;
        without ``data_root`` a temporary directory is used and removed on
        ``stop()``. A port taken between picking and binding is retried with
        new ports within the same ``startup_timeout_s``. ``tls``: TLS client
        ports; ``extra_args``: more etcd flags (``--auth-token-ttl=2``, say).
        """
        if members < 1:
            raise InvalidArgument(f"members must be at least 1, got {members}")
        path, version = select_etcd_binary(members, binary=binary)
        owned = None if data_root is not None else Path(tempfile.mkdtemp(prefix="dtr-etcd-"))
        root = Path(data_root) if data_root is not None else owned
        assert root is not None
        deadline = time.monotonic() + startup_timeout_s
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                specs = _members_on_free_ports(members, root, tls, tuple(extra_args))
                cluster = cls(
                    specs, binary=path, version=version, timings=timings, owned_root=owned
                )
                if cluster._launch_unless_port_taken(deadline, last=attempt == _PORT_ATTEMPTS):
                    return cluster
            raise AssertionError("the last attempt returns or raises")
        except BaseException:
            if owned is not None:
                shutil.rmtree(owned, ignore_errors=True)
            raise

    @classmethod
    def start_single(
        cls,
        *,
        member_dir: Path,
        client_port: int,
        peer_port: int,
        host: str = LOOPBACK,
        binary: str | None = None,
        startup_timeout_s: float = 30.0,
        timings: EtcdTimings | None = None,
    ) -> EtcdCluster:
        """One member on fixed ports in ``member_dir``, kept on stop (``dtr etcd``).

        The client port listens on ``host``; the peer port always on loopback,
        since a single member has no peers to reach it.
        """
        path, version = select_etcd_binary(1, binary=binary)
        member = EtcdMember("etcd0", client_port, peer_port, Path(member_dir), host=host)
        cluster = cls([member], binary=path, version=version, timings=timings)
        cluster._launch(time.monotonic() + startup_timeout_s)
        return cluster

    def _launch_unless_port_taken(self, deadline: float, *, last: bool) -> bool:
        """Launch; False (and no trace left) when a port was taken and ``last`` is False."""
        created = [m.member_dir for m in self._members if not m.member_dir.exists()]
        try:
            self._launch(deadline)
        except EtcdError as err:
            if last or "address already in use" not in str(err):
                raise
            for directory in created:  # the next attempt starts these members afresh
                shutil.rmtree(directory, ignore_errors=True)
            return False
        return True

    def _argv(self, member: EtcdMember) -> list[str]:
        return member.argv(self.binary, self._initial_cluster, self.token, self.timings)

    def _launch(self, deadline: float) -> None:
        """Spawn every member and wait for all; on any failure none is left running."""
        _live.add(self)
        try:
            for member in self._members:
                member.spawn(self._argv(member))
            self._wait_members(self._members, deadline - time.monotonic())
        except BaseException:
            for member in self._members:
                member.kill()
            _live.discard(self)
            raise

    def _wait_members(self, members: list[EtcdMember], timeout_s: float) -> None:
        """Return when every member is healthy; raise as soon as one has exited.

        Members are probed in parallel: during an election etcd holds a
        ``/health`` request for up to a second, and probing one member after
        another would add those seconds up.
        """
        deadline = time.monotonic() + timeout_s
        pending = list(members)

        def probe(member: EtcdMember) -> bool:
            if not member.is_running():
                code = member.process.returncode if member.process else None
                raise member.startup_error(f"exited with code {code} before becoming healthy")
            return member.is_healthy(timeout_s=min(1.0, max(deadline - time.monotonic(), 0.1)))

        with ThreadPoolExecutor(max_workers=len(members), thread_name_prefix="etcd-health") as pool:

            def all_healthy() -> bool:
                healthy = list(pool.map(probe, pending))
                pending[:] = [m for m, ok in zip(pending, healthy, strict=True) if not ok]
                return not pending

            if not wait_until(all_healthy, deadline):
                raise pending[0].startup_error(f"was not healthy within {timeout_s:.1f}s")

    # --- what clients need -----------------------------------------------

    @property
    def members(self) -> list[EtcdMember]:
        """The members in index order (the list itself: do not modify it)."""
        return self._members

    @property
    def endpoints(self) -> list[str]:
        """``["127.0.0.1:23790", ...]``: what gRPC clients dial."""
        return [m.endpoint for m in self._members]

    @property
    def client_urls(self) -> list[str]:
        """``["http://127.0.0.1:23790", ...]``: for ``--etcd`` / ``DTR_ETCD``."""
        return [m.client_url for m in self._members]

    def member(self, index: int) -> EtcdMember:
        """Member ``index``, with an error that names the valid range."""
        if not 0 <= index < len(self._members):
            raise InvalidArgument(f"member index {index} out of range 0..{len(self._members) - 1}")
        return self._members[index]

    # --- health ----------------------------------------------------------

    def is_member_healthy(self, index: int) -> bool:
        """Whether member ``index`` runs and answers ``/health`` with true now."""
        return self.member(index).is_healthy()

    def is_member_leader(self, index: int) -> bool:
        """Whether member ``index`` is etcd's raft leader now (for leader-change tests)."""
        return self.member(index).is_raft_leader()

    def is_healthy(self) -> bool:
        """Whether every member is healthy now."""
        return all(m.is_healthy() for m in self._members)

    def wait_healthy(self, timeout_s: float = 30.0, indexes: list[int] | None = None) -> None:
        """Wait until the given members (default: all) are healthy, else raise EtcdError.

        A member that is not running fails the wait at once: it cannot heal.
        """
        chosen = [self.member(i) for i in indexes] if indexes is not None else self._members
        self._wait_members(chosen, timeout_s)

    # --- faults ----------------------------------------------------------

    def stop_member(self, index: int, timeout_s: float = 10.0) -> None:
        """Stop member ``index`` gracefully (SIGTERM, then SIGKILL after ``timeout_s``)."""
        self._stop_one(self.member(index), time.monotonic() + timeout_s)

    def _stop_one(self, member: EtcdMember, deadline: float) -> None:
        """SIGTERM ``member`` once it has noticed the peers that are already gone.

        A leader stopping hands leadership to its longest-connected peer. If
        that peer exited a moment ago but still counts as connected, the
        hand-over waits out etcd's request timeout (5 s + 2 elections) before
        the member exits; waiting until the peer counts as gone costs
        milliseconds.
        """
        if member.is_running():
            others = sum(1 for m in self._members if m is not member and m.is_running())

            def settled() -> bool:
                active = member.active_peers()
                return active is None or active <= others

            wait_until(settled, min(deadline, time.monotonic() + _SETTLE_S))
        member.stop(deadline - time.monotonic())

    def kill_member(self, index: int) -> None:
        """SIGKILL member ``index``: a crash, with no chance to flush or leave."""
        self.member(index).kill()

    def pause_member(self, index: int) -> None:
        """SIGSTOP member ``index``: alive to the kernel, silent to its peers."""
        if not self.member(index).send_signal(signal.SIGSTOP):
            raise InvalidArgument(f"etcd member {index} is not running")

    def resume_member(self, index: int) -> None:
        """SIGCONT a paused member."""
        if not self.member(index).send_signal(signal.SIGCONT):
            raise InvalidArgument(f"etcd member {index} is not running")

    def start_member(
        self, index: int, *, timeout_s: float = 30.0, wait_healthy: bool = True
    ) -> None:
        """Restart member ``index`` on its old ports and data, by default until healthy.

        Without quorum a restarted member never turns healthy: pass
        ``wait_healthy=False`` to restart several before waiting. A member that
        is still starting when the wait times out is left running.
        """
        member = self.member(index)
        member.spawn(self._argv(member))
        _live.add(self)
        if wait_healthy:
            self._wait_members([member], timeout_s)

    # --- stopping --------------------------------------------------------

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every member within ``timeout_s`` in total; SIGKILL what is left.

        Members get SIGTERM one at a time (see ``_stop_one``): terminated
        together, a leader keeps trying to hand leadership to peers that are
        leaving too, and a stop takes seconds instead of milliseconds.
        Idempotent. Removes the data directory when this cluster created it.
        """
        deadline = time.monotonic() + timeout_s
        for member in self._members:
            self._stop_one(member, deadline)
        _live.discard(self)
        if self._owned_root is not None:
            shutil.rmtree(self._owned_root, ignore_errors=True)
            self._owned_root = None

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EtcdCluster(version={self.version!r}, endpoints={self.endpoints!r})"


def _members_on_free_ports(
    count: int, root: Path, tls: EtcdTls | None = None, extra_args: tuple[str, ...] = ()
) -> list[EtcdMember]:
    """Members ``etcd0..`` in ``root/etcd<i>``, each with a fresh client and peer port."""
    ports = pick_free_ports(2 * count)
    return [
        EtcdMember(
            f"etcd{i}",
            ports[2 * i],
            ports[2 * i + 1],
            root / f"etcd{i}",
            tls=tls,
            extra_args=extra_args,
        )
        for i in range(count)
    ]


@atexit.register
def _stop_forgotten_clusters() -> None:
    """Stop clusters whose owner exited without ``stop()``: no orphan etcd."""
    for cluster in list(_live):
        cluster.stop(timeout_s=5.0)
