"""The errors and latency view's figures, from the CallStatsDaily rollups (never raw calls).

Per day and per model: calls by outcome and by status class, the error rate, and
p50/p95 of duration and time to first byte read from summed fixed-edge
histograms (audit_app.latency). An error is a call whose outcome is
upstream_error, rejected, failed or interrupted; client_closed calls are shown
apart (the client left: not the relay's or OpenAI's failure) and count in the
denominator. Every figure links to the calls behind it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from urllib.parse import urlencode

from django.http import HttpRequest
from django.template.response import TemplateResponse

from django.db import connection

from .dashboard import Period, Scope, calls_url, model_label, render_page
from .latency import Histogram
from .models import CallStatsDaily, Outcome
from .models.stats import DURATION_COLUMNS, TTFB_COLUMNS

ERROR_OUTCOMES = (Outcome.UPSTREAM_ERROR, Outcome.REJECTED, Outcome.FAILED, Outcome.INTERRUPTED)
OUTCOME_COLUMNS = (Outcome.OK, Outcome.UPSTREAM_ERROR, Outcome.REJECTED, Outcome.FAILED,
                   Outcome.INTERRUPTED, Outcome.CLIENT_CLOSED)
STATUS_CLASSES = ((2, "2xx"), (3, "3xx"), (4, "4xx"), (5, "5xx"), (0, "none"))
# Short column heads, so that the per-day table fits 1440 px.
OUTCOME_HEADS = {Outcome.OK: "ok", Outcome.UPSTREAM_ERROR: "upstream error", Outcome.REJECTED: "rejected",
                 Outcome.FAILED: "failed", Outcome.INTERRUPTED: "interrupted", Outcome.CLIENT_CLOSED: "client closed"}
PERMISSION = "audit_app.view_apicall"
_SUMS = ("calls", "ttfb_calls", *DURATION_COLUMNS, *TTFB_COLUMNS)


@dataclass
class Cell:
    value: int
    url: str | None


@dataclass
class StatsLine:
    label: str
    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    duration: Histogram = field(default_factory=Histogram.empty)
    ttfb: Histogram = field(default_factory=Histogram.empty)
    # Filled by links(): cells in OUTCOME_COLUMNS and STATUS_CLASSES order.
    outcome_cells: list[Cell] = field(default_factory=list)
    status_cells: list[Cell] = field(default_factory=list)
    calls_url: str | None = None
    errors_url: str | None = None
    slow_url: str | None = None
    slow_ttfb_url: str | None = None

    def add(self, row: dict) -> None:
        n = row["calls"] or 0
        self.calls += n
        self.outcomes[row["outcome"]] = self.outcomes.get(row["outcome"], 0) + n
        self.statuses[row["status_class"]] = self.statuses.get(row["status_class"], 0) + n
        self.duration.add(row["_d"])
        self.ttfb.add(row["_t"])

    @property
    def errors(self) -> int:
        return sum(self.outcomes.get(o, 0) for o in ERROR_OUTCOMES)

    @property
    def error_rate(self) -> Decimal | None:
        """Errors / finished calls, in percent with one decimal; None without calls."""
        if not self.calls:
            return None
        return (Decimal(self.errors * 100) / self.calls).quantize(Decimal("0.1"))

    @property
    def p50(self) -> float | None:
        return self.duration.percentile(50)

    @property
    def p95(self) -> float | None:
        return self.duration.percentile(95)

    @property
    def ttfb_p50(self) -> float | None:
        return self.ttfb.percentile(50)

    @property
    def ttfb_p95(self) -> float | None:
        return self.ttfb.percentile(95)


@dataclass
class ErrorsReport:
    period: Period
    scope: Scope
    total: StatsLine
    days: list[StatsLine]
    models: list[StatsLine]


def _links(line: StatsLine, start: date, end: date, scope: Scope, model: str | None) -> None:
    # The period, scope and model once per line; each figure appends its own filter (a page
    # has some 600 links: encoding them whole took a third of the view's time).
    base = calls_url(start, end, model=model, scope=scope, with_key=False)

    def url(**extra: object) -> str | None:
        return f"{base}&{urlencode(extra)}" if base else None

    line.calls_url = base
    line.errors_url = url(outcome_class="error")
    line.outcome_cells = [Cell(line.outcomes.get(o, 0), url(outcome__exact=o.value)) for o in OUTCOME_COLUMNS]
    line.status_cells = [Cell(line.statuses.get(c, 0), url(status_class=label)) for c, label in STATUS_CLASSES]
    if line.duration.total:
        line.slow_url = url(duration_ms__gte=line.duration.bucket_floor(95))
    if line.ttfb.total:
        line.slow_ttfb_url = url(ttfb_ms__gte=line.ttfb.bucket_floor(95))


def _grouped(period: Period, scope: Scope) -> list[dict]:
    """SUMs per (date, model, outcome, status class), as plain SQL: the ORM's per-value
    converters for 42 summed columns cost more than the query on a month of rows."""
    table = CallStatsDaily._meta.db_table
    where = ["date >= %s", "date <= %s"]
    params: list[object] = [period.start, period.end]
    for column, value in scope.lookups.items():
        where.append(f"{column} = %s")
        params.append(value)
    sums = ", ".join(f"SUM({c})" for c in _SUMS)
    sql = (f"SELECT date, model, outcome, status_class, {sums} FROM {table} WHERE {' AND '.join(where)} "
           "GROUP BY date, model, outcome, status_class")
    n = len(DURATION_COLUMNS)
    rows = []
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for r in cursor.fetchall():
            day = r[0] if isinstance(r[0], date) else date.fromisoformat(str(r[0])[:10])
            rows.append({"date": day, "model": r[1], "outcome": r[2], "status_class": r[3], "calls": r[4],
                         "ttfb_calls": r[5], "_d": r[6:6 + n], "_t": r[6 + n:6 + 2 * n]})
    return rows


def build_errors(period: Period, scope: Scope = Scope()) -> ErrorsReport:
    grouped = _grouped(period, scope)
    total = StatsLine("All calls")
    per_day: dict[date, StatsLine] = {d: StatsLine(f"{d:%a %d %b}") for d in period.days()}
    per_model: dict[str, StatsLine] = {}
    for row in grouped:
        total.add(row)
        per_day[row["date"]].add(row)
        per_model.setdefault(row["model"], StatsLine(model_label(row["model"]))).add(row)
    _links(total, period.start, period.end, scope, None)
    for day, line in per_day.items():
        _links(line, day, day, scope, None)
    for model, line in per_model.items():
        _links(line, period.start, period.end, scope, model)
    models = sorted(per_model.values(), key=lambda m: (-m.errors, -m.calls, m.label))
    return ErrorsReport(period, scope, total, list(reversed(list(per_day.values()))), models)


def format_ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value / 1000:.1f} s" if value < 100_000 else f"{value / 1000:.0f} s"
    return f"{value:.0f} ms"


def errors_dashboard(request: HttpRequest) -> TemplateResponse:
    # Error counts and latencies describe calls: the right to view calls.
    def build(request, period, scope):
        return {"report": build_errors(period, scope),
                "outcome_columns": [OUTCOME_HEADS[o] for o in OUTCOME_COLUMNS],
                "status_classes": STATUS_CLASSES}

    return render_page(request, PERMISSION, "Errors and latency", "admin/relay_errors.html", build)
