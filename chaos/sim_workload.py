"""Many simulated chaos workers in one process: the scale scenarios' workload.

``python -m dtr.chaos.sim_workload --coordinators A,B,C --job J
(--worker-ids s0-0,s0-1,... | --prefix s0 --count N) --history PATH --start T0
--checkpoint URI [--steps N] [--step-time-s X] [--save-every K]
[--heartbeat-interval-s H] [--barrier-timeout-s B] [--shards S]``

runs N ``SimWorker``s (``sim_worker.py``) as tasks on one event loop,
sharing one ``grpc.aio`` channel per coordinator (``sim_client.py``), one
storage backend and one history file (``dtr.chaos.history``; every worker
records as ``worker:<id>``, like ``dtr.chaos.workload``). A real chaos
worker is a process with torch and threads; hundreds of those do not fit on
a small machine, hundreds of these do, and the coordinators see the same
protocol from them.

Exit status: 0 once every simulated worker finished its steps (commits
answered, deregistered); 1 when any failed (one line per failed worker on
stderr); 2 for bad arguments (one line on stderr, nothing started); 143 when
stopped by SIGTERM or SIGINT, which cancels every worker at once (no
deregistration: like a killed process, the leader times them out) and closes
the channels.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from dtr.errors import DtrError, InvalidArgument
from dtr.keys import validate_name
from dtr.storage import open_storage
from dtr.storage import validate_name as validate_object_name
from dtr.worker.client import parse_coordinators

from .history import History
from .sim_checkpoint import part_name
from .sim_client import SimClient
from .sim_worker import SimSettings, SimWorker

PROG = "python -m dtr.chaos.sim_workload"
EXIT_FAILED, EXIT_USAGE, EXIT_SIGNALLED = 1, 2, 128 + signal.SIGTERM
MAX_WORKERS = 10_000
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimConfig:
    """Validated arguments of one simulated-workers process."""

    coordinators: tuple[str, ...]
    worker_ids: tuple[str, ...]
    history: Path
    start: float
    checkpoint_uri: str
    settings: SimSettings


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (DESIGN §8), not usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    for flag in ("--coordinators", "--job", "--history", "--checkpoint"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--worker-ids", help="comma-separated ids (or --prefix with --count)")
    parser.add_argument("--prefix", help="ids <prefix>-0 ... <prefix>-<count-1>")
    parser.add_argument("--count", type=int)
    parser.add_argument("--start", type=float, required=True, help="the harness's monotonic zero")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--step-time-s", type=float, default=0.1)
    parser.add_argument("--save-every", type=int, default=20)
    parser.add_argument("--heartbeat-interval-s", type=float, default=1.0)
    parser.add_argument("--barrier-timeout-s", type=float, default=60.0)
    parser.add_argument("--shards", type=int, default=32, help="of the dataset 'chaos'")
    return parser


def _worker_ids(args: argparse.Namespace) -> tuple[str, ...]:
    if (args.worker_ids is None) == (args.prefix is None):
        raise InvalidArgument("give either --worker-ids or --prefix with --count")
    if args.prefix is not None:
        if args.count is None or not 1 <= args.count <= MAX_WORKERS:
            raise InvalidArgument(f"--count must be in 1-{MAX_WORKERS}; got {args.count}")
        ids = [f"{args.prefix}-{i}" for i in range(args.count)]
    elif args.count is not None:
        raise InvalidArgument("--count goes with --prefix, not with --worker-ids")
    else:
        ids = [w.strip() for w in args.worker_ids.split(",")]
    if not 1 <= len(ids) <= MAX_WORKERS or len(set(ids)) != len(ids):
        raise InvalidArgument(f"--worker-ids: give 1-{MAX_WORKERS} distinct ids")
    for worker_id in ids:
        validate_name("worker id", worker_id)
        try:
            validate_object_name(part_name(0, worker_id))  # the id names its checkpoint parts
        except InvalidArgument:
            raise InvalidArgument(
                f"worker id {worker_id!r} cannot name a checkpoint part: use letters, digits, "
                "'.', '_' and '-', starting with a letter or digit"
            ) from None
    return tuple(ids)


def _check(name: str, value: float, *, low: float, open_low: bool = False) -> None:
    if not math.isfinite(value) or value < low or (open_low and value == low):
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        raise InvalidArgument(f"{name} must be a finite number {bound}; got {value!r}")


def parse(argv: list[str] | None) -> SimConfig:
    """The validated configuration; ``InvalidArgument`` names the flag at fault."""
    args = _parser().parse_args(argv)
    for flag, value in (("--steps", args.steps), ("--save-every", args.save_every)):
        _check(flag, value, low=1)
    _check("--shards", args.shards, low=1)
    _check("--step-time-s", args.step_time_s, low=0)
    _check("--start", args.start, low=0)
    for flag, value in (
        ("--heartbeat-interval-s", args.heartbeat_interval_s),
        ("--barrier-timeout-s", args.barrier_timeout_s),
    ):
        _check(flag, value, low=0, open_low=True)
    history = Path(args.history)
    if not history.parent.is_dir():
        raise InvalidArgument(f"--history: folder {history.parent} does not exist")
    settings = SimSettings(
        job=validate_name("--job", args.job),
        steps=args.steps,
        step_time_s=args.step_time_s,
        save_every=args.save_every,
        barrier_timeout_s=args.barrier_timeout_s,
        heartbeat_interval_s=args.heartbeat_interval_s,
        shards=args.shards,
    )
    open_storage(args.checkpoint).close()  # refuses a bad URI before anything starts
    return SimConfig(
        coordinators=parse_coordinators(args.coordinators),
        worker_ids=_worker_ids(args),
        history=history,
        start=args.start,
        checkpoint_uri=args.checkpoint,
        settings=settings,
    )


async def run(config: SimConfig) -> int:
    """Run every simulated worker to its end (or to SIGTERM); the exit status."""
    client = SimClient(config.coordinators, job=config.settings.job)
    storage = open_storage(config.checkpoint_uri)
    try:
        with History(config.history, start=config.start) as history:
            workers = [
                SimWorker(worker_id, client, storage, history, config.settings)
                for worker_id in config.worker_ids
            ]
            return await _supervise(workers)
    finally:
        await client.close()
        await asyncio.to_thread(storage.close)


async def _supervise(workers: list[SimWorker]) -> int:
    """Wait for every worker, or for a stop signal that cancels them all."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = {asyncio.create_task(w.run(), name=w.worker_id): w for w in workers}
    stopper = asyncio.create_task(stop.wait())
    pending: set[asyncio.Task[object]] = set(tasks)
    while pending and not stop.is_set():
        _, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
        pending.discard(stopper)
    stopper.cancel()
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, stopper, return_exceptions=True)
    if stop.is_set():
        print(f"{PROG}: stopped by a signal; {len(pending)} workers cancelled", file=sys.stderr)
        return EXIT_SIGNALLED
    return _report(tasks)


def _report(tasks: dict[asyncio.Task[None], SimWorker]) -> int:
    """0 when every worker finished; else one stderr line per failed worker, and 1.

    A failure that is not a ``DtrError`` is a bug: its traceback goes to the log too.
    """
    failed = 0
    for task, worker in tasks.items():
        error = None if task.cancelled() else task.exception()
        if error is None and worker.finished:
            continue
        failed += 1
        what = f"{type(error).__name__}: {error}" if error else "did not finish"
        print(
            f"{PROG}: worker {worker.worker_id} failed at step {worker.step}: {what}",
            file=sys.stderr,
        )
        if error is not None and not isinstance(error, DtrError):
            _log.error("worker %s failed unexpectedly", worker.worker_id, exc_info=error)
    if failed:
        print(f"{PROG}: {failed} of {len(tasks)} simulated workers failed", file=sys.stderr)
        return EXIT_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    level = logging.INFO if os.environ.get("DTR_DEBUG") else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = parse(argv)
    except InvalidArgument as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
