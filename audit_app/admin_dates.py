"""A date hierarchy for big tables: a calendar between the first and last row.

Django's date hierarchy lists the years, months or days that have rows with
SELECT DISTINCT over a date function of every filtered row: a full scan of a
month of calls at each click. This one asks only for MIN and MAX of the field
(two index seeks) and offers every year, month or day in between; a day
without calls just shows an empty list. The query parameters are Django's own
(`started_at__year`, `__month`, `__day`), so filtering works unchanged.
"""
from __future__ import annotations

import calendar
from datetime import date
from typing import Any

from django.contrib.admin.utils import get_fields_from_path
from django.utils import formats, timezone
from django.utils.text import capfirst


def _local(value: Any) -> date | None:
    if value is None:
        return None
    if hasattr(value, "tzinfo") and timezone.is_aware(value):
        value = timezone.localtime(value)
    return value.date() if hasattr(value, "date") else value


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _span(queryset, field_name: str) -> tuple[Any, Any]:
    """The first and last value, as two ORDER BY ... LIMIT 1 queries: each is one
    index seek. (SQLite answers MIN() and MAX() in a single query by scanning.)"""
    values = queryset.filter(**{f"{field_name}__isnull": False}).values_list(field_name, flat=True)
    return values.order_by(field_name).first(), values.order_by(f"-{field_name}").first()


def calendar_hierarchy(cl) -> dict[str, Any] | None:
    """The context of admin/date_hierarchy.html for the changelist `cl`."""
    field_name = cl.date_hierarchy
    if not field_name:
        return None
    get_fields_from_path(cl.model, field_name)  # a typo fails loudly, as Django's would
    year_f, month_f, day_f = (f"{field_name}__{part}" for part in ("year", "month", "day"))
    year, month, day = (_int(cl.params.get(name)) for name in (year_f, month_f, day_f))

    def link(filters: dict[str, Any]) -> str:
        return cl.get_query_string(filters, [f"{field_name}__"])

    first, last = (_local(value) for value in _span(cl.queryset, field_name))
    if first is None:
        return {"show": False}
    if year is None:
        if first.year != last.year:
            return {"show": True, "back": None, "choices": [
                {"link": link({year_f: y}), "title": str(y)} for y in range(first.year, last.year + 1)]}
        year = first.year
        if first.month == last.month:
            month = first.month
    if month is None:
        lo = first.month if first.year == year else 1
        hi = last.month if last.year == year else 12
        return {"show": True, "back": {"link": link({}), "title": "All dates"}, "choices": [
            {"link": link({year_f: year, month_f: m}),
             "title": capfirst(formats.date_format(date(year, m, 1), "YEAR_MONTH_FORMAT"))}
            for m in range(lo, hi + 1)]}
    if day is None:
        lo = first.day if (first.year, first.month) == (year, month) else 1
        hi = last.day if (last.year, last.month) == (year, month) else calendar.monthrange(year, month)[1]
        return {"show": True, "back": {"link": link({year_f: year}), "title": str(year)}, "choices": [
            {"link": link({year_f: year, month_f: month, day_f: d}),
             "title": capfirst(formats.date_format(date(year, month, d), "MONTH_DAY_FORMAT"))}
            for d in range(lo, hi + 1)]}
    try:
        chosen = date(year, month, day)
    except ValueError:
        return {"show": False}
    return {"show": True,
            "back": {"link": link({year_f: year, month_f: month}),
                     "title": capfirst(formats.date_format(chosen, "YEAR_MONTH_FORMAT"))},
            "choices": [{"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}]}
