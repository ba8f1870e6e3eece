"""``dtr queue``: list or clear a worker's local checkpoint commit queue.

A worker's commit records wait in ``<state dir>/<job>/<worker>.commits.sqlite``
until a coordinator answers (``dtr.worker.commit_queue``). Records made for
another life of the job (the cluster was replaced, or the job's etcd prefix
wiped) are *set aside* there: kept, never sent. ``dtr queue list`` shows the
counts and every row (``--json``: one object); ``dtr queue clear`` deletes
set-aside rows (``--set-aside``) and, only when asked by its own flag,
pending rows (``--pending``: those commits are then lost for good). A queue
that does not exist is an error, never created.

The queue module is imported inside the command functions, like every
worker module of the CLI (``dtr/cli/__init__.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtr.errors import InvalidArgument, NotFound

from .options import ENV_NOTE, Commands, EnvOption, Parser, add_debug, add_options

if TYPE_CHECKING:
    from dtr.worker.commit_queue import CommitEntry

_QUEUE_OPTIONS = (
    EnvOption(
        "--state-dir",
        "DTR_STATE_DIR",
        None,
        Path,
        "DIR",
        "the workers' state directory (default: ~/.local/state/dtr)",
    ),
    EnvOption("--job", "DTR_JOB", "default", str, "NAME", "the job whose queue it is"),
    EnvOption(
        "--worker-id", "DTR_WORKER_ID", None, str, "ID", "the worker whose queue it is", True
    ),
)


def add_queue_command(commands: Commands[Parser]) -> None:
    parser = commands.add_parser(
        "queue",
        help="list or clear a worker's local checkpoint commit queue",
        description="A worker's checkpoint commits wait in a local queue until a coordinator "
        "answers; records of another life of the job are set aside there.",
        epilog=ENV_NOTE,
    )
    add_debug(parser, default=argparse.SUPPRESS)
    actions = parser.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="counts (pending, set aside, done) and every row",
        description="Show a worker's commit queue: counts and every row, oldest first.",
        epilog=ENV_NOTE,
    )
    add_debug(listing, default=argparse.SUPPRESS)
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    add_options(listing, _QUEUE_OPTIONS)
    listing.set_defaults(run=run_queue_list)
    clear = actions.add_parser(
        "clear",
        help="delete set-aside rows, and pending rows only with --pending",
        description="Delete rows of a worker's commit queue. Stop the worker first.",
        epilog=ENV_NOTE,
    )
    add_debug(clear, default=argparse.SUPPRESS)
    clear.add_argument(
        "--set-aside",
        action="store_true",
        help="delete rows set aside because they belong to another life of the job",
    )
    clear.add_argument(
        "--pending",
        action="store_true",
        help="also delete pending rows: their commits are lost for good",
    )
    add_options(clear, _QUEUE_OPTIONS)
    clear.set_defaults(run=run_queue_clear)


def _existing_queue(args: argparse.Namespace) -> Path:
    """The queue file the options name; ``NotFound`` when there is none (never created)."""
    from dtr.worker.commit_queue import queue_file

    path = queue_file(args.job, args.worker_id, args.state_dir)
    if not path.is_file():
        raise NotFound(f"no commit queue at {path} (check --state-dir, --job and --worker-id)")
    return path


def run_queue_list(args: argparse.Namespace) -> int:
    from dtr.worker.commit_queue import CommitQueue

    path = _existing_queue(args)
    with CommitQueue(path) as queue:
        counts, entries = queue.counts(), queue.history()
    if args.json:
        rows = [_row(entry) for entry in entries]
        print(json.dumps({"path": str(path), "counts": counts, "records": rows}), flush=True)
        return 0
    print(
        f"commit queue {path}: {counts['pending']} pending, {counts['set_aside']} set aside, "
        f"{counts['done']} done",
        flush=True,
    )
    if entries:
        print(f"{'SEQ':>6} {'STATE':<9} {'STEP':>8} {'GEN':>5} {'OUTCOME':<10} {'LIFE':<24} URI")
    for entry in entries:
        record = entry.record
        print(
            f"{entry.seq:>6} {entry.state:<9} {record.step:>8} {record.generation:>5} "
            f"{entry.outcome or '-':<10} {record.job_life or '-':<24} {record.uri}"
        )
    return 0


def run_queue_clear(args: argparse.Namespace) -> int:
    from dtr.worker.commit_queue import CommitQueue

    if not (args.set_aside or args.pending):
        raise InvalidArgument("say what to clear: --set-aside, --pending, or both")
    path = _existing_queue(args)
    with CommitQueue(path) as queue:
        removed = queue.clear(set_aside=args.set_aside, pending=args.pending)
    what = " and ".join(
        name
        for name, wanted in (("set-aside", args.set_aside), ("pending", args.pending))
        if wanted
    )
    print(f"cleared {removed} {what} rows from {path}", flush=True)
    return 0


def _row(entry: CommitEntry) -> dict[str, Any]:
    record = entry.record
    return {
        "seq": entry.seq,
        "state": entry.state,
        "outcome": None if entry.outcome is None else entry.outcome.value,
        "job": record.job,
        "job_life": record.job_life,
        "worker_id": record.worker_id,
        "incarnation": record.incarnation,
        "step": record.step,
        "generation": record.generation,
        "uri": record.uri,
        "size_bytes": record.size_bytes,
        "checksum": f"{record.checksum_algorithm}:{record.checksum_hex}",
        "enqueued_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.enqueued_at)) + "Z",
        "done_at": entry.done_at,
    }
