"""Where benchmark results go, and what every results file says about the run that made it."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def command_line() -> str:
    """The running benchmark's command, relative to the repository, to paste into a shell."""
    python = Path(sys.executable)
    shown = os.path.relpath(python, REPO) if REPO in python.parents else str(python)
    script = os.path.relpath(Path(sys.argv[0]).resolve(), REPO)
    return shlex.join([shown, script, *sys.argv[1:]])


def run_facts() -> dict[str, object]:
    """When, where and how a benchmark ran: the first keys of every results file's meta."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "command": command_line(),
    }


def git_commit() -> str:
    """The checkout's commit, ``(dirty)`` when tracked files differ from it."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return f"{head}{' (dirty)' if git('status', '--porcelain', '--untracked-files=no') else ''}"
