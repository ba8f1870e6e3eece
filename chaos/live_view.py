"""The demo's live progress: a bar per worker, the leader and its term, the generation.

It reads what the run is already writing: the workers' histories (``train``
events carry the step and loss), the harness's (``claim`` probes name the
leader and term, ``membership`` the generation) and the nemesis's (which
worker is down). A daemon thread tails the files every ``interval_s``; the
run itself is not touched, so a slow terminal never slows the cluster.

On a terminal the block of lines is redrawn in place and the runner's own
lines are printed above it; elsewhere (CI, a pipe) one status line is
printed every ``plain_every_s`` seconds.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

BAR_WIDTH = 30


@dataclass
class WorkerProgress:
    step: int = 0
    loss: float | None = None
    down: bool = False


@dataclass
class Snapshot:
    """What the files said so far."""

    workers: dict[str, WorkerProgress] = field(default_factory=dict)
    leader: str | None = None
    term: int | None = None
    generation: int | None = None


class HistoryTail:
    """Reads only the complete lines added to each ``*.jsonl`` under ``folder`` since last time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._offsets: dict[Path, int] = {}

    def new_events(self) -> list[dict[str, object]]:
        found: list[dict[str, object]] = []
        for path in sorted(self.folder.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as stream:
                stream.seek(offset)
                chunk = stream.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._offsets[path] = offset + len(complete)
            for line in complete.splitlines():
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue  # a torn line of a killed worker
        return found


def apply(snapshot: Snapshot, event: dict[str, object]) -> None:
    """Fold one history event into the snapshot."""
    process, f, value = str(event.get("process", "")), event.get("f"), event.get("value")
    value = value if isinstance(value, dict) else {}
    if process.startswith("worker:") and f == "train" and event.get("type") == "ok":
        progress = snapshot.workers.setdefault(process.removeprefix("worker:"), WorkerProgress())
        progress.step, progress.down = int(value.get("step", 0)), False
        loss = value.get("loss")
        progress.loss = float(loss) if isinstance(loss, int | float) else progress.loss
    elif f == "claim" and event.get("type") == "ok" and value.get("is_leader"):
        snapshot.leader, snapshot.term = str(value.get("replica")), _int(value.get("term"))
    elif f == "membership" and event.get("type") == "ok":
        snapshot.generation = _int(value.get("generation"))
    elif process == "nemesis" and value.get("kind") == "worker-kill" and event.get("type") == "ok":
        target = str(value.get("target"))
        snapshot.workers.setdefault(target, WorkerProgress()).down = True


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


def render(snapshot: Snapshot, steps: int, elapsed_s: float) -> list[str]:
    """The block: one header line, then one bar per worker."""
    leader = f"{snapshot.leader} (term {snapshot.term})" if snapshot.leader else "electing..."
    generation = snapshot.generation if snapshot.generation is not None else "-"
    lines = [f"t={elapsed_s:5.1f}s  leader {leader}  generation {generation}"]
    for wid, progress in sorted(snapshot.workers.items()):
        filled = min(BAR_WIDTH, BAR_WIDTH * progress.step // max(steps, 1))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        loss = f"loss {progress.loss:.3f}" if progress.loss is not None else ""
        state = "  DOWN (restarting)" if progress.down else ""
        lines.append(f"  {wid:<4} [{bar}] {progress.step:>6}/{steps} {loss}{state}")
    return lines


class LiveView:
    """Tails ``work_dir/history`` and shows the block until ``stop()``."""

    def __init__(
        self,
        work_dir: Path,
        steps: int,
        out: TextIO,
        *,
        interactive: bool,
        interval_s: float = 0.5,
        plain_every_s: float = 5.0,
    ) -> None:
        self._tail = HistoryTail(work_dir / "history")
        self.snapshot = Snapshot()
        self.steps, self.out, self.interactive = steps, out, interactive
        self.interval_s, self.plain_every_s = interval_s, plain_every_s
        self._lock = threading.Lock()
        self._drawn = 0
        self._started = time.monotonic()
        self._last_plain = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dtr-demo-view", daemon=True)

    def start(self) -> LiveView:
        self._thread.start()
        return self

    def say(self, line: str) -> None:
        """A line of the runner's, printed above the block."""
        with self._lock:
            self._erase()
            self.out.write(line + "\n")
            self._draw()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            self._refresh()
            self._erase()
            self.out.write("\n".join(self._render()) + "\n")
            self.out.flush()
            self._drawn = 0

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _render(self) -> list[str]:
        """The block as it stands (``live_view_ddp.py`` draws the DDP job's instead)."""
        return render(self.snapshot, self.steps, self._elapsed())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                self._refresh()
                if self.interactive:
                    self._erase()
                    self._draw()
                elif time.monotonic() - self._last_plain >= self.plain_every_s:
                    self._last_plain = time.monotonic()
                    self.out.write(" | ".join(self._render()))
                    self.out.write("\n")
                    self.out.flush()

    def _refresh(self) -> None:
        if self._tail.folder.is_dir():
            for event in self._tail.new_events():
                apply(self.snapshot, event)

    def _erase(self) -> None:
        if self.interactive and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the block's start, clear below
        self._drawn = 0

    def _draw(self) -> None:
        if not self.interactive:
            self.out.flush()
            return
        block = self._render()
        self.out.write("\n".join(block) + "\n")
        self.out.flush()
        self._drawn = len(block)
