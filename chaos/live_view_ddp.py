"""The DDP demo's live progress: the job's step and loss, its world, each rank, the faults.

``LiveView`` (``live_view.py``) with a block of its own: it tails the run's
history for the leader, its term and the generation (the harness's probes)
and the faults (the nemesis's events), and the ranks' event files
(``work_dir/ddp/rank-<R>.jsonl``, ``ddp_events.py``) for each rank's step,
loss and state. Like the base view it only reads files the run writes
anyway, on a thread of its own::

    t= 42.1s  leader replica-2 (term 5)  generation 7  world 4
      job   [##########--------------------]    210/500  loss 0.512
      ranks 0:210  1:210  2:210  3:restarting
      fault t=40.1s rank-kill rank 3
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .live_view import BAR_WIDTH, HistoryTail, LiveView, apply

#: Faults named on the last line, newest last.
SHOWN_FAULTS = 2


@dataclass
class RankState:
    step: int = 0
    loss: float | None = None
    state: str = "starting"  # starting | joined | training | done | restarting | left


@dataclass
class DdpSnapshot:
    """What the rank files and the nemesis said so far."""

    world: int | None = None
    ranks: dict[int, RankState] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)


def apply_rank(snapshot: DdpSnapshot, record: dict[str, object]) -> None:
    """Fold one line of a rank's event file into the snapshot."""
    rank, event = record.get("rank"), record.get("event")
    if not isinstance(rank, int) or not isinstance(event, str):
        return
    state = snapshot.ranks.setdefault(rank, RankState())
    world = record.get("world")
    if event == "start":
        state.state = "starting"
        if isinstance(world, int):
            snapshot.world = world
    elif event == "joined":
        state.state = "joined"
    elif event == "step":
        step, loss = record.get("step"), record.get("loss")
        state.state = "training"
        state.step = step if isinstance(step, int) else state.step
        state.loss = float(loss) if isinstance(loss, int | float) else state.loss
    elif event == "done":
        state.state = "done"


def apply_fault(snapshot: DdpSnapshot, event: dict[str, object]) -> None:
    """A nemesis fault put in place: named, and the ranks it took marked."""
    value = event.get("value")
    if event.get("process") != "nemesis" or event.get("type") != "ok":
        return
    if not isinstance(value, dict):
        return
    kind, target, at = value.get("kind"), value.get("target", ""), event.get("time")
    when = f"t={at:.1f}s " if isinstance(at, int | float) else ""
    snapshot.faults.append(f"{when}{kind} {target}".rstrip())
    if kind == "rank-kill" and isinstance(value.get("rank"), int):
        snapshot.ranks.setdefault(value["rank"], RankState()).state = "restarting"
    elif kind == "agent-leave" and isinstance(value.get("ranks"), list):
        for rank in value["ranks"]:
            if isinstance(rank, int):
                snapshot.ranks.setdefault(rank, RankState()).state = "left"


class DdpLiveView(LiveView):
    """Tails ``work_dir/history`` and ``work_dir/ddp``; shows the job's block until ``stop()``."""

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
        super().__init__(
            work_dir,
            steps,
            out,
            interactive=interactive,
            interval_s=interval_s,
            plain_every_s=plain_every_s,
        )
        self._ranks_tail = HistoryTail(work_dir / "ddp")
        self.ddp = DdpSnapshot()

    def _refresh(self) -> None:
        if self._tail.folder.is_dir():
            for event in self._tail.new_events():
                apply(self.snapshot, event)
                apply_fault(self.ddp, event)
        if self._ranks_tail.folder.is_dir():
            for record in self._ranks_tail.new_events():
                apply_rank(self.ddp, record)

    def _render(self) -> list[str]:
        return render_ddp(
            self.ddp,
            self.steps,
            self._elapsed(),
            leader=self.snapshot.leader,
            term=self.snapshot.term,
            generation=self.snapshot.generation,
        )


def render_ddp(
    snapshot: DdpSnapshot,
    steps: int,
    elapsed_s: float,
    *,
    leader: str | None = None,
    term: int | None = None,
    generation: int | None = None,
) -> list[str]:
    """The block: the cluster line, the job's bar (rank 0), the ranks, the latest faults."""
    who = f"{leader} (term {term})" if leader else "electing..."
    world = snapshot.world if snapshot.world is not None else "-"
    shown_generation = generation if generation is not None else "-"
    lines = [f"t={elapsed_s:5.1f}s  leader {who}  generation {shown_generation}  world {world}"]
    lead = snapshot.ranks.get(0, RankState())
    filled = min(BAR_WIDTH, BAR_WIDTH * lead.step // max(steps, 1))
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    loss = f"  loss {lead.loss:.3f}" if lead.loss is not None else ""
    lines.append(f"  job   [{bar}] {lead.step:>6}/{steps}{loss}")
    ranks = [
        f"{rank}:{state.step if state.state == 'training' else state.state}"
        for rank, state in sorted(snapshot.ranks.items())
        if snapshot.world is None or rank < snapshot.world or state.state == "left"
    ]
    lines.append("  ranks " + ("  ".join(ranks) if ranks else "starting..."))
    for fault in snapshot.faults[-SHOWN_FAULTS:]:
        lines.append(f"  fault {fault}")
    return lines
