"""``dtr chaos``: run a chaos scenario against a real local cluster, or list the scenarios.

``dtr chaos list`` prints the built-in scenarios (the YAML files under
``chaos/scenarios/``). ``dtr chaos run SCENARIO`` (a name, or a path to a
scenario file) starts etcd, the replicas behind fault-injecting proxies and
training workers, injects the scenario's seeded faults, checks the
invariants of DESIGN §5 on the recorded history, prints a summary, writes
the HTML report when ``--report`` asks, and exits 0 only if every check
passed (1 otherwise, or on bad input; 130 when interrupted). The seed is
printed first, so any run can be replayed with ``--seed``. SIGTERM stops a
run like Ctrl-C does: every process and proxy it started is stopped first.

The chaos harness is imported inside the command functions, like every heavy
module of the CLI (``dtr/cli/__init__.py``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dtr import mutants
from dtr.errors import InvalidArgument

from .options import ENV_NOTE, Commands, EnvOption, Parser, add_debug, add_options
from .signals import stop_signals_interrupt

_RUN_OPTIONS = (
    EnvOption(
        "--seed",
        "DTR_CHAOS_SEED",
        None,
        int,
        "N",
        "seed of the fault schedule and target choices (default: the scenario's)",
    ),
    EnvOption(
        "--duration",
        "DTR_CHAOS_DURATION_S",
        None,
        float,
        "S",
        "seconds of faults (default: the scenario's); the workload's steps scale along",
    ),
    EnvOption(
        "--work-dir",
        "DTR_CHAOS_WORK_DIR",
        None,
        Path,
        "DIR",
        "where logs, histories, checkpoints and results.json go and stay "
        "(default: a new temporary directory, kept)",
    ),
    EnvOption(
        "--report",
        "DTR_CHAOS_REPORT",
        None,
        Path,
        "PATH",
        "write an HTML report there: verdict, a timeline of leader terms, worker "
        "liveness, faults, barriers and checkpoints, each invariant, failover times",
    ),
)


def add_chaos_command(commands: Commands[Parser]) -> None:
    parser = commands.add_parser(
        "chaos",
        help="run a chaos scenario against a local cluster and check the invariants",
        description="Chaos testing: seeded faults (kills, pauses, partitions) against a "
        "real local cluster with training workers, then the invariant checkers.",
        epilog=ENV_NOTE,
    )
    add_debug(parser, default=argparse.SUPPRESS)
    chaos = parser.add_subparsers(dest="chaos_command", metavar="ACTION", required=True)
    listing = chaos.add_parser(
        "list", help="list the built-in scenarios", description="List the built-in scenarios."
    )
    add_debug(listing, default=argparse.SUPPRESS)
    listing.set_defaults(run=run_chaos_list)
    run = chaos.add_parser(
        "run",
        help="run one scenario",
        description="Run SCENARIO (see 'dtr chaos list'): print the seed, inject its faults, "
        "check every invariant, print a summary; exit 0 only if every check passed.",
        epilog=ENV_NOTE,
    )
    add_debug(run, default=argparse.SUPPRESS)
    run.add_argument(
        "scenario",
        metavar="SCENARIO",
        help="a scenario name from 'dtr chaos list', or the path of a scenario .yaml file",
    )
    add_options(run, _RUN_OPTIONS)
    # Hidden, like the coordinator's --unsafe-disable-fencing: plant one bug of
    # dtr.mutants in every process of the run, to prove the checkers catch it.
    run.add_argument("--mutant", metavar="NAME", default=None, help=argparse.SUPPRESS)
    run.set_defaults(run=run_chaos_run)


def run_chaos_list(args: argparse.Namespace) -> int:
    from dtr.chaos.scenario_files import builtin_scenarios
    from dtr.chaos.summary import format_scenarios

    del args
    print(format_scenarios(builtin_scenarios().values()), flush=True)
    return 0


def run_chaos_run(args: argparse.Namespace) -> int:
    """Validate, run, summarize; 0 when every check passed, 1 when one failed."""
    from dtr.chaos.report import write_report
    from dtr.chaos.runner import run_scenario
    from dtr.chaos.scenario_files import get_scenario
    from dtr.chaos.summary import format_summary

    scenario = get_scenario(args.scenario)
    seed = scenario.seed if args.seed is None else args.seed
    if seed < 0:
        raise InvalidArgument(f"--seed must be a whole number >= 0; got {seed}")
    if args.duration is not None:
        scenario = scenario.with_duration(args.duration)  # refuses what cannot work
    report = args.report.absolute() if args.report is not None else None
    work_dir = (
        args.work_dir or Path(tempfile.mkdtemp(prefix=f"dtr-chaos-{scenario.name}-"))
    ).absolute()
    if report is not None and not (report.parent.is_dir() or report.parent == work_dir):
        raise InvalidArgument(f"--report: no directory {report.parent} to write into")
    mutant = mutants.parse(args.mutant)
    print(f"seed: {seed}", flush=True)
    if mutant is not None:
        print(f"mutant: {mutant} (a planted bug: the checks are expected to fail)", flush=True)
    with stop_signals_interrupt():
        result = run_scenario(
            scenario,
            seed=seed,
            work_dir=work_dir,
            progress=lambda line: print(line, flush=True),
            mutant=mutant,
        )
    print(format_summary(result), flush=True)
    if report is not None:
        print(f"report: {write_report(report, result)}", flush=True)
    return 0 if result.passed else 1
