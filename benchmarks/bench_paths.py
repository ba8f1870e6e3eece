"""Where benchmark results go, and how a results file names the command that made it."""

from __future__ import annotations

import os
import shlex
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
