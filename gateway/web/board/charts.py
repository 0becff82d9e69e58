"""Charts as inline SVG, rendered on the server: no chart library, no script, no CDN.

    sparkline(values, label, data=…)            a small line with its area, for table rows
    day_bars(days, values, label, titles)       calls per day, with a light axis and one tooltip per bar
    capacity(rows, label, ...)                  per model: calls used vs left today, as stacked bars
    share_bar(fraction, label)                  a thin bar, e.g. a donor's share of today's calls

Every function returns `Markup` that templates insert as is, so everything put into it is
escaped here (model names are donor-supplied). Colours come from classes styled by
`static/thanks.css` (light and dark); the markup carries no `style` attribute, which the pages'
Content-Security-Policy would refuse. Each chart has `role="img"` and a label for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from typing import Protocol

from markupsafe import Markup, escape


class ModelCapacity(Protocol):
    """A row of the capacity chart (`snapshot.ModelCapacity` is one)."""

    model: str
    keys: int
    limit: int
    used: int

    @property
    def left(self) -> int: ...


def _n(value: float) -> str:
    """A coordinate: short, and stable across runs."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^k at or above `value` (at least 1): a readable axis maximum."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def _open(kind: str, width: int, height: int, label: str, extra: str = "") -> str:
    return (
        f'<svg class="chart {kind}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(label)}"{extra} xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(label)}</title>"
    )


def sparkline(
    values: Sequence[float], label: str, *, width: int = 120, height: int = 30, data: Sequence[str] = ()
) -> Markup:
    """`data`, when given, goes in `data-values` (space-separated): the numbers the line draws."""
    pad = 3.0
    top = max(values, default=0)
    n = len(values)
    step = (width - 2 * pad) / max(1, n - 1)

    def y(v: float) -> float:
        return height - pad - (v / top * (height - 2 * pad) if top else 0)

    points = [(pad + i * step, y(v)) for i, v in enumerate(values)]
    line = " ".join(f"{_n(x)},{_n(yy)}" for x, yy in points)
    base = _n(height - pad)
    extra = f' data-values="{escape(" ".join(data))}"' if data else ""
    parts = [_open("spark", width, height, label, extra)]
    if points:
        first, last = points[0], points[-1]
        parts.append(f'<path class="spark-area" d="M{_n(first[0])},{base} L{line} L{_n(last[0])},{base} Z"/>')
        parts.append(f'<polyline class="spark-line" points="{line}"/>')
        parts.append(f'<circle class="spark-dot" cx="{_n(last[0])}" cy="{_n(last[1])}" r="2.5"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def day_bars(
    days: Sequence[date],
    values: Sequence[int],
    label: str,
    titles: Sequence[str],
    *,
    width: int = 720,
    height: int = 200,
) -> Markup:
    """One bar per day, the last (today) highlighted; y axis at 0, half and a rounded maximum."""
    left, right, top_pad, bottom = 44.0, 8.0, 10.0, 24.0
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    top = nice_ceiling(max(values, default=0))
    n = max(1, len(values))
    slot = plot_w / n
    bar = max(1.0, slot * 0.72)
    parts = [_open("bars", width, height, label)]
    for fraction in (0.0, 0.5, 1.0):
        yy = top_pad + plot_h * (1 - fraction)
        parts.append(f'<line class="grid" x1="{_n(left)}" x2="{_n(width - right)}" y1="{_n(yy)}" y2="{_n(yy)}"/>')
        parts.append(
            f'<text class="axis" x="{_n(left - 6)}" y="{_n(yy + 4)}" text-anchor="end">{_short(top * fraction)}</text>'
        )
    for i, (value, title) in enumerate(zip(values, titles, strict=True)):
        h = value / top * plot_h if top else 0.0
        x = left + i * slot + (slot - bar) / 2
        kind = "bar today" if i == len(values) - 1 else "bar"
        # A zero day still gets a hairline, so the month reads as a row of days.
        parts.append(
            f'<rect class="{kind}" x="{_n(x)}" y="{_n(top_pad + plot_h - max(h, 1.0))}" width="{_n(bar)}" '
            f'height="{_n(max(h, 1.0))}" rx="1.5"><title>{escape(title)}</title></rect>'
        )
    for i in sorted({0, len(days) // 2, len(days) - 1}) if days else ():
        x = left + i * slot + slot / 2
        anchor = "start" if i == 0 else "end" if i == len(days) - 1 else "middle"
        x = left if anchor == "start" else (width - right if anchor == "end" else x)
        parts.append(
            f'<text class="axis" x="{_n(x)}" y="{height - 6}" text-anchor="{anchor}">{days[i].strftime("%m-%d")}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def capacity(
    rows: Sequence[ModelCapacity],
    label: str,
    row_title: str,
    *,
    width: int = 400,
) -> Markup:
    """Per model: its name and "left / limit" on one line, below it a bar of its keys' daily
    limits, the used part filled. Sized for a half-width column.

    `row_title` is a format string with {model}, {used}, {left} and {limit}."""
    row_h, bar_h = 42, 12
    height = max(1, len(rows)) * row_h
    parts = [_open("capacity", width, height, label)]
    for i, row in enumerate(rows):
        y = i * row_h
        used_w = width * row.used / row.limit if row.limit else 0.0
        name = row.model if len(row.model) <= 40 else row.model[:39] + "…"
        title = row_title.format(model=row.model, used=f"{row.used:,}", left=f"{row.left:,}", limit=f"{row.limit:,}")
        parts.append(f"<g><title>{escape(title)}</title>")
        parts.append(f'<text class="model" x="0" y="{y + 13}">{escape(name)}</text>')
        parts.append(
            f'<text class="num" x="{width}" y="{y + 13}" text-anchor="end">{row.left:,} / {row.limit:,}</text>'
        )
        bar = f'x="0.5" y="{y + 19.5}" height="{bar_h}" rx="6"'
        parts.append(f'<rect class="left" {bar} width="{width - 1}"/>')
        parts.append(f'<rect class="used" {bar} width="{_n(max(0.0, used_w - 1))}"/></g>')
    parts.append("</svg>")
    return Markup("".join(parts))


def share_bar(fraction: float, label: str, *, width: int = 72, height: int = 8) -> Markup:
    fraction = min(1.0, max(0.0, fraction))
    filled = width * fraction
    return Markup(
        _open("share", width, height, label)
        + f'<rect class="track" width="{width}" height="{height}" rx="4"/>'
        + (f'<rect class="fill" width="{_n(max(filled, 3.0))}" height="{height}" rx="4"/>' if fraction else "")
        + "</svg>"
    )


def _short(value: float) -> str:
    """An axis label: 950, 1.5k, 20k, 1.2M."""
    v = int(value)
    if v >= 1_000_000:
        return f"{v / 1_000_000:.1f}M".replace(".0M", "M")
    if v >= 1_000:
        return f"{v / 1_000:.1f}k".replace(".0k", "k")
    return str(v)
