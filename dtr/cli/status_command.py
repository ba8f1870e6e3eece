"""``dtr status``: what a job's coordinators know, as a table or one JSON object.

Two ways in. ``--coordinator`` (or ``DTR_COORDINATORS``) names replicas to
ask directly, tried in order. ``--etcd`` (or ``DTR_ETCD``) finds them first:
every replica's election candidate key holds its address, and the one with
the lowest create revision is the leader, so it is asked first. Any replica
answers ``ClusterStatus`` (a read); a follower's answer lacks heartbeat ages,
so when a follower names a leader we ask the leader too and keep the
follower's answer only if the leader does not reply.

When no replica answers, the error is one line listing what each said.
``--watch S`` asks again every S seconds until Ctrl-C, showing a failed ask
instead of exiting (a failover is when one watches), and at once when a
replica announces a new leader (``WatchLeader``, the push workers use too):
the redraw then starts with a ``leader changed`` line.
gRPC and the etcd client are imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dtr.errors import CoordinatorUnavailable, DtrError, InvalidArgument, StoreError

from .options import (
    ENV_NOTE,
    Commands,
    EnvOption,
    Parser,
    add_debug,
    add_options,
    host_port_list,
    positive_float,
)
from .signals import signals_set
from .status_format import render_status, status_to_dict

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from dtr.proto.coordinator_pb2 import ClusterStatusResponse
    from dtr.security import ClientSecurity

DEFAULT_JOB = "default"
#: How messages about the etcd credentials name them (dtr.etcd_auth).
ETCD_FLAG_NAMES = {
    "ca": "--etcd-ca",
    "cert": "--etcd-cert",
    "key": "--etcd-key",
    "user": "--etcd-user",
    "password_file": "--etcd-password-file",
}
_CALLER_ID = "dtr-cli"

_STATUS_OPTIONS = (
    EnvOption(
        "--job",
        "DTR_JOB",
        None,
        str,
        "NAME",
        f"the job to show (default: whatever the coordinator serves; with --etcd, {DEFAULT_JOB!r})",
    ),
    EnvOption(
        "--tls-ca",
        "DTR_TLS_CA",
        None,
        str,
        "PATH",
        "CA certificate that signed the coordinators' certificates (turns TLS on)",
    ),
    EnvOption(
        "--tls-cert",
        "DTR_TLS_CERT",
        None,
        str,
        "PATH",
        "client certificate, for coordinators that require mutual TLS (with --tls-key)",
    ),
    EnvOption("--tls-key", "DTR_TLS_KEY", None, str, "PATH", "the client certificate's key"),
    EnvOption(
        "--token-file",
        "DTR_TOKEN_FILE",
        None,
        str,
        "PATH",
        "file holding an admin bearer token (ClusterStatus is an admin call)",
    ),
    EnvOption("--etcd-ca", "DTR_ETCD_CA", None, str, "PATH", "with --etcd: trust this CA (TLS)"),
    EnvOption(
        "--etcd-cert",
        "DTR_ETCD_CERT",
        None,
        str,
        "PATH",
        "with --etcd: client certificate for etcd (with --etcd-key)",
    ),
    EnvOption("--etcd-key", "DTR_ETCD_KEY", None, str, "PATH", "the key of --etcd-cert (0600)"),
    EnvOption(
        "--etcd-user", "DTR_ETCD_USER", None, str, "NAME", "with --etcd: log in as this user"
    ),
    EnvOption(
        "--etcd-password-file",
        "DTR_ETCD_PASSWORD_FILE",
        None,
        str,
        "PATH",
        "the etcd user's password, alone on one line (mode 0600)",
    ),
    EnvOption(
        "--timeout-s",
        "DTR_STATUS_TIMEOUT_S",
        5.0,
        positive_float,
        "S",
        "deadline of each call to etcd or to one coordinator",
    ),
)


def add_status_command(commands: Commands[Parser]) -> None:
    parser = commands.add_parser(
        "status",
        help="show a job's leader, replicas, workers, datasets and latest checkpoint",
        description="Ask a job's coordinators for its state. Exit 1 when none answers.",
        epilog=f"{ENV_NOTE} Without either flag, DTR_COORDINATORS is used, else DTR_ETCD.",
    )
    add_debug(parser, default=argparse.SUPPRESS)
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--coordinator",
        type=host_port_list,
        metavar="ADDR[,ADDR...]",
        help="coordinator replicas to ask, tried in order [env DTR_COORDINATORS]",
    )
    target.add_argument(
        "--etcd",
        metavar="URL[,URL...]",
        help="find the job's replicas in etcd instead [env DTR_ETCD]",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--watch",
        type=positive_float,
        metavar="S",
        default=None,
        help="ask again every S seconds until Ctrl-C (the screen is redrawn on a terminal); "
        "a failed ask is shown and the watch goes on",
    )
    add_options(parser, _STATUS_OPTIONS)
    parser.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    """Find the replicas, ask them, print what the first one to answer says."""
    coordinators, etcd = resolve_target(args.coordinator, args.etcd, os.environ)
    if args.watch is not None:
        return _watch(args, coordinators, etcd)
    print(_status_text(args, coordinators, etcd), flush=True)
    return 0


def _security(args: argparse.Namespace) -> ClientSecurity:
    """TLS files and token from the flags (or DTR_TLS_* / DTR_TOKEN_FILE); plaintext without."""
    from dtr.security import TlsFiles, client_security, read_token_file

    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        tls = TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    token = read_token_file(args.token_file) if args.token_file else None
    return client_security(tls, token)


def _status_text(args: argparse.Namespace, coordinators: list[str], etcd: str | None) -> str:
    if etcd is not None:
        job = args.job or DEFAULT_JOB
        addresses = replicas_from_etcd(etcd, job, args.timeout_s, args)
    else:
        job = args.job or ""
        addresses = coordinators
    status = status_to_dict(ask_cluster_status(addresses, job, args.timeout_s, _security(args)))
    return json.dumps(status, indent=2) if args.json else render_status(status)


class _Stop(threading.Event):
    """The stop signal's event, which also wakes the redraw wait (``signals_set`` sets it)."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def set(self) -> None:
        super().set()
        self._wake.set()


def _watch(args: argparse.Namespace, coordinators: list[str], etcd: str | None) -> int:
    """Redraw every ``--watch`` seconds until Ctrl-C or SIGTERM; a failed ask is shown, not fatal.

    A watch is most useful during a failover, exactly when an ask can fail;
    news of a new leader redraws at once.
    """
    wake = threading.Event()
    stop = _Stop(wake)
    clear = "\x1b[H\x1b[J" if sys.stdout.isatty() and not args.json else ""
    news = _leader_news(args, coordinators, etcd, wake)
    try:
        with signals_set(stop):
            while not stop.is_set():
                wake.clear()
                try:
                    text = _status_text(args, coordinators, etcd)
                except DtrError as err:
                    text = f"dtr status: {err}"
                stamp = time.strftime("%H:%M:%S")
                changed = news.take_change() if news is not None else None
                if changed and not args.json:
                    text = f"leader changed: {changed}\n{text}"
                print(f"{clear}{text}" if args.json else f"{clear}[{stamp}] {text}", flush=True)
                wake.wait(args.watch)
    finally:
        if news is not None:
            news.close()
    return 0


def _leader_news(
    args: argparse.Namespace, coordinators: list[str], etcd: str | None, wake: threading.Event
) -> _LeaderNewsFeed | None:
    """The leader watch of ``--watch`` (None when the replicas cannot be listed now)."""
    if etcd is None:
        return _LeaderNewsFeed(coordinators, args.job or "", _security(args), wake)
    try:
        addresses = replicas_from_etcd(etcd, args.job or DEFAULT_JOB, args.timeout_s, args)
    except DtrError as err:
        _log.info("no leader news: %s; redrawing every %g s only", err, args.watch)
        return None
    return _LeaderNewsFeed(addresses, args.job or DEFAULT_JOB, _security(args), wake)


class _LeaderNewsFeed:
    """A ``dtr.worker.leader_watch.LeaderWatch`` client of its own: news sets ``wake``.

    It only triggers a redraw (the redraw asks ``ClusterStatus`` as always),
    so the announced address is never dialled from here.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        job: str,
        security: ClientSecurity,
        wake: threading.Event,
    ) -> None:
        from dtr.worker.client import CHANNEL_OPTIONS
        from dtr.worker.leader_watch import WATCH_KEEPALIVE_OPTIONS, LeaderWatch

        self.addresses = tuple(addresses)
        self.caller_id = _CALLER_ID
        self.term = 0
        self.leader_address: str | None = None
        self._job = job
        self._security = security
        self._options = CHANNEL_OPTIONS + WATCH_KEEPALIVE_OPTIONS
        self._wake = wake
        self._lock = threading.Lock()
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, Any] = {}
        self._change: str | None = None
        self._closed = False
        self._watch = LeaderWatch(self)
        self._watch.start()

    def watch_stub(self, address: str) -> Any:
        from dtr.proto import coordinator_pb2_grpc

        with self._lock:
            if self._closed:
                raise InvalidArgument("the leader news of dtr status is closed")
            if address not in self._stubs:
                channel = self._security.channel(address, options=self._options)
                self._channels[address] = channel
                self._stubs[address] = coordinator_pb2_grpc.CoordinatorStub(channel)
            return self._stubs[address]

    def header(self, request_id: str) -> Any:
        from dtr.proto import coordinator_pb2

        return coordinator_pb2.RequestHeader(
            job=self._job, caller_id=_CALLER_ID, client_request_id=request_id
        )

    def note_news(self, replica: str, response: Any) -> None:
        """A newer term than the last one seen: remember the line and wake the redraw."""
        del replica
        if not response.HasField("leader") or response.leader.term <= self.term:
            return
        first = self.term == 0
        leader = response.leader
        self.term, self.leader_address = leader.term, leader.address
        if first:  # what was leading when the watch began is not a change
            return
        with self._lock:
            self._change = f"{leader.id} at {leader.address} (term {leader.term})"
        self._wake.set()

    def take_change(self) -> str | None:
        with self._lock:
            change, self._change = self._change, None
            return change

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._watch.stop()
        with self._lock:
            channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for channel in channels:
            channel.close()


def resolve_target(
    coordinator: list[str] | None, etcd: str | None, environ: Mapping[str, str]
) -> tuple[list[str], str | None]:
    """(coordinator addresses, etcd endpoints): a flag, else DTR_COORDINATORS, else DTR_ETCD."""
    if coordinator is not None:
        return coordinator, None
    if etcd is not None:
        return [], etcd
    raw = environ.get("DTR_COORDINATORS", "")
    if raw:
        try:
            return host_port_list(raw), None
        except argparse.ArgumentTypeError as err:
            raise InvalidArgument(f"DTR_COORDINATORS={raw!r}: {err}") from err
    if environ.get("DTR_ETCD", ""):
        return [], environ["DTR_ETCD"]
    raise InvalidArgument("--coordinator or --etcd is required (or set DTR_COORDINATORS/DTR_ETCD)")


def replicas_from_etcd(
    etcd: str, job: str, timeout_s: float, args: argparse.Namespace | None = None
) -> list[str]:
    """Addresses of the job's live replicas, leader (lowest create revision) first."""
    from dtr.etcd_auth import load_etcd_security
    from dtr.keys import JobKeys
    from dtr.store import EtcdStore

    tls, credentials = load_etcd_security(
        ca=getattr(args, "etcd_ca", None),
        cert=getattr(args, "etcd_cert", None),
        key=getattr(args, "etcd_key", None),
        user=getattr(args, "etcd_user", None),
        password_file=getattr(args, "etcd_password_file", None),
        names=ETCD_FLAG_NAMES,
    )
    try:
        keys = JobKeys(job)
    except InvalidArgument as err:
        raise InvalidArgument(f"--job: {err}") from err
    try:
        with EtcdStore(etcd, timeout_s=timeout_s, tls=tls, credentials=credentials) as store:
            snapshot = store.get_prefix(keys.election_prefix)
    except InvalidArgument as err:
        raise InvalidArgument(f"--etcd: {err}") from err
    except StoreError as err:
        raise CoordinatorUnavailable(f"cannot read job {job!r} from etcd at {etcd}: {err}") from err
    addresses: list[str] = []
    for kv in sorted(snapshot.kvs, key=lambda kv: kv.create_revision):
        address = _candidate_address(kv.value)
        if address is not None and address not in addresses:
            addresses.append(address)
    if not addresses:
        raise CoordinatorUnavailable(f"no coordinator of job {job!r} is registered in {etcd}")
    return addresses


def _candidate_address(value: bytes) -> str | None:
    """The ``address`` of an election candidate's JSON value; None if it has none."""
    try:
        record = json.loads(value)
    except ValueError:
        return None
    address = record.get("address") if isinstance(record, dict) else None
    return address if isinstance(address, str) and address else None


def ask_cluster_status(
    addresses: Sequence[str],
    job: str,
    timeout_s: float,
    security: ClientSecurity | None = None,
) -> ClusterStatusResponse:
    """The first answer, preferring the leader's when a follower names one.

    The named leader is asked only where the worker client would follow the
    same hint (``dtr.worker.client.hint_allowed``); otherwise the follower's
    own answer is shown, so a replica advertising a stray address never
    receives this command's token.
    """
    from dtr.security import client_security
    from dtr.worker.client import hint_allowed

    security = security or client_security()
    failures: list[str] = []
    for address in addresses:
        response = _try_one(address, job, timeout_s, failures, security)
        if response is None:
            continue
        leader = response.header.leader_address
        if response.header.is_leader or not leader or leader == address:
            return response
        if not hint_allowed(leader, addresses, tls=security.credentials is not None):
            _log.warning(
                "not asking the hinted leader %r: it is not among the coordinators asked "
                "and TLS is off; showing %s's answer",
                leader,
                address,
            )
            return response
        return _try_one(leader, job, timeout_s, failures, security) or response
    raise CoordinatorUnavailable(f"no coordinator answered ClusterStatus: {'; '.join(failures)}")


def _try_one(
    address: str, job: str, timeout_s: float, failures: list[str], security: ClientSecurity
) -> ClusterStatusResponse | None:
    """One ClusterStatus call; a failure is appended to ``failures`` as one short phrase."""
    import grpc

    from dtr.proto import coordinator_pb2, coordinator_pb2_grpc

    request = coordinator_pb2.ClusterStatusRequest(
        header=coordinator_pb2.RequestHeader(job=job, caller_id=_CALLER_ID)
    )
    try:
        with security.channel(address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            response: ClusterStatusResponse = stub.ClusterStatus(request, timeout=timeout_s)
            return response
    except grpc.RpcError as err:
        code = err.code().name if callable(getattr(err, "code", None)) else "ERROR"
        details = err.details() if callable(getattr(err, "details", None)) else str(err)
        first = (details or "").strip().splitlines()[:1]
        failures.append(f"{address}: {code}" + (f" ({first[0]})" if first else ""))
        return None
