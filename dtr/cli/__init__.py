"""The ``dtr`` command: the composition root that dispatches to every part (DESIGN §2-3).

One module per command (``etcd_command``, ``coordinator_command``,
``up_command``, ``status_command``, ``chaos_command``, ``certs_command``,
``run_command``, ...),
each with an ``add_<name>_command`` that declares its options and a
``run_<name>`` that does the work. Heavy modules (gRPC, the etcd launcher
and client, the coordinator, the chaos launcher, cryptography) are imported
inside the ``run_*`` functions only, so ``import dtr.cli`` and ``dtr --help``
stay light; tests/unit/test_import_boundaries.py
checks both the rule and the result.

Options resolve as: command-line flag, else the ``DTR_*`` environment
variable named in the option's help, else the default (``options.py``).

Errors: anything dtr raises on purpose (``DtrError``) or the OS refuses
(``OSError``) becomes one line on stderr and exit status 1; usage errors exit
2, also on one line. ``--debug`` (or ``DTR_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from dtr.errors import DtrError

from .certs_command import add_certs_command
from .chaos_command import add_chaos_command
from .config_file import CONFIG_ENV, config_values, load_config
from .coordinator_command import add_coordinator_command
from .demo_command import add_demo_command
from .etcd_command import add_etcd_command
from .options import ENV_NOTE, TRUTHY, Parser, add_debug, apply_environment
from .queue_command import add_queue_command
from .run_command import add_run_command, separate
from .status_command import add_status_command
from .up_command import add_up_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full ``dtr`` parser; one ``add_<name>_command`` per subcommand."""
    parser = Parser(
        prog="dtr",
        description="dtr: a distributed training runtime (coordinators on etcd, "
        "shard assignment, barriers, checkpoints).",
        epilog=ENV_NOTE,
    )
    add_debug(parser, default=False)
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help=f"TOML file with option values [env {CONFIG_ENV}]",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_etcd_command(commands)
    add_coordinator_command(commands)
    add_up_command(commands)
    add_status_command(commands)
    add_chaos_command(commands)
    add_demo_command(commands)
    add_certs_command(commands)
    add_queue_command(commands)
    add_run_command(commands)
    return parser


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dtr``; returns the exit status (the console script exits with it)."""
    args = build_parser().parse_args(separate(sys.argv[1:] if argv is None else argv))
    debug = bool(getattr(args, "debug", False))
    debug = debug or os.environ.get("DTR_DEBUG", "").lower() in TRUTHY
    try:
        config_path = args.config or os.environ.get(CONFIG_ENV, "")
        known = [o.flag.lstrip("-") for o in getattr(args, "env_options", [])]
        config = config_values(load_config(config_path), args.command, known, config_path)
        apply_environment(args, os.environ, config, config_path)
        return int(args.run(args))
    except (DtrError, OSError) as err:
        if debug:
            traceback.print_exc()
        print(f"dtr {args.command}: error: {_first_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
