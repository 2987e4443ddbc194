"""The usage dashboard: its figures, its spend chart and its page.

Everything here reads the daily rollups (`UsageDaily`), never raw calls: a
period's figures are a few GROUP BY queries over at most days × users × models
rows, whatever the number of calls, so the page stays fast at millions of calls
and keeps its totals after old calls are pruned. Money stays Decimal up to the
text (format_usd); the chart's geometry is computed here and drawn by a template.
The errors and latency page (audit_app.errors) shares the periods, filters and
page frame (render_page).
"""
from __future__ import annotations

import contextvars
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Model, Sum
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.urls import NoReverseMatch, get_resolver, get_script_prefix, get_urlconf, reverse

from proxy_app.models import RelayKey

from . import budgets
from .models import ApiCall, UsageDaily

PRESETS: dict[str, str] = {
    "today": "Today",
    "yesterday": "Yesterday",
    "this-month": "This month",
    "last-month": "Last month",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "custom": "Custom range",
}
DEFAULT_PRESET = "this-month"
# One bar per day: past a year the chart's bars would be hairlines.
MAX_DAYS = 366
TOP = 10
# Choices in the filter bar's lists (users, keys, models, families).
CHOICES_LIMIT = 100
# The breakdown is a table a person reads; past this many rows the changelist is the tool.
BREAKDOWN_ROWS = 200
# Models drawn in their own colour; the rest share OTHER_COLOR. Colour-blind-safe
# hues of medium lightness, legible on the admin's light and dark themes.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")
OTHER_COLOR = "#9c9c9c"
OTHER_LABEL = "other models"
NO_MODEL_LABEL = "(no model)"

_SUMS = ("calls", "input_tokens", "cached_input_tokens", "output_tokens", "total_tokens",
         "cost", "unpriced_calls", "unknown_calls")


class PeriodError(ValueError):
    """A period the picker cannot show; the message is meant for the admin user."""


@dataclass(frozen=True)
class Period:
    preset: str
    start: date
    end: date  # inclusive

    @property
    def label(self) -> str:
        return PRESETS[self.preset]

    @property
    def day_count(self) -> int:
        return (self.end - self.start).days + 1

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.day_count)]


def parse_period(params: Mapping[str, str], today: date) -> Period:
    """The period asked for in the query string (`period`, `from`, `to`).

    `from`/`to` without `period` mean a custom range. Raises PeriodError with a
    message fit to show when the input cannot be a period.
    """
    preset = (params.get("period") or "").strip()
    raw_from, raw_to = (params.get("from") or "").strip(), (params.get("to") or "").strip()
    if not preset:
        preset = "custom" if (raw_from or raw_to) else DEFAULT_PRESET
    if preset not in PRESETS:
        raise PeriodError(f"Unknown period {preset!r}; choose one of: {', '.join(PRESETS)}.")
    if preset == "today":
        return Period(preset, today, today)
    if preset == "yesterday":
        return Period(preset, today - timedelta(days=1), today - timedelta(days=1))
    if preset == "this-month":
        return Period(preset, today.replace(day=1), today)
    if preset == "last-month":
        end = today.replace(day=1) - timedelta(days=1)
        return Period(preset, end.replace(day=1), end)
    if preset in ("7d", "30d"):
        return Period(preset, today - timedelta(days=int(preset[:-1]) - 1), today)
    if not raw_from or not raw_to:
        raise PeriodError("A custom range needs both a start and an end date (YYYY-MM-DD).")
    start, end = _parse_date(raw_from, "start"), _parse_date(raw_to, "end")
    if start > end:
        raise PeriodError(f"The start date ({start}) is after the end date ({end}).")
    if (end - start).days + 1 > MAX_DAYS:
        raise PeriodError(f"A custom range covers at most {MAX_DAYS} days.")
    return Period(preset, start, end)


def _parse_date(value: str, which: str) -> date:
    try:
        if len(value) != 10:
            raise ValueError(value)
        parsed = date.fromisoformat(value)
        # A period's end is followed by a day boundary: 9999-12-31 has none.
        if not date(1970, 1, 1) <= parsed < date(9999, 12, 31):
            raise ValueError(value)
        return parsed
    except ValueError:
        raise PeriodError(f"The {which} date {value[:20]!r} is not a date like 2025-01-31.") from None


# --- Filters: who, which key, which model, which endpoint family -------------------------


@dataclass(frozen=True)
class Scope:
    """The dashboard's filters, as the changelists' own query parameters name them."""

    user_id: int | None = None
    key_id: int | None = None
    model: str | None = None
    family: str | None = None

    PARAMS = {"user_id": "user__id__exact", "key_id": "key__id__exact", "model": "model__exact",
              "family": "family__exact"}

    @property
    def lookups(self) -> dict[str, object]:
        """For UsageDaily (and CallStatsDaily, whose columns have the same names)."""
        return {name: value for name, value in self.as_dict().items() if value is not None}

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def params(self) -> dict[str, object]:
        """The changelists' query parameters for these filters."""
        return {self.PARAMS[name]: value for name, value in self.lookups.items()}

    def __bool__(self) -> bool:
        return bool(self.lookups)


def parse_scope(params: Mapping[str, str]) -> Scope:
    values: dict[str, object] = {}
    for name, param in Scope.PARAMS.items():
        raw = (params.get(param) or "").strip()
        if not raw:
            continue
        if name.endswith("_id"):
            if not raw.isdigit() or len(raw) > 18:
                raise PeriodError(f"The filter {param} must be an id (a number), not {raw[:20]!r}.")
            values[name] = int(raw)
        else:
            values[name] = raw[:128]
    return Scope(**values)


# --- Links to the changelists behind the figures ------------------------------------

_CHANGELISTS: dict[tuple, str | None] = {}
# The models whose changelist the current user may open (set by the views): a figure
# never links to a page that would answer 403. None: no restriction (tests, scripts).
VISIBLE_MODELS: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "relay_visible_models", default=None)


def visible_models(user) -> frozenset[str]:
    from django.apps import apps

    return frozenset(m._meta.label for m in apps.get_models()
                     if user.has_perm(f"{m._meta.app_label}.view_{m._meta.model_name}"))


def changelist_url(model: type[Model], params: Mapping[str, object]) -> str | None:
    """The model's admin changelist with these lookups, or None when it is not in the admin
    or the current user may not view it."""
    visible = VISIBLE_MODELS.get()
    if visible is not None and model._meta.label not in visible:
        return None
    # A page has hundreds of links and reverse() costs ~0.1 ms: resolve each changelist
    # once per URLconf (its resolver is rebuilt whenever the URLconf changes).
    key = (model._meta.label, get_resolver(get_urlconf()), get_script_prefix())
    if key not in _CHANGELISTS:
        try:
            _CHANGELISTS[key] = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        except NoReverseMatch:
            _CHANGELISTS[key] = None
    base = _CHANGELISTS[key]
    if base is None:
        return None
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{base}?{query}" if query else base


def _scoped(scope: Scope | None, **narrower: object) -> dict[str, object]:
    """The scope's parameters, narrowed by a line's own (its user, key or model)."""
    params = scope.params() if scope else {}
    for name, value in narrower.items():
        if value is not None:
            params[Scope.PARAMS[name]] = value
    return params


def usage_url(start: date, end: date, *, user_id: int | None = None, model: str | None = None,
              key_id: int | None = None, scope: Scope | None = None) -> str | None:
    # `__gte` and `__lt` (the day after): the parameters of the changelists' own date filter
    # (admin_toolkit.DateRangeFilter), which then shows the period as selected.
    return changelist_url(UsageDaily, {
        "date__gte": start.isoformat(), "date__lt": (end + timedelta(days=1)).isoformat(),
        **_scoped(scope, user_id=user_id, key_id=key_id, model=model),
    })


def calls_url(start: date, end: date, *, user_id: int | None = None, model: str | None = None,
              key_id: int | None = None, unpriced: bool = False, scope: Scope | None = None,
              with_key: bool = True, **extra: object) -> str | None:
    # Plain dates mean local midnight to the date filter, as they do to the rollups
    # (rollups.bucket_date): the calls listed are exactly those counted in these days.
    return changelist_url(ApiCall, {
        "started_at__gte": start.isoformat(),
        "started_at__lt": (end + timedelta(days=1)).isoformat(),
        # Calls refused before authentication belong to nobody and are not in the rollups.
        "key__isnull": "False" if with_key else None,
        **_scoped(scope, user_id=user_id, key_id=key_id, model=model),
        "unpriced__exact": 1 if unpriced else None,
        **extra,
    })


# --- Figures --------------------------------------------------------------------------

@dataclass
class Figures:
    """Sums of rollup rows. Unpriced calls are counted, never folded into cost as $0."""

    calls: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost: Decimal = Decimal(0)
    unpriced_calls: int = 0
    unknown_calls: int = 0

    @property
    def cost_known(self) -> bool:
        """False when no call has a known cost but some have an unknown one (unpriced, or
        usage unknown): the cost is unknown, not $0. Refused and free calls, which the
        rollups count too, cost nothing and do not make an unknown cost known."""
        return self.cost > 0 or not (self.unpriced_calls + self.unknown_calls)

    def add(self, row: Mapping[str, object]) -> None:
        for name in _SUMS:
            setattr(self, name, getattr(self, name) + (row.get(name) or 0))


@dataclass
class Line:
    """One row of a table: a user, a model, or a user and a model, with links."""

    label: str
    figures: Figures
    usage_url: str | None
    calls_url: str | None
    unpriced_url: str | None
    share: float = 0.0  # of the period's cost, for the table's bar (display only)
    model_label: str = ""


@dataclass
class Segment:
    model: str
    label: str
    color: str
    cost: Decimal
    calls: int
    url: str | None


@dataclass
class Day:
    day: date
    cost: Decimal
    calls: int
    unpriced_calls: int
    segments: list[Segment]
    url: str | None
    # How the day compares with OpenAI's own figures, when reconcile_usage found it differing
    # ("differs", "outside", "relay_only"); "" when matched or not reconciled.
    reconciliation: str = ""
    reconciliation_url: str | None = None


@dataclass
class LegendItem:
    label: str
    color: str


@dataclass
class Dashboard:
    period: Period
    totals: Figures
    days: list[Day]
    legend: list[LegendItem]
    top_users: list[Line]
    top_models: list[Line]
    breakdown: list[Line]
    breakdown_rows: int  # before truncation
    links: dict[str, str | None] = field(default_factory=dict)
    by_key: list[Line] = field(default_factory=list)
    scope: Scope = field(default_factory=Scope)


def model_label(model: str) -> str:
    return model or NO_MODEL_LABEL


def build_dashboard(period: Period, scope: Scope = Scope()) -> Dashboard:
    rows = UsageDaily.objects.filter(date__gte=period.start, date__lte=period.end, **scope.lookups)
    sums = {name: Sum(name) for name in _SUMS}
    by_day_model = list(rows.values("date", "model").annotate(**sums).order_by())
    by_user_model = list(rows.values("user_id", "model").annotate(**sums).order_by())
    by_key_rows = list(rows.values("key_id").annotate(**sums).order_by())

    totals = Figures()
    per_model: dict[str, Figures] = {}
    for r in by_day_model:
        totals.add(r)
        per_model.setdefault(r["model"], Figures()).add(r)
    per_user: dict[int, Figures] = {}
    for r in by_user_model:
        per_user.setdefault(r["user_id"], Figures()).add(r)

    usernames = dict(get_user_model().objects.filter(pk__in=per_user).values_list("pk", "username"))
    start, end = period.start, period.end

    def share(cost: Decimal) -> float:
        return float(cost / totals.cost) if totals.cost > 0 else 0.0

    def line(label: str, figures: Figures, *, user_id: int | None = None, model: str | None = None,
             key_id: int | None = None) -> Line:
        who = dict(user_id=user_id, model=model, key_id=key_id, scope=scope)
        return Line(
            label=label, figures=figures, share=share(figures.cost),
            usage_url=usage_url(start, end, **who),
            calls_url=calls_url(start, end, **who),
            unpriced_url=calls_url(start, end, unpriced=True, **who),
        )

    ranked_models = sorted(per_model, key=lambda m: (-per_model[m].cost, -per_model[m].calls, m))
    ranked_users = sorted(per_user, key=lambda u: (-per_user[u].cost, -per_user[u].calls,
                                                   usernames.get(u, "")))
    top_models = [line(model_label(m), per_model[m], model=m) for m in ranked_models[:TOP]]
    top_users = [line(usernames.get(u, f"user #{u}"), per_user[u], user_id=u) for u in ranked_users[:TOP]]

    breakdown_sorted = sorted(
        by_user_model,
        key=lambda r: (-(r["cost"] or 0), -(r["calls"] or 0), usernames.get(r["user_id"], ""), r["model"]),
    )
    breakdown = []
    for r in breakdown_sorted[:BREAKDOWN_ROWS]:
        figures = Figures()
        figures.add(r)
        item = line(usernames.get(r["user_id"], f"user #{r['user_id']}"), figures,
                    user_id=r["user_id"], model=r["model"])
        item.model_label = model_label(r["model"])
        breakdown.append(item)

    from proxy_app.models import RelayKey

    keys = {k.pk: k for k in RelayKey.objects.select_related("owner").filter(
        pk__in=[r["key_id"] for r in by_key_rows])}
    by_key = []
    for r in sorted(by_key_rows, key=lambda r: (-(r["cost"] or 0), -(r["calls"] or 0), r["key_id"])):
        figures = Figures()
        figures.add(r)
        key = keys.get(r["key_id"])
        item = line(str(key) if key else f"key #{r['key_id']}", figures, key_id=r["key_id"])
        item.model_label = key.owner.get_username() if key else ""
        by_key.append(item)

    # Only models that cost something get a colour: a chart of spend has nothing to draw for the rest.
    charted = [m for m in ranked_models if per_model[m].cost > 0]
    colors = {m: PALETTE[i] for i, m in enumerate(charted[:len(PALETTE)])}
    legend = [LegendItem(model_label(m), colors[m]) for m in charted[:len(PALETTE)]]
    if len(charted) > len(PALETTE):
        legend.append(LegendItem(OTHER_LABEL, OTHER_COLOR))

    return Dashboard(
        period=period, totals=totals, legend=legend,
        days=_days(period, by_day_model, colors, scope),
        top_users=top_users, top_models=top_models,
        breakdown=breakdown, breakdown_rows=len(by_user_model), by_key=by_key[:BREAKDOWN_ROWS], scope=scope,
        links={
            "usage": usage_url(start, end, scope=scope),
            "calls": calls_url(start, end, scope=scope),
            "unpriced": calls_url(start, end, unpriced=True, scope=scope),
        },
    )


def _reconciliation_url(day: date) -> str:
    from .models import ReconciledDay

    return changelist_url(ReconciledDay, {"date": day.isoformat()})


def _days(period: Period, by_day_model: list[dict], colors: dict[str, str], scope: Scope = Scope()) -> list[Day]:
    """One entry per day of the period, days without usage included (drawn empty)."""
    cells: dict[date, list[dict]] = {}
    for r in by_day_model:
        cells.setdefault(r["date"], []).append(r)
    stack_order = {model: i for i, model in enumerate(colors)}
    from .reconciliation import days_differing

    differing = days_differing(period.start, period.end)
    days = []
    for day in period.days():
        segments: list[Segment] = []
        other = Segment("", OTHER_LABEL, OTHER_COLOR, Decimal(0), 0, usage_url(day, day, scope=scope))
        calls = unpriced = 0
        # Stacked in legend order, biggest spender at the bottom, "other" on top.
        for r in sorted(cells.get(day, []), key=lambda r: stack_order.get(r["model"], len(colors))):
            calls += r["calls"] or 0
            unpriced += r["unpriced_calls"] or 0
            cost = r["cost"] or Decimal(0)
            if cost <= 0:
                continue
            if r["model"] in colors:
                segments.append(Segment(r["model"], model_label(r["model"]), colors[r["model"]], cost,
                                        r["calls"] or 0, usage_url(day, day, model=r["model"], scope=scope)))
            else:
                other.cost += cost
                other.calls += r["calls"] or 0
        if other.cost > 0:
            segments.append(other)
        days.append(Day(day, sum((s.cost for s in segments), Decimal(0)), calls, unpriced, segments,
                        usage_url(day, day, scope=scope), differing.get(day, ""),
                        _reconciliation_url(day) if day in differing else None))
    return days


# ============================================================================
# How the dashboard writes money and counts: Decimal in, text out, no float on the way.
# ============================================================================

CENT = Decimal("0.01")
SMALL = Decimal("0.0001")


def format_usd(value: Decimal | None) -> str:
    """Dollars and cents; amounts under a cent keep four decimals (an embedding call costs $0.0000004)."""
    if value is None:
        return "—"
    value = Decimal(value)
    if value == 0:
        return "$0.00"
    if abs(value) < SMALL:
        return "< $0.0001"
    quantum = CENT if abs(value) >= CENT else SMALL
    return f"${value.quantize(quantum, rounding=ROUND_HALF_UP):,}"


def format_int(value: int | None) -> str:
    return "—" if value is None else f"{int(value):,}"


# ============================================================================
# The spend chart: spend per day, stacked by model, as server-rendered SVG
# (templates/admin/relay_spend_chart.html). No JavaScript and nothing from a CDN:
# the chart works with scripts off, and its tooltips are SVG <title>s. Colours of
# text and lines come from the admin's CSS variables (audit_app/static/audit_app/
# dashboard.css), so it follows the light and dark themes; only model colours are fixed.
# Here only the geometry is computed; the template writes (and escapes) the SVG.
# ============================================================================

CHART_WIDTH, CHART_HEIGHT = 960, 300
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 64, 12, 14, 46  # margins
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


def tick_labels(ticks: list[Decimal]) -> list[str]:
    """Same decimals on every tick: none for whole-dollar steps, else cents, or more under a cent."""
    step = ticks[1] - ticks[0]
    places = 0 if step == step.to_integral_value() else max(2, -step.normalize().as_tuple().exponent)
    return ["$0" if not t else f"${t:,.{places}f}" for t in ticks]


def _px(value: float) -> str:
    return f"{value:.1f}"


def spend_chart(days: list[Day], *, timezone_name: str) -> dict[str, Any]:
    """Positions (as SVG attribute strings) and tooltips of every grid line, bar and label."""
    plot_w, plot_h = CHART_WIDTH - CHART_LEFT - CHART_RIGHT, CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    peak = max((d.cost for d in days), default=Decimal(0))
    ticks = nice_ticks(peak)
    top_value = ticks[-1]
    slot = plot_w / max(len(days), 1)
    # With only a few days each bar would span a tenth of the plot or more: cap them.
    bar_w = min(max(slot * 0.72, 1.0), 56.0)

    def y(value: Decimal) -> float:
        return CHART_TOP + plot_h - float(value / top_value) * plot_h

    grid = [{"y": _px(y(t)), "label_y": _px(y(t) + 4), "label": label} for t, label in zip(ticks, tick_labels(ticks))]
    every = max(1, math.ceil(len(days) / MAX_X_LABELS))
    columns = []
    for i, day in enumerate(days):
        x0 = CHART_LEFT + i * slot
        bx = x0 + (slot - bar_w) / 2
        summary = f"{day.day:%a %d %b %Y}: {format_usd(day.cost)}, {format_int(day.calls)} calls"
        if day.unpriced_calls:
            summary += f", {format_int(day.unpriced_calls)} unpriced"
        if not day.calls:
            summary = f"{day.day:%a %d %b %Y}: no calls"
        if day.reconciliation:
            summary += f"; differs from OpenAI's figures ({day.reconciliation.replace('_', ' ')})"
        segments, base = [], Decimal(0)
        for seg in day.segments:
            y_top, y_bottom = y(base + seg.cost), y(base)
            base += seg.cost
            segments.append({
                "x": _px(bx), "y": _px(y_top), "height": _px(max(y_bottom - y_top, 0.5)), "color": seg.color,
                "url": seg.url,
                "title": f"{day.day:%d %b %Y} · {seg.label}: {format_usd(seg.cost)} ({format_int(seg.calls)} calls)",
            })
        columns.append({
            # The whole column is a hover target: empty days have a tooltip too.
            "x": _px(x0), "width": _px(slot), "url": day.url, "summary": summary, "segments": segments,
            "bar_width": _px(bar_w), "center": _px(x0 + slot / 2),
            "label": f"{day.day:%b} {day.day.day}" if i % every == 0 else "",
            # A red mark above the bar: reconcile_usage found this day differing from OpenAI's.
            "differs": (f"{day.day:%d %b %Y}: differs from OpenAI ({day.reconciliation.replace('_', ' ')})"
                        if day.reconciliation else ""),
            "differs_url": day.reconciliation_url,
        })
    return {
        "width": CHART_WIDTH, "height": CHART_HEIGHT, "left": CHART_LEFT, "right": CHART_WIDTH - CHART_RIGHT,
        "top": CHART_TOP, "bottom": CHART_TOP + plot_h, "plot_height": plot_h, "mark_y": CHART_TOP - 6,
        "tick_x": CHART_LEFT - 6, "x_label_y": CHART_TOP + plot_h + 16, "axis_title_y": CHART_HEIGHT - 6,
        "middle_x": _px(CHART_LEFT + plot_w / 2), "middle_y": _px(CHART_TOP + plot_h / 2),
        "grid": grid, "columns": columns, "timezone_name": timezone_name, "empty": peak <= 0,
    }


# ============================================================================
# The pages (wrapped in admin.site.admin_view in relay_project/urls.py).
# ============================================================================

PERMISSION = "audit_app.view_usagedaily"


def filter_choices(scope: Scope) -> dict[str, list[tuple[str, str]]]:
    """The filter bar's choices, from the small tables (key owners, keys, the rollups)."""
    owners = get_user_model().objects.filter(pk__in=RelayKey.objects.values("owner_id")).order_by("username")
    keys = RelayKey.objects.select_related("owner").order_by("owner__username", "-created_at")
    if scope.user_id is not None:
        keys = keys.filter(owner_id=scope.user_id)

    def distinct(field: str) -> list[str]:
        return list(UsageDaily.objects.exclude(**{field: ""}).order_by(field)
                    .values_list(field, flat=True).distinct()[:CHOICES_LIMIT])

    return {
        "user": [(str(u.pk), u.get_username()) for u in owners[:CHOICES_LIMIT]],
        "key": [(str(k.pk), f"{k} — {k.owner.get_username()}") for k in keys[:CHOICES_LIMIT]],
        "model": [(m, m) for m in distinct("model")],
        "family": [(f, f) for f in distinct("family")],
    }


def render_page(request: HttpRequest, permission: str, title: str, template: str, build) -> TemplateResponse:
    # Wrapped in admin.site.admin_view (urls.py): anonymous and non-staff users go to the login.
    if not request.user.has_perm(permission):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": title,
        "presets": PRESETS,
        "query": request.GET,
        "timezone_name": settings.TIME_ZONE,
    }
    token = VISIBLE_MODELS.set(visible_models(request.user))
    try:
        try:
            period = parse_period(request.GET, timezone.localdate())
            scope = parse_scope(request.GET)
        except PeriodError as exc:
            context.update(error=str(exc), choices=filter_choices(Scope()))
            return TemplateResponse(request, template, context, status=400).render()
        context.update(period=period, scope=scope, choices=filter_choices(scope),
                       scope_qs=urlencode(scope.params()), **build(request, period, scope))
        response = TemplateResponse(request, template, context)
        response.render()  # inside the links' permission context
        return response
    finally:
        VISIBLE_MODELS.reset(token)


def usage_dashboard(request: HttpRequest) -> TemplateResponse:
    # Team-wide spend is what the usage rollups hold, so it takes the right to view them.
    def build(request, period, scope):
        dashboard = build_dashboard(period, scope)
        extra = {"dashboard": dashboard,
                 "chart": spend_chart(dashboard.days, timezone_name=settings.TIME_ZONE)}
        if request.user.has_perm("proxy_app.view_relaykey"):
            lines = budgets.budget_lines()
            if scope.user_id is not None or scope.key_id is not None:
                # The budgets over the filtered calls: their keys', their owners' and their teams'.
                keys = RelayKey.objects.filter(**{"owner_id": scope.user_id} if scope.user_id is not None else {},
                                               **{"pk": scope.key_id} if scope.key_id is not None else {})
                over = {("key", pk) for pk in keys.values_list("pk", flat=True)}
                over |= {("user", pk) for pk in [scope.user_id, *keys.values_list("owner_id", flat=True)]}
                over |= {("team", pk) for pk in keys.values_list("team_id", flat=True) if pk is not None}
                lines = [b for b in lines if (b.kind, b.object_id) in over]
            extra["budgets"] = lines
            extra["budget_month"] = budgets.month_start()
        return extra

    return render_page(request, PERMISSION, "Usage dashboard", "admin/relay_dashboard.html", build)
