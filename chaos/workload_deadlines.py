"""``client-cancel`` inside a chaos worker: per-attempt deadlines shortened on a signal.

The nemesis writes a deadline into the worker's deadline file and sends
SIGUSR1; SIGUSR2 puts the worker's default back (``WorkerPool.set_deadline``).
A signal carries no value, hence the file; a ``.ready`` file beside it names
the PID that handles them (their default action would kill a process still
starting). The handler only reads the file
and sets ``Worker.attempt_timeout_s`` (an attribute store, safe between two
bytecodes of the main thread); writing the history there could deadlock on
its lock, so the training loop records each change at its next step
(``record_change``), with how many call attempts ran out of time so far:
the proof that the coordinators saw calls cancelled mid-write.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from dtr.worker import Worker

#: The codes of an attempt the client gave up on (its deadline) or cancelled.
TIMED_OUT_CODES = ("DEADLINE_EXCEEDED", "CANCELLED")


class Deadlines:
    """The deadline the nemesis asked for, applied to whichever ``Worker`` this process runs."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.short_s: float | None = None
        self._worker: Worker | None = None
        self._default_s: float | None = None
        self._signals = self._recorded = 0  # signals handled / recorded

    def install(self) -> None:
        """Handle SIGUSR1 (short deadlines on) and SIGUSR2 (off); only with a deadline file."""
        if self.path is not None:
            signal.signal(signal.SIGUSR1, self._on)
            signal.signal(signal.SIGUSR2, self._off)
            # Until this file names this process, the harness sends neither.
            self.path.with_suffix(".ready").write_text(f"{os.getpid()}\n")

    def attach(self, worker: Worker) -> None:
        """Apply the current setting to a newly registered ``worker`` (a process's next life)."""
        self._worker, self._default_s = worker, worker.attempt_timeout_s
        self._apply()

    def _on(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        assert self.path is not None  # installed only with a path
        try:
            # The client never waits less than 0.05 s anyway; 0 would be refused.
            self.short_s = max(float(self.path.read_text()), 0.05)
        except (OSError, ValueError):
            return  # no readable deadline: keep what runs
        self._signals += 1
        self._apply()

    def _off(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        self.short_s = None
        self._signals += 1
        self._apply()

    def _apply(self) -> None:
        if self._worker is not None and self._default_s is not None:
            self._worker.attempt_timeout_s = self.short_s or self._default_s

    def change(self) -> dict[str, Any] | None:
        """What to record when the setting moved since the last call; None when it did not."""
        if self._signals == self._recorded or self._worker is None:
            return None
        self._recorded = self._signals
        return {
            "attempt_timeout_s": self._worker.attempt_timeout_s,
            "short": self.short_s is not None,
            "timed_out_attempts": timed_out_attempts(self._worker),
        }


def timed_out_attempts(worker: Worker) -> int:
    """How many of ``worker``'s call attempts ended DEADLINE_EXCEEDED or CANCELLED so far."""
    total = 0.0
    for metric in worker.metrics.rpc_seconds.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("code") in TIMED_OUT_CODES:
                total += sample.value
    return int(total)
