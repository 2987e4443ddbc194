"""Totals (calls, tokens, cost) above filtered changelists, within the page-time budget.

Exact where a rollup answers the filter (decisions.md, "Totals on filtered lists"):
the daily-usage list is itself the rollup, and a calls list filtered only by
whole days, user, key, model and endpoint family (calls made with a key) is
answered by summing UsageDaily. Any other filter is summed over at most the
first COUNT_CAP rows of the list, in its order, and labelled so.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.contrib.admin.views.main import ORDER_VAR, SEARCH_VAR
from django.db.models import Count, Q, Sum
from django.utils.dateparse import parse_date

from .admin_pagination import COUNT_CAP
from .models import Billing, UsageDaily


@dataclass
class Totals:
    calls: int
    total_tokens: int
    cost: Decimal
    cost_unknown: int  # unpriced or usage unknown: not in the cost
    exact: bool
    note: str


# Calls-list parameters a UsageDaily query answers exactly (values: the rollup lookup).
_ROLLUP_PARAMS = {"user__id__exact": "user_id", "key__id__exact": "key_id", "model__exact": "model",
                  "family__exact": "family"}
_DAY_PARAMS = ("started_at__gte", "started_at__lt", "started_at__year", "started_at__month", "started_at__day")


def _rollup_lookups(params: dict[str, str]) -> dict[str, object] | None:
    """The UsageDaily lookups equal to the calls list's filters, or None when there are none."""
    lookups: dict[str, object] = {}
    with_key = params.get("key__isnull") == "False"
    for name, value in params.items():
        if name in _ROLLUP_PARAMS:
            if name.endswith("id__exact"):
                if not value.isdigit():
                    return None
                with_key = True  # a user's or key's calls are all made with a key
            lookups[_ROLLUP_PARAMS[name]] = value
        elif name == "key__isnull" and value == "False":
            continue
        elif name in ("started_at__gte", "started_at__lt"):
            day = parse_date(value) if len(value) == 10 else None
            if day is None:
                return None  # a time of day: only raw calls answer it
            lookups["date__gte" if name.endswith("gte") else "date__lt"] = day
        elif name in ("started_at__year", "started_at__month", "started_at__day"):
            continue
        elif name in (ORDER_VAR, "p"):
            continue
        else:
            return None
    if not with_key:
        return None  # calls refused before authentication are not in the rollups
    year, month, day = (params.get(f"started_at__{p}") for p in ("year", "month", "day"))
    try:
        if year and month and day:
            first = date(int(year), int(month), int(day))
            lookups.update(date__gte=max(first, lookups.get("date__gte", first)),
                           date__lt=min(first + timedelta(days=1), lookups.get("date__lt", date.max)))
        elif year and month:
            first = date(int(year), int(month), 1)
            nxt = (first + timedelta(days=32)).replace(day=1)
            lookups.update(date__gte=max(first, lookups.get("date__gte", first)),
                           date__lt=min(nxt, lookups.get("date__lt", date.max)))
        elif year:
            first = date(int(year), 1, 1)
            lookups.update(date__gte=max(first, lookups.get("date__gte", first)),
                           date__lt=min(date(int(year) + 1, 1, 1), lookups.get("date__lt", date.max)))
        elif month or day:
            return None
    except (ValueError, OverflowError):
        return None
    return lookups


def _from_rollups(rows) -> Totals:
    sums = rows.aggregate(calls=Sum("calls"), tokens=Sum("total_tokens"), cost=Sum("cost"),
                          unpriced=Sum("unpriced_calls"), unknown=Sum("unknown_calls"))
    return Totals(sums["calls"] or 0, sums["tokens"] or 0, sums["cost"] or Decimal(0),
                  (sums["unpriced"] or 0) + (sums["unknown"] or 0), True, "exact, from the daily usage rollups")


def call_totals(request, cl) -> Totals:
    params = {k: v for k, v in cl.params.items() if k not in (ORDER_VAR, "p")}
    if not params:
        # The unfiltered list, the page opened most: the rollups answer it for every call made
        # with a key, at no cost; the first 10,000 rows of all time would say little.
        totals = _from_rollups(UsageDaily.objects.all())
        totals.note = "all calls made with a relay key, from the daily usage rollups"
        return totals
    if not params.get(SEARCH_VAR):
        params.pop(SEARCH_VAR, None)
        lookups = _rollup_lookups(params)
        if lookups is not None:
            return _from_rollups(UsageDaily.objects.filter(**lookups))
    # Everything else: the first COUNT_CAP rows as listed (an index-ordered scan, bounded).
    cap = getattr(cl.paginator, "cap", COUNT_CAP)
    first = cl.queryset[:cap]
    # The paginator counts at most cap + 1 rows (its count is cached: no second query).
    whole = hasattr(cl.paginator, "capped") and cl.paginator.count <= cap and not cl.paginator.capped
    if whole:
        # The list has at most `cap` rows: sum them all, unordered and unlimited, so that the
        # filter's own index answers (5xx, slow calls) rather than a walk down the date index
        # to the oldest call in search of `cap` matches.
        first = cl.queryset.order_by()
    sums = first.aggregate(
        calls=Count("id"), tokens=Sum("total_tokens"), cost=Sum("cost", filter=Q(billing=Billing.PRICED) | Q(
            billing="", unpriced=False)),
        unknown=Count("id", filter=Q(unpriced=True) | Q(billing=Billing.UNKNOWN)))
    calls = sums["calls"] or 0
    exact = whole or calls < cap
    note = "exact" if exact else f"over the first {cap:,} rows of this list"
    return Totals(calls, sums["tokens"] or 0, sums["cost"] or Decimal(0), sums["unknown"] or 0, exact, note)


def usage_totals(request, cl) -> Totals:
    # The daily usage list is the rollup: its filtered queryset is summed whole.
    return _from_rollups(cl.queryset)
