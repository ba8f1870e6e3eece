"""The demo's loss curve: one line per worker over time, the faults marked, as a standalone SVG.

A pure function of the history (``train`` events carry the step's loss) and
the faults that were injected, written by hand so the demo needs no plotting
library. Losses are averaged per time bucket so the picture stays small
however long the run; the y axis starts at zero.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Callable, Sequence

from .checker_base import worker_id
from .history import Event
from .nemesis import FaultRecord

WIDTH, HEIGHT = 900, 360
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 30, 40
BUCKETS = 200
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def loss_curves(
    events: Sequence[Event], buckets: int = BUCKETS
) -> dict[str, list[tuple[float, float]]]:
    """Per worker, (time, mean loss) per time bucket, in time order."""
    trained = [e for e in events if e.f == "train" and e.type == "ok" and "loss" in e.value]
    end = max((e.time for e in trained), default=1.0) or 1.0
    width = end / buckets
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for event in trained:
        wid = worker_id(event.process)
        if wid is not None:
            sums[wid][min(int(event.time / width), buckets - 1)].append(float(event.value["loss"]))
    return {
        wid: [((b + 0.5) * width, sum(v) / len(v)) for b, v in sorted(by_bucket.items())]
        for wid, by_bucket in sorted(sums.items())
    }


def loss_svg(events: Sequence[Event], faults: Sequence[FaultRecord], title: str) -> str:
    """The picture: axes, one polyline per worker, a dashed line and a label per fault."""
    curves = loss_curves(events)
    points = [p for curve in curves.values() for p in curve]
    end_s = max((t for t, _ in points), default=1.0)
    top = max((loss for _, loss in points), default=1.0) or 1.0

    def x(t: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * t / end_s

    def y(loss: float) -> float:
        return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * loss / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14">{html.escape(title)}</text>',
        *_axes(end_s, top, x, y),
    ]
    for fault in faults:
        if fault.outcome == "skipped":
            continue
        fx = x(min(fault.started_s, end_s))
        label = html.escape(f"{fault.kind.value} {fault.target}")
        parts.append(
            f'<line x1="{fx:.1f}" y1="{TOP}" x2="{fx:.1f}" y2="{HEIGHT - BOTTOM}" '
            'stroke="#d62728" stroke-dasharray="4 3"/>'
        )
        parts.append(f'<text x="{fx + 3:.1f}" y="{TOP + 12}" fill="#d62728">{label}</text>')
    for index, (wid, curve) in enumerate(curves.items()):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(loss):.1f}" for t, loss in curve)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        )
        ly = TOP + 16 * (index + 1)
        parts.append(
            f'<text x="{WIDTH - RIGHT - 60}" y="{ly}" fill="{colour}">{html.escape(wid)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(
    end_s: float, top: float, x: Callable[[float], float], y: Callable[[float], float]
) -> list[str]:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [
        f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="black"/>',
        f'<text x="{(LEFT + right) / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle">seconds</text>',
        f'<text x="14" y="{(TOP + bottom) / 2:.0f}" transform="rotate(-90 14 '
        f'{(TOP + bottom) / 2:.0f})" text-anchor="middle">loss</text>',
    ]
    for i in range(6):
        t, loss = end_s * i / 5, top * i / 5
        parts.append(f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle">{t:.0f}</text>')
        parts.append(
            f'<text x="{LEFT - 6}" y="{y(loss) + 4:.1f}" text-anchor="end">{loss:.2f}</text>'
        )
    return parts
