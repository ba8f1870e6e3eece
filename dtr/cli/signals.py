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
def stop_signals_interrupt(signals: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the block, whatever was inherited.

    For commands whose work is one call that unwinds cleanly (an ``ExitStack``
    stops what it started): ``dtr chaos run``, ``dtr demo``. SIGINT is set
    too, not left to Python's default: a background job of a non-interactive
    shell starts with SIGINT ignored, and Python then keeps ignoring it, so
    such a run went on to its end when told to stop (``dtr up`` and ``dtr
    etcd`` set their own handlers and always stopped).
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
