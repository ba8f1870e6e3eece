"""``dtr run``: torchrun on dtr's rendezvous, with dtr's settings filled in.

``dtr run --nnodes 2 --nproc-per-node 8 train.py --lr 3e-4`` is
``torchrun --rdzv-backend=dtr --rdzv-endpoint=$DTR_COORDINATORS
--rdzv-id=<job> --nnodes 2 --nproc-per-node 8 train.py --lr 3e-4`` with the
job, TLS files and token handed to the rendezvous backend through its
``DTR_*`` environment (``dtr.worker.rendezvous_backend`` reads them). dtr's
own options come first; from the first token that is not one of them, every
argument is torchrun's (and after the script, the script's), passed through
untouched, so a script flag that shares a name with a dtr option is never
taken. torchrun's parser reads them once here only to refuse what cannot
work (another rendezvous backend or endpoint, ``--standalone``, no script);
then this process becomes torchrun (``exec``): its exit status and signals
are torchrun's. ``torchrun`` run directly keeps working.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from dtr.errors import InvalidArgument

from .options import ENV_NOTE, Commands, EnvOption, Parser, add_debug, add_options

_RUN_OPTIONS = (
    EnvOption(
        "--coordinators",
        "DTR_COORDINATORS",
        None,
        str,
        "HOST:PORT,...",
        "the coordinator replicas (torchrun's --rdzv-endpoint)",
        True,
    ),
    EnvOption(
        "--job",
        "DTR_JOB",
        "default",
        str,
        "NAME",
        "the dtr job whose coordinators hold the rendezvous; also the default --rdzv-id",
    ),
    EnvOption("--tls-ca", "DTR_TLS_CA", None, str, "PATH", "CA of the coordinators (TLS on)"),
    EnvOption("--tls-cert", "DTR_TLS_CERT", None, str, "PATH", "client certificate (mutual TLS)"),
    EnvOption("--tls-key", "DTR_TLS_KEY", None, str, "PATH", "the client certificate's key"),
    EnvOption(
        "--token-file", "DTR_TOKEN_FILE", None, str, "PATH", "file holding a worker bearer token"
    ),
)
#: What the rendezvous backend reads from the environment: TLS files and the token.
_CLIENT_SETTINGS = _RUN_OPTIONS[2:]
#: dtr run's own flags, by whether they take a value (``--debug`` and help do not).
_OWN_FLAGS = {option.flag: True for option in _RUN_OPTIONS} | {
    "--debug": False,
    "-h": False,
    "--help": False,
}
#: torchrun's defaults for what ``dtr run`` fills in (``torch.distributed.run``).
_TORCHRUN_DEFAULTS = {"rdzv_backend": "static", "rdzv_endpoint": "", "rdzv_id": "none"}


def add_run_command(commands: Commands[Parser]) -> None:
    parser = commands.add_parser(
        "run",
        help="torchrun on dtr's rendezvous: dtr's options, then torchrun's, then the script",
        description="Run torchrun with --rdzv-backend=dtr, the coordinators as its endpoint, "
        "the job as its run id (unless --rdzv-id is given) and dtr's TLS and token settings. "
        "Every argument after dtr's own options goes to torchrun unchanged.",
        epilog=f"{ENV_NOTE} Example: dtr run --job llama --nnodes 2 --nproc-per-node 8 "
        "train.py --lr 3e-4",
    )
    add_debug(parser, default=argparse.SUPPRESS)
    add_options(parser, _RUN_OPTIONS)
    parser.add_argument(
        "torchrun_args",
        nargs=argparse.REMAINDER,
        metavar="TORCHRUN_ARGS",
        help="torchrun's options, the training script and its arguments",
    )
    parser.set_defaults(run=run_run)


def separate(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--`` put where ``dtr run``'s own options end (other commands: as is).

    argparse would otherwise take torchrun's flags for unknown dtr options.
    """
    tokens = list(argv)
    at = _command_index(tokens)
    if at is None or tokens[at] != "run":
        return tokens
    i = at + 1
    while i < len(tokens):
        token = tokens[i]
        flag = token.split("=", 1)[0]
        if token == "--" or flag not in _OWN_FLAGS:
            break
        i += 1 if "=" in token or not _OWN_FLAGS[flag] else 2
    if i < len(tokens) and tokens[i] != "--":
        tokens.insert(i, "--")
    return tokens


def _command_index(tokens: list[str]) -> int | None:
    """Where the command is, after ``dtr``'s global options (``--debug``, ``--config``)."""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--config":
            i += 2
        elif token == "--debug" or token.startswith("--config="):
            i += 1
        else:
            return i
    return None


def torchrun_command(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The torchrun command line and environment for ``args``; refuses what cannot work."""
    from dtr.worker.client import parse_coordinators

    passed = list(args.torchrun_args)
    if passed[:1] == ["--"]:
        passed = passed[1:]
    coordinators = ",".join(parse_coordinators(args.coordinators))
    given = _torchrun_parse(passed)
    for name, flag in (("rdzv_backend", "--rdzv-backend"), ("rdzv_endpoint", "--rdzv-endpoint")):
        value = getattr(given, name)
        if value not in (_TORCHRUN_DEFAULTS[name], "dtr", coordinators):
            raise InvalidArgument(
                f"{flag}={value}: dtr run sets {flag} itself (dtr, {coordinators}); "
                "run torchrun directly for another rendezvous"
            )
    if given.standalone:
        raise InvalidArgument(
            "--standalone: torchrun's single-node rendezvous, not dtr's; leave it out "
            "(dtr run --nnodes 1 ... is the single-node form)"
        )
    command = [sys.executable, "-m", "torch.distributed.run"]
    command += ["--rdzv-backend=dtr", f"--rdzv-endpoint={coordinators}"]
    if given.rdzv_id == _TORCHRUN_DEFAULTS["rdzv_id"]:
        command.append(f"--rdzv-id={args.job}")
    env = dict(environ)
    env["DTR_JOB"] = args.job
    env["DTR_COORDINATORS"] = coordinators  # the ranks' Worker() reads it, --coordinators or not
    for option in _CLIENT_SETTINGS:
        value = getattr(args, option.dest)
        if value is not None:
            env[option.env] = str(value)
    return [*command, *passed], env


def _torchrun_parse(passed: list[str]) -> argparse.Namespace:
    """torchrun's own reading of ``passed``; a usage error becomes ``InvalidArgument``."""
    try:
        from torch.distributed.run import get_args_parser
    except ImportError as err:
        raise InvalidArgument(
            f"dtr run needs PyTorch (torch.distributed.run): {err}; install torch"
        ) from None
    if not passed:
        raise InvalidArgument("give torchrun's options and the training script: dtr run ... X.py")
    parser = get_args_parser()
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # its usage text, for our one line
            given, unknown = parser.parse_known_args(passed)
    except SystemExit:
        given, unknown = None, said.getvalue().strip().splitlines()[-1:]
    if given is None or unknown or not given.training_script:
        raise InvalidArgument(
            f"torchrun's arguments {' '.join(passed)!r}: no training script, or an option "
            f"torchrun does not know before it ({' '.join(unknown)})"
        )
    return given


def run_run(args: argparse.Namespace) -> NoReturn:
    command, env = torchrun_command(args, os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)  # this process is torchrun from here on
    raise AssertionError("os.execve returned")  # pragma: no cover
