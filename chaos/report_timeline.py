"""The report's timeline picture: ``Timeline`` lanes drawn as one inline SVG, and its legend.

Geometry is a pure function (``Scale``: seconds to pixels) so it is tested
without parsing a picture. Colours and shapes live in the tables below, the
legend is drawn from the same tables, so what a mark means cannot drift from
how it looks. Every string is escaped here: labels come from the history,
and a history is data, never markup.

The SVG's size is bounded by pixels, not by events: marks of one style that
fall on the same pixel of a lane are drawn once, and training is one path
per lane (``report_lanes`` already bucketed it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from .report_lanes import Density, Lane, Mark, Span, Timeline

LABEL_PX = 150.0  # lane names
PLOT_PX = 1000.0
RIGHT_PX = 60.0  # room for the last labels
AXIS_PX = 28.0
ROW_PX = 30.0
CHAR_PX = 6.0  # a character of the 10 px labels, roughly: labels are cut to fit
MIN_SPAN_PX = 2.0
MAX_TICKS = 12
_TICK_STEPS_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)

#: Fault bars by kind (``FaultKind`` values); an unknown kind takes a colour from PALETTE.
FAULT_COLORS = {
    "leader-kill": "#d62728",
    "replica-kill": "#ff7f0e",
    "worker-kill": "#9467bd",
    "zombie-leader": "#8c564b",
    "partition-worker": "#17becf",
    "partition-workers": "#1f77b4",
    "etcd-member-kill": "#e377c2",
    "partition-leader-etcd": "#bcbd22",
    "disk-full": "#7f7f7f",
}
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")
ALIVE_COLOR = "#dff0d8"
TRAIN_COLOR = "#2e7d32"


@dataclass(frozen=True)
class MarkLook:
    """How a mark style is drawn; ``dy`` keeps barriers above and checkpoint work below."""

    shape: str  # circle | ring | square | triangle | diamond | cross
    color: str
    meaning: str
    dy: float = 0.0


MARKS = {
    "barrier": MarkLook("circle", "#2b6cb0", "barrier released", -5),
    "barrier-fail": MarkLook("circle", "#d62728", "barrier failed", -5),
    "save": MarkLook("square", "#8c8c8c", "checkpoint part saved", 5),
    "save-fail": MarkLook("square", "#d62728", "save failed", 5),
    "commit": MarkLook("triangle", "#7f7f7f", "commit acknowledged", 5),
    "commit-complete": MarkLook("diamond", "#2ca02c", "commit completed its step", 5),
    "unknown": MarkLook("ring", "#7f7f7f", "outcome unknown (info)"),
    "killed": MarkLook("cross", "#d62728", "killed by the nemesis"),
    "skipped": MarkLook("ring", "#555555", "fault skipped: no target"),
    "checkpoint": MarkLook("diamond", "#6a3d9a", "latest complete step changed"),
    "checkpoint-lost": MarkLook("diamond", "#d62728", "latest step lost"),
    "generation": MarkLook("circle", "#ff7f0e", "membership generation changed"),
}


#: Mark outlines around (0, 0), moved into place with ``translate``.
_OUTLINES = {
    "circle": "M-3.5 0A3.5 3.5 0 1 0 3.5 0A3.5 3.5 0 1 0 -3.5 0Z",
    "ring": "M-4 0A4 4 0 1 0 4 0A4 4 0 1 0 -4 0Z",
    "square": "M-3 -3H3V3H-3Z",
    "triangle": "M0 -4L4 3H-4Z",
    "diamond": "M0 -5L5 0L0 5L-5 0Z",
    "cross": "M-4 -4L4 4M-4 4L4 -4",
}


@dataclass(frozen=True)
class Scale:
    """Seconds of the run onto the x axis: ``[0, end_s]`` onto ``[left_px, left_px + width_px]``."""

    end_s: float
    left_px: float = LABEL_PX
    width_px: float = PLOT_PX

    def x(self, at_s: float) -> float:
        clamped = min(max(at_s, 0.0), self.end_s)
        return self.left_px + clamped / self.end_s * self.width_px

    def extent(self, start_s: float, end_s: float) -> tuple[float, float]:
        """(x, width) of a span; at least ``MIN_SPAN_PX`` wide, so an instant still shows."""
        left = self.x(start_s)
        return left, max(self.x(end_s) - left, MIN_SPAN_PX)

    @property
    def right_px(self) -> float:
        return self.left_px + self.width_px


def ticks(end_s: float, max_ticks: int = MAX_TICKS) -> list[float]:
    """Round seconds for the axis: the smallest step from the table giving at most ``max_ticks``."""
    step = next((s for s in _TICK_STEPS_S if end_s / s <= max_ticks), _TICK_STEPS_S[-1])
    return [round(i * step, 6) for i in range(math.floor(end_s / step + 1e-9) + 1)]


def fault_color(kind: str) -> str:
    return FAULT_COLORS.get(kind) or PALETTE[sum(map(ord, kind)) % len(PALETTE)]


def term_color(term: str) -> str:
    return PALETTE[int(term) % len(PALETTE)] if term.isdigit() else PALETTE[0]


def span_color(span: Span) -> str:
    if span.style == "alive":
        return ALIVE_COLOR
    return term_color(span.key) if span.style == "term" else fault_color(span.key)


def fit(label: str, room_px: float) -> str:
    """``label`` cut to ``room_px`` (with an ellipsis); empty when not even a few characters fit."""
    chars = int(room_px // CHAR_PX)
    if len(label) <= chars:
        return label
    return label[: chars - 1].rstrip(" ·") + "…" if chars >= 4 else ""


def render_svg(timeline: Timeline) -> str:
    """The whole picture: lane backgrounds, axis and grid, then each lane's contents."""
    scale = Scale(timeline.end_s)
    backs: list[str] = []
    body: list[str] = []
    top = AXIS_PX
    for index, lane in enumerate(timeline.lanes):
        height = lane.rows * ROW_PX
        shade = "#f7f7f7" if index % 2 == 0 else "#ffffff"
        backs.append(_rect(0, top, scale.right_px + RIGHT_PX, height, shade))
        body.extend(_lane(lane, scale, top))
        top += height
    width = scale.right_px + RIGHT_PX
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width:.0f}" '
        f'height="{top + 4:.0f}" viewBox="0 0 {width:.0f} {top + 4:.0f}" '
        'font-family="sans-serif" font-size="10" role="img" aria-label="timeline of the run">'
    )
    return "".join([head, *backs, *_axis(scale, top), *body, "</svg>"])


def _axis(scale: Scale, bottom: float) -> list[str]:
    parts = []
    for at in ticks(scale.end_s):
        x = scale.x(at)
        parts.append(
            f'<line x1="{x:.1f}" y1="{AXIS_PX - 4:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
            'stroke="#dddddd" stroke-width="1"/>'
            f'<text x="{x:.1f}" y="{AXIS_PX - 8:.1f}" text-anchor="middle">{at:g} s</text>'
        )
    return parts


def _lane(lane: Lane, scale: Scale, top: float) -> list[str]:
    parts = [
        f'<text class="lane-name" x="6" y="{top + 18:.1f}" font-weight="bold">'
        f"{_e(fit(lane.name, LABEL_PX - 10))}<title>{_e(lane.title or lane.name)}</title></text>"
    ]
    parts.extend(_spans(lane.spans, scale, top))
    if lane.density is not None:
        parts.append(_density(lane.density, scale, top))
    parts.extend(_labels(lane.marks, scale, top + 10))
    labelled = any(mark.label for mark in lane.marks)
    parts.extend(_marks(lane.marks, scale, top + 20 if labelled else top + 15, not labelled))
    return parts


def _spans(spans: Sequence[Span], scale: Scale, top: float) -> list[str]:
    """Bars; an alive span fills its row, others sit low under their label."""
    parts = []
    for index, span in enumerate(spans):
        x, width = scale.extent(span.start_s, span.end_s)
        row_top = top + span.row * ROW_PX
        bar_top, height = (row_top + 5, 20.0) if span.style == "alive" else (row_top + 13, 14.0)
        fill = span_color(span)
        extra = ' stroke="#d62728" stroke-dasharray="3 2"' if span.style == "fault-unhealed" else ""
        parts.append(
            f'<rect class="span {span.style}" data-key="{_e(span.key)}" x="{x:.1f}" '
            f'y="{bar_top:.1f}" width="{width:.1f}" height="{height:.1f}" fill="{fill}"{extra}>'
            f"<title>{_e(span.title)}</title></rect>"
        )
        if span.label:
            room = _next_start(spans[index + 1 :], span.row, scale) - x
            text = fit(span.label, room)
            if text:
                parts.append(f'<text x="{x + 1:.1f}" y="{row_top + 10:.1f}">{_e(text)}</text>')
    return parts


def _next_start(later: Iterable[Span], row: int, scale: Scale) -> float:
    return next((scale.x(s.start_s) for s in later if s.row == row), scale.right_px + RIGHT_PX)


def _density(density: Density, scale: Scale, top: float) -> str:
    """Training as one step path: height is steps per bucket, relative to this lane's busiest."""
    peak = max(density.counts, default=0)
    if peak == 0:
        return ""
    base, room = top + ROW_PX - 5, ROW_PX - 12
    busy = [i for i, count in enumerate(density.counts) if count]
    points = []
    for index in range(busy[0], busy[-1] + 1):  # no line before the first step or after the last
        y = base - density.counts[index] / peak * room
        start = index * density.bucket_s
        points.append(
            f"{scale.x(start):.1f},{y:.1f} {scale.x(start + density.bucket_s):.1f},{y:.1f}"
        )
    return (
        f'<polyline class="train" points="{" ".join(points)}" fill="none" '
        f'stroke="{TRAIN_COLOR}" stroke-width="1"><title>training steps per '
        f"{density.bucket_s:g} s (peak {peak})</title></polyline>"
    )


def _labels(marks: Sequence[Mark], scale: Scale, y: float) -> list[str]:
    """Mark labels, each only where it has room before the next one."""
    parts = []
    labelled = [(scale.x(m.at_s), m) for m in marks if m.label]
    for index, (x, mark) in enumerate(labelled):
        room = (
            labelled[index + 1][0] - x
            if index + 1 < len(labelled)
            else scale.right_px + RIGHT_PX - x
        )
        text = fit(mark.label, room - 2)
        if text:
            parts.append(f'<text x="{x - 2:.1f}" y="{y:.1f}">{_e(text)}</text>')
    return parts


def _marks(marks: Sequence[Mark], scale: Scale, y: float, offset: bool) -> list[str]:
    """Each mark once per pixel and style: thousands of steps never mean thousands of shapes."""
    parts = []
    drawn: set[tuple[str, int]] = set()
    for mark in marks:
        x = scale.x(mark.at_s)
        if (mark.style, round(x)) in drawn:
            continue
        drawn.add((mark.style, round(x)))
        dy = MARKS.get(mark.style, MARKS["unknown"]).dy if offset else 0.0
        title = f"<title>{_e(mark.title or mark.label)}</title>"
        parts.append(shape(mark.style, x, y + dy, title))
    return parts


def shape(style: str, x: float, y: float, inner: str = "") -> str:
    """The SVG element of a mark of ``style`` centred on (x, y): an outline moved into place."""
    look = MARKS.get(style, MARKS["unknown"])
    if look.shape in ("ring", "cross"):
        paint = f'fill="{"white" if look.shape == "ring" else "none"}" stroke="{look.color}"'
        paint += ' stroke-width="1.5"'
    else:
        paint = f'fill="{look.color}"'
    return (
        f'<path class="mark {style}" d="{_OUTLINES[look.shape]}" '
        f'transform="translate({x:.1f} {y:.1f})" {paint}>{inner}</path>'
    )


def _rect(x: float, y: float, width: float, height: float, fill: str) -> str:
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" fill="{fill}"/>'
    )


def legend_html(timeline: Timeline) -> str:
    """What each colour and shape means: the fault kinds and marks that appear, and the rest."""
    kinds = sorted(
        {s.key for lane in timeline.lanes for s in lane.spans if s.style.startswith("fault")}
    )
    styles = {m.style for lane in timeline.lanes for m in lane.marks}
    items = [_swatch(_rect(1, 3, 12, 8, fault_color(k)), f"fault: {k}") for k in kinds]
    if any(s.style == "fault-unhealed" for lane in timeline.lanes for s in lane.spans):
        dashed = '<rect x="1" y="3" width="12" height="8" fill="white" stroke="#d62728" '
        dashed += 'stroke-dasharray="3 2"/>'
        items.append(_swatch(dashed, "fault never healed, or its healing failed"))
    items.append(_swatch(_rect(1, 3, 12, 8, PALETTE[1]), "leader: a colour per term"))
    items.append(_swatch(_rect(1, 1, 12, 12, ALIVE_COLOR), "worker process alive"))
    items.append(
        _swatch(
            f'<polyline points="0,12 4,12 4,4 9,4 9,8 14,8" fill="none" stroke="{TRAIN_COLOR}"/>',
            "training steps (per bucket)",
        )
    )
    items += [_swatch(shape(s, 7, 7), look.meaning) for s, look in MARKS.items() if s in styles]
    return '<ul class="legend">' + "".join(items) + "</ul>"


def _swatch(drawing: str, meaning: str) -> str:
    return f'<li><svg width="14" height="14" viewBox="0 0 14 14">{drawing}</svg> {_e(meaning)}</li>'


def _e(text: str) -> str:
    return escape(text, quote=True)
