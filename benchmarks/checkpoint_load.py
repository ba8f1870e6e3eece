"""The training loop of ``benchmarks/checkpoint.py``: what one save costs a loop running beside it.

``MatmulLoop`` runs back-to-back 512x512 float32 matmuls on its own thread
(the benchmark sets ``torch.set_num_threads(1)``, so a step uses one core)
and records when each step ended. A save is *started by the loop itself*,
between two steps (``call_between_steps``), as a training script would call
``save_async``: the time the call blocks is lost compute too, not only the
background work that competes for the cores afterwards.

``compute_lost`` turns the step timestamps into seconds-equivalent of
compute lost: the window's length minus the steps done in it, converted at
the loop's rate measured in quiet windows (``quiet_rate``).

What must not live here: anything that saves (the caller passes the save as a
callable returning a ``Future``).
"""

from __future__ import annotations

import bisect
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

MATMUL_SIZE = 512
_REPLY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StartedSave:
    """A save the loop started: its future, when the call began and when it returned."""

    future: Future[Any]
    started_at: float
    returned_at: float
    done_at: list[float]  # filled by the future's callback: when the save completed

    @property
    def call_s(self) -> float:
        return self.returned_at - self.started_at

    def wait_done(self, timeout_s: float) -> float:
        """Block until the save completed (its error raises); when it did (perf_counter)."""
        self.future.result(timeout=timeout_s)
        deadline = time.monotonic() + 5.0  # callbacks run right after the result is set
        while not self.done_at:
            if time.monotonic() > deadline:
                raise TimeoutError("the save's done-callback never ran")
            time.sleep(0.001)
        return self.done_at[0]


class MatmulLoop:
    """A matmul loop on a daemon thread; ``ends`` holds each step's end (perf_counter)."""

    def __init__(self, size: int = MATMUL_SIZE, threads: int = 1) -> None:
        self.threads = threads
        generator = torch.Generator().manual_seed(0)
        self._a = torch.rand(size, size, generator=generator)
        self._b = torch.rand(size, size, generator=generator)
        self._out = torch.empty(size, size)
        self.ends: list[float] = []
        self._requests: queue.Queue[Callable[[], Future[Any]]] = queue.Queue()
        self._replies: queue.Queue[StartedSave | BaseException] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-matmul", daemon=True)

    def __enter__(self) -> MatmulLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        # Per thread: with OpenMP, a thread inherits the *initial* thread count, not what
        # the main thread set; without this, MKL runs the matmul on every core.
        torch.set_num_threads(self.threads)
        while not self._stop.is_set():
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                pass
            else:
                self._replies.put(self._start(request))
            torch.mm(self._a, self._b, out=self._out)
            self.ends.append(time.perf_counter())

    @staticmethod
    def _start(request: Callable[[], Future[Any]]) -> StartedSave | BaseException:
        started = time.perf_counter()
        try:
            future = request()
        except BaseException as err:  # handed to the caller, raised there
            return err
        returned = time.perf_counter()
        done_at: list[float] = []
        future.add_done_callback(lambda _: done_at.append(time.perf_counter()))
        return StartedSave(future, started, returned, done_at)

    def call_between_steps(self, start_save: Callable[[], Future[Any]]) -> StartedSave:
        """Have the loop call ``start_save`` before its next step; what that call did."""
        self._requests.put(start_save)
        reply = self._replies.get(timeout=_REPLY_TIMEOUT_S)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def cpu_s(self) -> float:
        """CPU seconds the loop's thread has used so far (user + system)."""
        return thread_cpu_s(self._thread.native_id)

    def steps_between(self, start: float, end: float) -> int:
        """Steps that ended within ``[start, end]`` (perf_counter times)."""
        ends = self.ends  # appended to by the loop; a prefix is stable
        return bisect.bisect_right(ends, end) - bisect.bisect_left(ends, start)

    def quiet_rate(self, window_s: float) -> float:
        """Steps per second over the next ``window_s`` seconds, with nothing else going on."""
        start = time.perf_counter()
        time.sleep(window_s)  # the window itself: the loop runs meanwhile
        return self.steps_between(start, start + window_s) / window_s


def thread_cpu_s(native_id: int | None) -> float:
    """User + system CPU seconds of one thread of this process, from /proc."""
    with open(f"/proc/self/task/{native_id}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s() -> float:
    """User + system CPU seconds of this process (every thread) so far."""
    times = os.times()
    return times.user + times.system


def compute_lost(loop: MatmulLoop, start: float, end: float, rate: float) -> dict[str, float]:
    """Seconds-equivalent of compute lost in ``[start, end]`` at quiet ``rate`` steps/s."""
    steps = loop.steps_between(start, end)
    window_s = end - start
    return {
        "window_s": window_s,
        "steps": steps,
        "expected_steps": rate * window_s,
        "lost_s": window_s - steps / rate,
    }
