"""Reconciliation: the relay's rollups beside OpenAI's own Usage and Costs APIs.

OpenAI publishes an organization's usage (`/organization/usage/{completions,
embeddings, …}`, grouped by model and project) and its costs
(`/organization/costs`, grouped by project and line item) in daily UTC buckets,
read with an admin key. Finance's question, "does the relay's total match the
invoice?", is answered by comparing:

- units per day × model (× project): tokens in, cached, out; images; characters;
  seconds. Request counts are shown beside them but never decide a state: the relay
  counts every call (refusals, errors and reads too), OpenAI only model requests.
- dollars per day × project, with OpenAI's line items kept for reading.

Dated snapshots fold into their family on both sides (`gpt-4o-mini-2024-07-18`
is `gpt-4o-mini`): the relay records the model a client asked for, OpenAI the
snapshot that served it.

Per project only when every key that spent in the period has a project (its team's,
or OPENAI_PROJECT): otherwise OpenAI's figures are summed over projects, because
the relay cannot say in which of OpenAI's projects its unassigned calls landed.

Everything is fetched before anything is written: a fetch that fails half-way leaves
the previous figures for the period as they were, and the run says why.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from decimal import Decimal
from typing import Any, Callable, Iterator

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from relay_project.lib import upstream
from relay_project.lib.upstream import team_projects_allowed

from .models import Match, ReconciledCost, ReconciledDay, ReconciledUsage, ReconcileRun, UsageDaily
from .pricing import family_of

log = logging.getLogger(__name__)

PAGE_LIMIT = 31  # days per page: OpenAI's maximum for daily usage buckets
# Usage endpoints read, and how each result's fields map onto the relay's units.
USAGE_ENDPOINTS: dict[str, dict[str, str]] = {
    "completions": {"input_tokens": "input_tokens", "input_cached_tokens": "cached_tokens",
                    "output_tokens": "output_tokens"},
    "embeddings": {"input_tokens": "input_tokens"},
    "moderations": {"input_tokens": "input_tokens"},
    "images": {"images": "images"},
    "audio_speeches": {"characters": "characters"},
    "audio_transcriptions": {"seconds": "seconds"},
}
UNITS = ("input_tokens", "cached_tokens", "output_tokens", "images", "characters", "seconds")
# Rollup columns for each unit.
_RELAY_UNITS = {"input_tokens": "input_tokens", "cached_tokens": "cached_input_tokens",
                "output_tokens": "output_tokens", "images": "images", "characters": "characters",
                "seconds": "audio_seconds"}
# Worst first: a day takes the worst state of its rows.
_SEVERITY = [Match.OUTSIDE, Match.DIFFERS, Match.RELAY_ONLY, Match.MATCHED]


class ReconcileError(Exception):
    """OpenAI's figures could not be read; nothing was replaced."""


def model_family(model: str) -> str:
    return family_of(model or "") or (model or "")


@dataclass
class Side:
    requests: int = 0
    units: dict[str, Decimal] = field(default_factory=lambda: {u: Decimal(0) for u in UNITS})

    @property
    def empty(self) -> bool:
        return not any(self.units.values())


@dataclass
class Money:
    cost: Decimal = Decimal(0)
    uncosted_calls: int = 0
    line_items: dict[str, Decimal] = field(default_factory=dict)


# --- OpenAI's side -----------------------------------------------------------------------


def _admin_get(path: str, params: list[tuple[str, Any]]) -> dict:
    """One page from the admin API. The admin key is sent and nowhere else: not in a log,
    not in an error message."""
    url = f"{settings.OPENAI_ADMIN_BASE_URL}{path}"
    headers = {"authorization": f"Bearer {settings.OPENAI_ADMIN_KEY}", "accept-encoding": "identity"}
    if settings.OPENAI_ORGANIZATION:
        headers["openai-organization"] = settings.OPENAI_ORGANIZATION
    try:
        resp = upstream.session().get(url, params=params, headers=headers, timeout=upstream.timeouts())
    except requests.RequestException as exc:
        raise ReconcileError(f"{path}: OpenAI unreachable ({type(exc).__name__})") from None
    if resp.status_code != 200:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        raise ReconcileError(f"{path}: OpenAI answered {resp.status_code}: {_scrub(message)}")
    try:
        page = resp.json()
    except ValueError:
        raise ReconcileError(f"{path}: OpenAI's answer is not JSON") from None
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise ReconcileError(f"{path}: OpenAI's answer is not a page of buckets")
    return page


def _scrub(message: str) -> str:
    import re

    return re.sub(r"\b(sk|tr)-[A-Za-z0-9_*\-]{6,}", "[key]", str(message))[:300]


def buckets(path: str, start: date, end: date, group_by: list[str]) -> Iterator[tuple[date, dict]]:
    """(day, result) for every result of every daily bucket in [start, end], page by page."""
    base: list[tuple[str, Any]] = [
        ("start_time", _epoch(start)), ("end_time", _epoch(end + timedelta(days=1))),
        ("bucket_width", "1d"), ("limit", PAGE_LIMIT), *(("group_by", g) for g in group_by),
    ]
    cursor: str | None = None
    for _ in range(10_000):  # a cursor that never ends is OpenAI's bug, not a reason to hang
        page = _admin_get(path, base + ([("page", cursor)] if cursor else []))
        for bucket in page["data"]:
            if not isinstance(bucket, dict) or not isinstance(bucket.get("start_time"), int):
                raise ReconcileError(f"{path}: a bucket without a start_time")
            day = datetime.fromtimestamp(bucket["start_time"], tz=dt_timezone.utc).date()
            for result in bucket.get("results") or []:
                if isinstance(result, dict):
                    yield day, result
        cursor = page.get("next_page")
        if not page.get("has_more") or not cursor:
            return
    raise ReconcileError(f"{path}: more than 10,000 pages")


def _epoch(day: date) -> int:
    return int(datetime.combine(day, time.min, tzinfo=dt_timezone.utc).timestamp())


def _num(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Decimal(0)
    return Decimal(str(value))


def openai_usage(start: date, end: date, by_project: bool) -> dict[tuple[date, str, str], Side]:
    out: dict[tuple[date, str, str], Side] = defaultdict(Side)
    for endpoint, fields in USAGE_ENDPOINTS.items():
        for day, result in buckets(f"/organization/usage/{endpoint}", start, end, ["model", "project_id"]):
            project = (result.get("project_id") or "") if by_project else ""
            side = out[(day, model_family(result.get("model") or ""), project)]
            side.requests += int(_num(result.get("num_model_requests")))
            for source, unit in fields.items():
                side.units[unit] += _num(result.get(source))
    return out


def openai_costs(start: date, end: date, by_project: bool) -> dict[tuple[date, str], Money]:
    out: dict[tuple[date, str], Money] = defaultdict(Money)
    for day, result in buckets("/organization/costs", start, end, ["project_id", "line_item"]):
        amount = result.get("amount") if isinstance(result.get("amount"), dict) else {}
        currency = str(amount.get("currency") or "usd").lower()
        if currency != "usd":
            raise ReconcileError(f"/organization/costs: a cost in {currency}; the relay keeps USD")
        value = _num(amount.get("value"))
        money = out[(day, (result.get("project_id") or "") if by_project else "")]
        money.cost += value
        item = str(result.get("line_item") or "other")
        money.line_items[item] = money.line_items.get(item, Decimal(0)) + value
    return out


# --- the relay's side --------------------------------------------------------------------


def _relay_project() -> Any:
    """The project each rollup row's calls went to upstream, as a query expression."""
    from django.db.models import Case, CharField, Value, When

    default = Value(settings.OPENAI_PROJECT or "")
    if not team_projects_allowed():
        return default
    return Case(When(~Q(key__team__openai_project_id="") & Q(key__team__isnull=False),
                     then=F("key__team__openai_project_id")), default=default, output_field=CharField())


def relay_rows(start: date, end: date) -> list[dict]:
    sums = {f"s_{col}": Sum(col) for col in (*_RELAY_UNITS.values(), "calls", "cost", "unpriced_calls",
                                              "unknown_calls")}
    return list(
        UsageDaily.objects.filter(date__gte=start, date__lte=end)
        .values("date", "model", project=_relay_project())
        .annotate(**sums)
    )


def compare_by_project(rows: list[dict]) -> bool:
    """Per project only when every row that used anything has a project (vacuously so when the
    relay used nothing: then OpenAI's usage is all outside, and its project worth naming)."""
    return all(r["project"] for r in rows if any(r[f"s_{c}"] for c in _RELAY_UNITS.values()))


def relay_usage(rows: list[dict], by_project: bool) -> dict[tuple[date, str, str], Side]:
    out: dict[tuple[date, str, str], Side] = defaultdict(Side)
    for r in rows:
        side = out[(r["date"], model_family(r["model"]), r["project"] if by_project else "")]
        side.requests += r["s_calls"] or 0
        for unit, col in _RELAY_UNITS.items():
            side.units[unit] += Decimal(r[f"s_{col}"] or 0)
    return out


def relay_costs(rows: list[dict], by_project: bool) -> dict[tuple[date, str], Money]:
    out: dict[tuple[date, str], Money] = defaultdict(Money)
    for r in rows:
        money = out[(r["date"], r["project"] if by_project else "")]
        money.cost += r["s_cost"] or Decimal(0)
        money.uncosted_calls += (r["s_unpriced_calls"] or 0) + (r["s_unknown_calls"] or 0)
    return out


# --- comparing and storing ----------------------------------------------------------------


def usage_state(openai: Side, relay: Side) -> str:
    if openai.units == relay.units:
        return Match.MATCHED
    if relay.empty:
        return Match.OUTSIDE
    if openai.empty:
        return Match.RELAY_ONLY
    return Match.DIFFERS


def cost_state(openai: Decimal, relay: Decimal) -> str:
    tolerance = settings.RELAY_RECONCILE_TOLERANCE_USD
    if abs(openai - relay) <= tolerance:
        return Match.MATCHED
    if relay == 0:
        return Match.OUTSIDE
    if openai == 0:
        return Match.RELAY_ONLY
    return Match.DIFFERS


@dataclass
class Outcome:
    days: int = 0
    states: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_project: bool = False
    findings: list[str] = field(default_factory=list)

    def line(self, run: ReconcileRun) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items())) or "no days"
        scope = "per project" if self.by_project else "over all projects"
        return f"reconcile_usage: {run.period_start}..{run.period_end}, {self.days} days ({counts}), compared {scope}"


def reconcile(start: date, end: date, progress: Callable[[str], None] = lambda m: None) -> tuple[ReconcileRun, Outcome]:
    """Fetch OpenAI's figures for [start, end] (UTC days) and replace the period's reconciliation.

    Raises ReconcileError (after recording the failed run) when OpenAI's figures cannot
    be read in full; the period's previous figures are left as they were.
    """
    if not settings.OPENAI_ADMIN_KEY:
        raise ReconcileError("OPENAI_ADMIN_KEY is not set: the Usage and Costs APIs need an admin key")
    if settings.TIME_ZONE != "UTC":
        # Rollup days follow TIME_ZONE; OpenAI's are UTC: every day near midnight would differ.
        raise ReconcileError(f"TIME_ZONE is {settings.TIME_ZONE!r}: the relay's days would not be "
                             "OpenAI's UTC days (check relay.W003)")
    run = ReconcileRun.objects.create(started_at=timezone.now(), period_start=start, period_end=end,
                                      message="running")
    outcome = Outcome()
    try:
        rows = relay_rows(start, end)
        outcome.by_project = by_project = compare_by_project(rows)
        progress(f"  reading OpenAI's usage ({len(USAGE_ENDPOINTS)} endpoints) for {start}..{end}")
        theirs = openai_usage(start, end, by_project)
        progress("  reading OpenAI's costs")
        their_costs = openai_costs(start, end, by_project)
    except ReconcileError as exc:
        run.finished_at, run.message = timezone.now(), f"failed, previous figures kept: {exc}"[:1024]
        run.save(update_fields=["finished_at", "message"])
        raise
    ours, our_costs = relay_usage(rows, by_project), relay_costs(rows, by_project)
    now = timezone.now()
    with transaction.atomic():
        ReconciledDay.objects.filter(date__gte=start, date__lte=end).delete()
        day = start
        while day <= end:
            _store_day(day, now, by_project, theirs, ours, their_costs, our_costs, outcome)
            day += timedelta(days=1)
        run.finished_at, run.ok, run.days = timezone.now(), True, outcome.days
        run.message = "; ".join(outcome.findings)[:1024]
        run.save(update_fields=["finished_at", "ok", "days", "message"])
    return run, outcome


def _store_day(day: date, now: datetime, by_project: bool, theirs, ours, their_costs, our_costs,
               outcome: Outcome) -> None:
    usage_keys = sorted({k for k in (*theirs, *ours) if k[0] == day})
    cost_keys = sorted({k for k in (*their_costs, *our_costs) if k[0] == day})
    usage_rows, cost_rows = [], []
    for key in usage_keys:
        openai, relay = theirs.get(key, Side()), ours.get(key, Side())
        if openai.empty and relay.empty:
            continue  # calls without usage (reads, refusals): nothing to compare
        state = usage_state(openai, relay)
        usage_rows.append(ReconciledUsage(
            model=key[1], project_id=key[2], status=state, openai_requests=openai.requests,
            relay_requests=relay.requests,
            **{f"{side}_{unit}": int(src.units[unit]) if unit != "seconds" else src.units[unit]
               for side, src in (("openai", openai), ("relay", relay)) for unit in UNITS},
        ))
        if state == Match.OUTSIDE:
            outcome.findings.append(f"{day}: {key[1]} in {key[2] or 'the default project'} used outside the relay")
    for key in cost_keys:
        openai, relay = their_costs.get(key, Money()), our_costs.get(key, Money())
        cost_rows.append(ReconciledCost(
            project_id=key[1], status=cost_state(openai.cost, relay.cost), openai_cost=openai.cost,
            relay_cost=relay.cost, relay_uncosted_calls=relay.uncosted_calls,
            line_items={k: str(v) for k, v in sorted(openai.line_items.items())},
        ))
    if not usage_rows and not cost_rows:
        return
    states = [r.status for r in (*usage_rows, *cost_rows)]
    status = next(s for s in _SEVERITY if s in states)
    openai_cost = sum((r.openai_cost for r in cost_rows), Decimal(0))
    relay_cost = sum((r.relay_cost for r in cost_rows), Decimal(0))
    differing = sorted({r.model for r in usage_rows if r.status != Match.MATCHED})
    summary = f"models differing: {', '.join(differing)}" if differing else ""
    record = ReconciledDay.objects.create(
        date=day, status=status, openai_cost=openai_cost, relay_cost=relay_cost,
        relay_uncosted_calls=sum(r.relay_uncosted_calls for r in cost_rows), by_project=by_project,
        fetched_at=now, summary=summary[:512],
    )
    for row in (*usage_rows, *cost_rows):
        row.day = record
    ReconciledUsage.objects.bulk_create(usage_rows)
    ReconciledCost.objects.bulk_create(cost_rows)
    outcome.days += 1
    outcome.states[status] += 1


def days_differing(start: date, end: date) -> dict[date, str]:
    """For the dashboard: days in [start, end] whose reconciliation is not matched."""
    return dict(ReconciledDay.objects.filter(date__gte=start, date__lte=end)
                .exclude(status=Match.MATCHED).values_list("date", "status"))
