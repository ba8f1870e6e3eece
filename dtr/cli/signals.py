"""Turning SIGINT/SIGTERM into an event, for commands that run until stopped.

A foreground command (``dtr etcd``, ``dtr up``) must stop what it started, in
order, whichever signal arrives and whenever: a KeyboardInterrupt raised in
the middle of starting a child would leave it orphaned. So the handlers only
set an event, and the command checks it at points where stopping is safe.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_set(
    event: threading.Event, signals: Sequence[signal.Signals] = STOP_SIGNALS
) -> Iterator[None]:
    """Turn ``signals`` into ``event.set()`` for the block, then restore the old handlers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the block, as Ctrl-C does.

    For commands whose work is one call that unwinds cleanly (an ``ExitStack``
    stops what it started): ``dtr chaos run``, ``dtr demo``.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
