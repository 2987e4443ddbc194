"""Spend per day, stacked by model, as a server-rendered SVG.

No JavaScript and nothing from a CDN: the chart works with scripts off, and its
tooltips are SVG <title>s. Colours of text and lines come from the admin's CSS variables
(audit_app/static/audit_app/dashboard.css), so the chart follows the light and
dark themes; only the model colours are fixed.
"""
from __future__ import annotations

import math
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from .dashboard import Day
from .dashboard_format import format_int, format_usd

WIDTH, HEIGHT = 960, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 14, 46
MAX_X_LABELS = 12


def nice_ticks(maximum: Decimal, count: int = 5) -> list[Decimal]:
    """Round axis values from 0 to at least `maximum`: steps of 1, 2, 2.5 or 5 × 10^k."""
    if maximum <= 0:
        return [Decimal(0), Decimal(1)]
    unit = Decimal(10) ** math.floor(math.log10(maximum / count))
    step = next(unit * f for f in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10))
                if unit * f * count >= maximum)
    n = int(math.ceil(maximum / step))
    return [step * i for i in range(n + 1)]


def _tick_labels(ticks: list[Decimal]) -> list[str]:
    """Same decimals on every tick: none for whole-dollar steps, else cents, or more under a cent."""
    step = ticks[1] - ticks[0]
    places = 0 if step == step.to_integral_value() else max(2, -step.normalize().as_tuple().exponent)
    return ["$0" if not t else f"${t:,.{places}f}" for t in ticks]


def _a(url: str | None, inner: str) -> str:
    return f'<a href="{escape(url)}">{inner}</a>' if url else inner


def render_spend_chart(days: list[Day], *, timezone_name: str) -> SafeString:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max((d.cost for d in days), default=Decimal(0))
    ticks = nice_ticks(peak)
    top_value = ticks[-1]
    slot = plot_w / max(len(days), 1)
    # With only a few days each bar would span a tenth of the plot or more: cap them.
    bar_w = min(max(slot * 0.72, 1.0), 56.0)

    def y(value: Decimal) -> float:
        return TOP + plot_h - float(value / top_value) * plot_h

    out = [
        f'<svg class="relay-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="relay-chart-title" xmlns="http://www.w3.org/2000/svg">',
        '<title id="relay-chart-title">Spend per day, stacked by model</title>',
    ]
    # Grid and y axis (USD).
    for tick, label in zip(ticks, _tick_labels(ticks)):
        ty = y(tick)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">'
                   f'{escape(label)}</text>')
    out.append(f'<text class="axis-label" transform="translate(14 {TOP + plot_h / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">USD per day</text>')

    every = max(1, math.ceil(len(days) / MAX_X_LABELS))
    for i, day in enumerate(days):
        x0 = LEFT + i * slot
        bx = x0 + (slot - bar_w) / 2
        summary = f"{day.day:%a %d %b %Y}: {format_usd(day.cost)}, {format_int(day.calls)} calls"
        if day.unpriced_calls:
            summary += f", {format_int(day.unpriced_calls)} unpriced"
        if not day.calls:
            summary = f"{day.day:%a %d %b %Y}: no calls"
        if day.reconciliation:
            summary += f"; differs from OpenAI's figures ({day.reconciliation.replace('_', ' ')})"
        # The whole column is a hover target: empty days have a tooltip too.
        out.append(_a(day.url, f'<rect class="day" x="{x0:.1f}" y="{TOP}" width="{slot:.1f}" '
                               f'height="{plot_h}"><title>{escape(summary)}</title></rect>'))
        base = Decimal(0)
        for seg in day.segments:
            y_top, y_bottom = y(base + seg.cost), y(base)
            base += seg.cost
            title = (f"{day.day:%d %b %Y} · {seg.label}: {format_usd(seg.cost)} "
                     f"({format_int(seg.calls)} calls)")
            out.append(_a(seg.url, (
                f'<rect class="seg" x="{bx:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" '
                f'height="{max(y_bottom - y_top, 0.5):.1f}" fill="{seg.color}">'
                f'<title>{escape(title)}</title></rect>'
            )))
        if day.reconciliation:
            # A red mark above the bar: reconcile_usage found this day differing from OpenAI's.
            note = f"{day.day:%d %b %Y}: differs from OpenAI ({day.reconciliation.replace('_', ' ')})"
            out.append(_a(day.reconciliation_url, (
                f'<circle class="recon-differs" cx="{x0 + slot / 2:.1f}" cy="{TOP - 6}" r="4" fill="#b71c1c">'
                f'<title>{escape(note)}</title></circle>')))
        if i % every == 0:
            label = f"{day.day:%b} {day.day.day}"
            out.append(f'<text class="tick" x="{x0 + slot / 2:.1f}" y="{TOP + plot_h + 16}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    out.append(f'<text class="axis-label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" '
               f'text-anchor="middle">Day ({escape(timezone_name)})</text>')
    if peak <= 0:
        out.append(f'<text class="empty" x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" '
                   f'text-anchor="middle">No priced spend in this period</text>')
    out.append("</svg>")
    return mark_safe("".join(out))
