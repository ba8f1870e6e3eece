"""``stop_signals_interrupt``: SIGINT stops a chaos run or demo even when it starts ignored.

A background job of a non-interactive shell (``cmd &`` in a script, or CI
started that way) begins with SIGINT ignored, and Python keeps it ignored: a
chaos run told to stop with SIGINT ran on to its end. The child here starts
exactly so, and must still be interrupted inside the block, then get back
what it had.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import signal, sys, threading
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job starts
    from dtr.cli.signals import stop_signals_interrupt
    try:
        with stop_signals_interrupt():
            print("ready", flush=True)
            threading.Event().wait(60)
    except KeyboardInterrupt:
        restored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        sys.exit(130 if restored else 3)
    sys.exit(0)
    """
)


def test_sigint_interrupts_the_block_even_when_the_process_started_with_it_ignored() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            child.send_signal(signum)
            assert child.wait(timeout=30) == 130, f"{signum.name}: not interrupted or not restored"
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
