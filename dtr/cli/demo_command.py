"""``dtr demo``: the whole job on one machine, through faults, checked.

By default (``--workload ddp``) one real data-parallel job: etcd, 3
coordinator replicas and 2 torchrun agents x 2 ranks (gloo) on dtr's
rendezvous training ``dtr.examples.train`` (DDP, ``ShardSampler``,
replicated ``CheckpointManager``). A rank's process is killed (torchrun
restarts the group, every rank resumes from the latest complete
checkpoint), the leader is killed while it trains, one agent leaves for good
(the job goes on with 2 ranks) and the leader is killed again during that
re-rendezvous (``dtr.chaos.demo_ddp``). ``--workload independent`` is the
earlier demo: ``--workers`` processes each training its own MLP, the leader
killed at about 30% of the run and a worker at about 60%
(``dtr.chaos.demo``). Live progress while it runs, a summary at the end, a
loss-curve picture with the faults marked, and exit status 0 only if
training finished with every invariant of DESIGN §5 holding (the chaos
checkers decide) and, for the DDP job, every rank ended with bit-identical
parameters. Either is a chaos run with a fixed plan.

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
    positive_float,
    positive_int,
)
from .signals import stop_signals_interrupt
from .up_command import replica_ports

if TYPE_CHECKING:
    from dtr.chaos.runner import RunResult
    from dtr.chaos.scenario import Scenario, ScheduledFault

PICTURE = "dtr-demo-loss.svg"
WORKLOADS = ("ddp", "independent")
#: ``--workers`` of the independent demo when not given.
DEFAULT_WORKERS = 4


def workload(text: str) -> str:
    if text not in WORKLOADS:
        raise argparse.ArgumentTypeError(f"not one of {', '.join(WORKLOADS)}: {text!r}")
    return text


_DEMO_OPTIONS = (
    EnvOption(
        "--workload",
        "DTR_DEMO_WORKLOAD",
        None,
        workload,
        "KIND",
        "ddp: one DDP job of 2 torchrun agents x 2 ranks; independent: --workers "
        "processes each training its own model, the earlier demo (default: ddp, or "
        "independent when --workers is given)",
    ),
    EnvOption(
        "--steps",
        "DTR_DEMO_STEPS",
        None,
        positive_int,
        "N",
        "training steps (default: 500 for ddp, 1500 per worker for independent)",
    ),
    EnvOption(
        "--step-time",
        "DTR_DEMO_STEP_TIME",
        None,
        positive_float,
        "S",
        "simulated compute per step, seconds (default: 0.1 for ddp, 0.04 for independent)",
    ),
    EnvOption(
        "--workers",
        "DTR_DEMO_WORKERS",
        None,
        positive_int,
        "N",
        f"training processes of --workload independent (default: {DEFAULT_WORKERS})",
    ),
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
        help="train a DDP job through rank, leader and agent faults on a local cluster",
        description="Start etcd, 3 coordinator replicas and a DDP job of 2 torchrun agents "
        "x 2 ranks on this machine; kill a rank, kill the leader, let one agent leave for "
        "good and kill the leader again during that re-rendezvous; show live progress, then "
        "a summary (the loss curve, what each fault cost, a parameter hash per rank) and a "
        "loss-curve picture. Exit 0 only if training finished, every invariant held and "
        "every rank's parameters are identical. About 2 minutes on 2 cores. "
        "--workload independent runs the earlier demo (independent workers, a leader crash "
        "and a worker crash).",
        epilog=ENV_NOTE,
    )
    add_debug(parser, default=argparse.SUPPRESS)
    add_options(parser, _DEMO_OPTIONS)
    parser.add_argument("--no-faults", action="store_true", help="train without the faults")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary work directory (path printed)"
    )
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Check, run, summarize, draw; 0 only when training finished and every check held."""
    if args.workload is None:  # ``dtr demo --workers N`` keeps meaning the earlier demo
        args.workload = "independent" if args.workers is not None else "ddp"
    ddp = args.workload == "ddp"
    scenario, plan = _scenario_and_plan(args)
    picture = _writable_picture(args.picture)
    _check_prerequisites(args.s3, ddp=ddp)
    ports = replica_ports(args.base_port, scenario.replicas)
    keep = args.keep or args.work_dir is not None
    work_dir = (args.work_dir or Path(tempfile.mkdtemp(prefix="dtr-demo-"))).absolute()
    try:
        with stop_signals_interrupt():
            result = _run(args, scenario, plan, work_dir, ports)
        ok = _finish_ddp(result, picture) if ddp else _finish(result, picture)
    finally:
        if keep:
            print(f"work dir kept: {work_dir}", flush=True)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if ok else 1


def _scenario_and_plan(args: argparse.Namespace) -> tuple[Scenario, list[ScheduledFault]]:
    """The workload's scenario and fixed plan; a count that cannot work refused in one line."""
    storage = "s3" if args.s3 else "file"
    if args.workload == "ddp":
        from dtr.chaos.demo_ddp import DEFAULT_STEP_TIME_S, DEFAULT_STEPS, ddp_demo_scenario
        from dtr.chaos.demo_ddp import ddp_demo_plan as plan_of

        if args.workers is not None:
            raise InvalidArgument(
                "--workers is for --workload independent; the DDP job is 2 torchrun agents "
                "x 2 ranks"
            )
        steps = args.steps if args.steps is not None else DEFAULT_STEPS
        step_time = args.step_time if args.step_time is not None else DEFAULT_STEP_TIME_S
        scenario = ddp_demo_scenario(steps, step_time, storage)
    else:
        from dtr.chaos.demo import DEFAULT_STEPS as STEPS
        from dtr.chaos.demo import STEP_TIME_S, demo_scenario
        from dtr.chaos.demo import demo_plan as plan_of

        workers = args.workers if args.workers is not None else DEFAULT_WORKERS
        steps = args.steps if args.steps is not None else STEPS
        step_time = args.step_time if args.step_time is not None else STEP_TIME_S
        scenario = demo_scenario(workers, steps, storage, step_time_s=step_time)
    return scenario, plan_of(scenario, faults=not args.no_faults)


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


def _check_prerequisites(s3: str | None, *, ddp: bool) -> None:
    from dtr.etcd import find_etcd_binary

    find_etcd_binary(1)  # EtcdBinaryNotFound says how to install one
    if importlib.util.find_spec("torch") is None:
        raise InvalidArgument(
            "dtr demo trains with PyTorch, which is not installed: pip install 'dtr[torch]' "
            "(make demo installs it)"
        )
    if s3 is not None and not s3.startswith(("http://", "https://")):
        raise InvalidArgument(f"--s3 must be a URL like http://127.0.0.1:9000; got {s3!r}")
    if ddp:
        from dtr.chaos.ddp_agents import script_from_environment

        script = script_from_environment()  # a $DTR_CHAOS_DDP_SCRIPT that is missing: refused
        if script[0] == "-m" and importlib.util.find_spec(script[1]) is None:
            raise InvalidArgument(
                f"the DDP job's script {script[1]} is not installed: reinstall dtr "
                "(pip install -e '.[torch]', or make demo)"
            )


def _run(
    args: argparse.Namespace,
    scenario: Scenario,
    plan: list[ScheduledFault],
    work_dir: Path,
    ports: list[int] | None,
) -> RunResult:
    """The chaos run behind the demo, with the live view drawing while it goes."""
    from dtr.chaos.live_view import LiveView
    from dtr.chaos.live_view_ddp import DdpLiveView
    from dtr.chaos.runner import run_scenario

    kind = DdpLiveView if scenario.ddp_agents else LiveView
    view = kind(work_dir, scenario.steps, sys.stdout, interactive=sys.stdout.isatty())
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


def _finish(result: RunResult, picture: Path) -> bool:
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
    return summary.ok


def _finish_ddp(result: RunResult, picture: Path) -> bool:
    """The DDP job's summary, the picture of rank 0's loss and the report; whether it passed."""
    from dtr.chaos.ddp_events import processes, read_rank_events
    from dtr.chaos.demo_ddp import format_ddp_summary, loss_events, summarize_ddp
    from dtr.chaos.history import read_history
    from dtr.chaos.loss_plot import loss_svg
    from dtr.chaos.report import write_report
    from dtr.chaos.runner_ddp import read_wall_zero

    events = read_history(sorted((result.work_dir / "history").glob("*.jsonl")))
    events_dir = result.work_dir / "ddp"
    rank_events = read_rank_events(events_dir)
    wall_zero = read_wall_zero(events_dir)
    summary = summarize_ddp(result, rank_events, events, wall_zero)
    title = (
        f"dtr demo: DDP job, {summary.full_world} ranks, {summary.target_steps} steps "
        "(rank 0's loss)"
    )
    curve = loss_events(processes(rank_events), wall_zero)
    picture.write_text(loss_svg(curve, result.faults, title))
    write_report(result.work_dir / "report.html", result)
    print(format_ddp_summary(summary, str(picture)), flush=True)
    return summary.ok
