"""``dtr demo``: the whole job on one machine, with a leader crash and a worker crash.

etcd, 3 coordinator replicas and ``--workers`` training processes (a small
MLP on synthetic data, with ``ShardSampler`` and ``CheckpointManager``);
the leader is killed at about 30% of the run and a worker at about 60% (it
restarts and resumes from the latest complete checkpoint). Live progress
while it runs, a summary table at the end, a loss-curve picture with the
faults marked, and exit status 0 only if training finished with every
invariant of DESIGN §5 holding (the chaos checkers decide). It is a chaos run
with a fixed plan (``dtr.chaos.demo``).

Everything that can be checked before starting is checked first, so bad
input costs one line and starts nothing: the step and worker counts, a
writable directory for the picture, an etcd binary, PyTorch, free ports.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
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
    positive_int,
)
from .signals import stop_signals_interrupt
from .up_command import replica_ports

if TYPE_CHECKING:
    from dtr.chaos.demo import DemoSummary
    from dtr.chaos.runner import RunResult
    from dtr.chaos.scenario import Scenario, ScheduledFault

PICTURE = "dtr-demo-loss.svg"
_DEMO_OPTIONS = (
    EnvOption("--steps", "DTR_DEMO_STEPS", 1500, positive_int, "N", "training steps per worker"),
    EnvOption("--workers", "DTR_DEMO_WORKERS", 4, positive_int, "N", "training processes"),
    EnvOption(
        "--base-port",
        "DTR_DEMO_BASE_PORT",
        None,
        port,
        "P",
        "the replicas are reached at 127.0.0.1:P, P+1, P+2 (default: free ports)",
    ),
    EnvOption(
        "--s3",
        "DTR_DEMO_S3",
        None,
        str,
        "URL",
        "checkpoints to this S3 server (http://HOST:PORT) instead, bucket dtr-chaos "
        "(created if missing; credentials from the usual AWS variables)",
    ),
    EnvOption(
        "--picture",
        "DTR_DEMO_PICTURE",
        Path(PICTURE),
        Path,
        "PATH",
        "where the loss-curve picture (SVG) goes",
    ),
    EnvOption(
        "--work-dir",
        "DTR_DEMO_WORK_DIR",
        None,
        Path,
        "DIR",
        "keep logs, histories, checkpoints and report.html there (default: a temporary "
        "directory, removed at the end unless --keep)",
    ),
)


def add_demo_command(commands: Commands[Parser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="train through a leader crash and a worker crash on a local cluster",
        description="Start etcd, 3 coordinator replicas and training workers on this "
        "machine; kill the leader at ~30% and a worker at ~60% of the run; show live "
        "progress, then a summary and a loss-curve picture. Exit 0 only if training "
        "finished and every invariant held. About 2 minutes on 2 cores.",
        epilog=ENV_NOTE,
    )
    add_debug(parser, default=argparse.SUPPRESS)
    add_options(parser, _DEMO_OPTIONS)
    parser.add_argument("--no-faults", action="store_true", help="train without the two crashes")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary work directory (path printed)"
    )
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Check, run, summarize, draw; 0 only when training finished and every check held."""
    from dtr.chaos.demo import demo_plan, demo_scenario

    scenario = demo_scenario(args.workers, args.steps, "s3" if args.s3 else "file")
    picture = _writable_picture(args.picture)
    _check_prerequisites(args.s3)
    ports = replica_ports(args.base_port, scenario.replicas)
    keep = args.keep or args.work_dir is not None
    work_dir = (args.work_dir or Path(tempfile.mkdtemp(prefix="dtr-demo-"))).absolute()
    try:
        plan = demo_plan(scenario, faults=not args.no_faults)
        with stop_signals_interrupt():
            result = _run(args, scenario, plan, work_dir, ports)
        summary = _finish(result, picture)
    finally:
        if keep:
            print(f"work dir kept: {work_dir}", flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if summary.ok else 1


def _writable_picture(picture: Path) -> Path:
    """The picture's path, its directory proven writable now (not after two minutes)."""
    folder = picture.absolute().parent
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dtr-demo-"):
            pass
    except OSError as err:
        raise InvalidArgument(
            f"cannot write the loss picture into {folder}: {err.strerror}; run dtr demo from "
            "a writable directory or pass --picture PATH"
        ) from None
    return picture.absolute()


def _check_prerequisites(s3: str | None) -> None:
    from dtr.etcd import find_etcd_binary

    find_etcd_binary(1)  # EtcdBinaryNotFound says how to install one
    if importlib.util.find_spec("torch") is None:
        raise InvalidArgument(
            "dtr demo trains with PyTorch, which is not installed: pip install 'dtr[torch]' "
            "(make demo installs it)"
        )
    if s3 is not None and not s3.startswith(("http://", "https://")):
        raise InvalidArgument(f"--s3 must be a URL like http://127.0.0.1:9000; got {s3!r}")


def _run(
    args: argparse.Namespace,
    scenario: Scenario,
    plan: list[ScheduledFault],
    work_dir: Path,
    ports: list[int] | None,
) -> RunResult:
    """The chaos run behind the demo, with the live view drawing while it goes."""
    from dtr.chaos.live_view import LiveView
    from dtr.chaos.runner import run_scenario

    view = LiveView(work_dir, scenario.steps, sys.stdout, interactive=sys.stdout.isatty())
    view.start()
    try:
        return run_scenario(
            scenario,
            seed=0,
            work_dir=work_dir,
            progress=view.say,
            plan=plan,
            s3_endpoint=args.s3,
            ports=ports,
        )
    finally:
        view.stop()


def _finish(result: RunResult, picture: Path) -> DemoSummary:
    from dtr.chaos.demo import format_demo_summary, summarize
    from dtr.chaos.history import read_history
    from dtr.chaos.loss_plot import loss_svg
    from dtr.chaos.report import write_report

    events = read_history(sorted((result.work_dir / "history").glob("*.jsonl")))
    summary = summarize(result, events)
    title = f"dtr demo: {len(summary.workers)} workers, {summary.target_steps} steps"
    picture.write_text(loss_svg(events, result.faults, title))
    write_report(result.work_dir / "report.html", result)
    print(format_demo_summary(summary, str(picture)), flush=True)
    return summary
