"""The admin toolkit for big tables: every audit changelist stays fast at millions of rows.

Django's changelist was written for tables people page through. On an audit trail
it counts every row, scans for distinct dates and filter choices, and sorts the
filtered set; each of those alone takes seconds at a million calls. This module
holds the replacements, in the order a page uses them:

- CappedPaginator: counts at most COUNT_CAP + 1 rows and says "more than" past that;
- calendar_hierarchy: a date hierarchy from MIN/MAX, not SELECT DISTINCT;
- the filters: choices from small tables (key owners, recent keys, the rollups);
- ReadOnlyAdmin and its ChangeList: read-only, ordered on an index, permission-aware links;
- CsvExportMixin: the filtered changelist as a streamed CSV;
- call_totals, usage_totals: totals above a filtered list, exact from the rollups where
  they answer, otherwise over the first COUNT_CAP rows and labelled so.

Measured at 1,000,000 calls: docs/admin-scale.md (bench/admin_scale.py).
"""
from __future__ import annotations

import calendar
import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.contrib.admin import ShowFacets
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.admin.views.main import ChangeList, ORDER_VAR, SEARCH_VAR
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection, models, transaction
from django.db.models import Count, Q, Sum
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import capfirst

from proxy_app.models import RelayKey

from .dashboard import VISIBLE_MODELS, visible_models
from .models import Billing, UsageDaily


# ============================================================================
# A changelist paginator that never counts a big table to the end.
#
# Django's changelist paginator runs COUNT(*) over the filtered queryset on every
# page view: on millions of audit rows that alone takes seconds. This one counts
# at most CAP + 1 rows (COUNT over a LIMIT subquery, which an index answers in
# milliseconds) and says "more than CAP" past that.
# ============================================================================


COUNT_CAP = 10_000


class CappedPaginator(Paginator):
    cap = COUNT_CAP

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.capped = False

    @cached_property
    def count(self) -> int:
        objects = self.object_list
        if hasattr(objects, "query"):
            # Ordering is irrelevant to a count and would make the database sort.
            n = objects.order_by()[: self.cap + 1].count()
        else:
            n = len(objects)
        self.capped = n > self.cap
        return min(n, self.cap)


# ============================================================================
# A date hierarchy for big tables: a calendar between the first and last row.
#
# Django's date hierarchy lists the years, months or days that have rows with
# SELECT DISTINCT over a date function of every filtered row: a full scan of a
# month of calls at each click. This one asks only for MIN and MAX of the field
# (two index seeks) and offers every year, month or day in between; a day
# without calls just shows an empty list. The query parameters are Django's own
# (`started_at__year`, `__month`, `__day`), so filtering works unchanged.
# ============================================================================


def _local(value: Any) -> date | None:
    if value is None:
        return None
    if hasattr(value, "tzinfo") and timezone.is_aware(value):
        value = timezone.localtime(value)
    return value.date() if hasattr(value, "date") else value


def _int_or_none(value: str | None) -> int | None:
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
    year, month, day = (_int_or_none(cl.params.get(name)) for name in (year_f, month_f, day_f))

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


# ============================================================================
# Changelist filters that stay cheap on millions of audit rows.
#
# Django's default filters list their choices with SELECT DISTINCT over the
# filtered table (a full scan of the calls) and render every related object (all
# users). These take their choices from small tables instead: key owners, recent
# keys, the daily rollups. Their query parameters are plain ORM lookups
# (`user__id__exact`, `model__exact`, `started_at__gte`, ...), so any page (the
# dashboard included) can link to a filtered changelist by building a query string.
# ============================================================================


CHOICES_LIMIT = 100


def _id(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise IncorrectLookupParameters(f"not an id: {value!r}") from None


# --- date range ----------------------------------------------------------------


def _bound(value: str, field: models.Field) -> date | datetime:
    """A YYYY-MM-DD date (midnight, local time) or an ISO datetime."""
    try:
        return _parse_bound(value, isinstance(field, models.DateTimeField))
    except (ValueError, OverflowError):  # well-formed but impossible: 2025-02-30, year 0
        raise IncorrectLookupParameters(f"not a date: {value!r}") from None


def _parse_bound(value: str, is_datetime: bool) -> date | datetime:
    parsed_date = parse_date(value) if len(value) == 10 else None
    if parsed_date is not None:
        if not is_datetime:
            return parsed_date
        return timezone.make_aware(datetime.combine(parsed_date, time.min))
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError(value)
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed if is_datetime else timezone.localtime(parsed).date()


class DateRangeFilter(admin.ListFilter):
    """`<field>__gte` (from, inclusive) and `<field>__lt` (before, exclusive), with presets."""

    template = "admin/audit_app/date_range_filter.html"
    field_path = ""

    def __init__(self, request, params, model, model_admin) -> None:
        super().__init__(request, params, model, model_admin)
        self.field = _resolve(model, self.field_path)
        self.gte, self.lt = f"{self.field_path}__gte", f"{self.field_path}__lt"
        for name in (self.gte, self.lt):
            if name in params:
                self.used_parameters[name] = params.pop(name)[-1]

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str]:
        return [self.gte, self.lt]

    def queryset(self, request, queryset):
        lookups = {name: _bound(value, self.field) for name, value in self.used_parameters.items() if value}
        return queryset.filter(**lookups) if lookups else queryset

    def choices(self, changelist) -> Any:
        today = timezone.localdate()
        month = today.replace(day=1)
        last_month = (month - timedelta(days=1)).replace(day=1)
        presets = [
            ("Today", today, today + timedelta(days=1)),
            ("Yesterday", today - timedelta(days=1), today),
            ("Last 7 days", today - timedelta(days=6), today + timedelta(days=1)),
            ("Last 30 days", today - timedelta(days=29), today + timedelta(days=1)),
            ("This month", month, today + timedelta(days=1)),
            ("Last month", last_month, month),
        ]
        current = (self.used_parameters.get(self.gte, ""), self.used_parameters.get(self.lt, ""))
        yield {
            "form": True,
            "gte_name": self.gte, "lt_name": self.lt, "gte": current[0], "lt": current[1],
            # The form submits with the changelist's other filters kept.
            "hidden": [(k, v) for k, v in changelist.params.items() if k not in (self.gte, self.lt, "p")],
            "clear": changelist.get_query_string(remove=[self.gte, self.lt]),
        }
        yield {"selected": not any(current), "display": "Any date",
               "query_string": changelist.get_query_string(remove=[self.gte, self.lt])}
        for label, start, end in presets:
            values = (start.isoformat(), end.isoformat())
            yield {"selected": current == values, "display": label,
                   "query_string": changelist.get_query_string({self.gte: values[0], self.lt: values[1]})}


def date_range(field_path: str, title: str | None = None) -> type[DateRangeFilter]:
    return type("DateRangeFilter", (DateRangeFilter,), {
        "field_path": field_path, "title": title or field_path.replace("__", " ").replace("_", " "),
    })


def _resolve(model: type[models.Model], path: str) -> models.Field:
    from django.contrib.admin.utils import get_fields_from_path

    return get_fields_from_path(model, path)[-1]


# --- users and keys: choices from the small tables -----------------------------------


class _BoundedFilter(admin.SimpleListFilter):
    """A filter on a related id whose choices are a bounded list, plus the selected one."""

    field_path = ""

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(**{f"{self.field_path}_id": _id(value)}) if value else queryset


class UserFilter(_BoundedFilter):
    title = "user"

    def lookups(self, request, model_admin):
        User = get_user_model()
        # Users who hold a key: the people who make calls. Bounded for big teams;
        # anyone else is reachable through search or a link.
        owners = User.objects.filter(pk__in=RelayKey.objects.values("owner_id")).order_by("username")
        users = list(owners[:CHOICES_LIMIT])
        selected = self.value()
        if selected and selected.isdigit() and all(str(u.pk) != selected for u in users):
            users += list(User.objects.filter(pk=int(selected)))
        return [(u.pk, u.get_username()) for u in users]


class KeyFilter(_BoundedFilter):
    title = "key"
    user_parameter = ""

    def lookups(self, request, model_admin):
        keys = RelayKey.objects.select_related("owner").order_by("-created_at")
        user = request.GET.get(self.user_parameter) if self.user_parameter else None
        if user and user.isdigit():
            keys = keys.filter(owner_id=int(user))
        shown = list(keys[:CHOICES_LIMIT])
        selected = self.value()
        if selected and selected.isdigit() and all(str(k.pk) != selected for k in shown):
            shown += list(RelayKey.objects.select_related("owner").filter(pk=int(selected)))
        return [(k.pk, f"{k} — {k.owner.get_username()}") for k in shown]


def user_filter(field_path: str, title: str = "user") -> type[UserFilter]:
    return type("UserFilter", (UserFilter,), {
        "field_path": field_path, "parameter_name": f"{field_path}__id__exact", "title": title,
    })


def key_filter(field_path: str, user_field: str = "", title: str = "key") -> type[KeyFilter]:
    return type("KeyFilter", (KeyFilter,), {
        "field_path": field_path, "parameter_name": f"{field_path}__id__exact", "title": title,
        "user_parameter": f"{user_field}__id__exact" if user_field else "",
    })


class SelectedOnlyFilter(_BoundedFilter):
    """For links such as "results of this batch": shows the object filtered on, and a way back."""

    related_model: type[models.Model] = models.Model

    def lookups(self, request, model_admin):
        value = self.value()
        if not (value and value.isdigit()):
            return []
        return [(obj.pk, str(obj)) for obj in self.related_model.objects.filter(pk=int(value))]


def selected_only_filter(field_path: str, related_model: type[models.Model], title: str) -> type[SelectedOnlyFilter]:
    return type("SelectedOnlyFilter", (SelectedOnlyFilter,), {
        "field_path": field_path, "parameter_name": f"{field_path}__id__exact", "title": title,
        "related_model": related_model,
    })


# --- model and endpoint family: choices from the daily rollups ---------------------------


class RollupValuesFilter(admin.SimpleListFilter):
    """Values seen in the daily rollups (thousands of rows, not millions)."""

    rollup_field = ""

    def lookups(self, request, model_admin):
        values = (UsageDaily.objects.exclude(**{self.rollup_field: ""}).order_by(self.rollup_field)
                  .values_list(self.rollup_field, flat=True).distinct()[:CHOICES_LIMIT])
        values = list(values)
        selected = self.value()
        if selected and selected not in values:
            values.append(selected)
        return [(v, v) for v in values]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(**{self.parameter_name: value}) if value is not None else queryset


def rollup_values_filter(field: str, title: str, rollup_field: str | None = None) -> type[RollupValuesFilter]:
    return type("RollupValuesFilter", (RollupValuesFilter,), {
        "rollup_field": rollup_field or field, "parameter_name": f"{field}__exact", "title": title,
    })


# --- status class, errors, slow calls: the errors and latency view's links ---------------


class StatusClassFilter(admin.SimpleListFilter):
    """`status_class=5xx`: calls whose status sent to the client is in that hundred."""

    title = "status sent"
    parameter_name = "status_class"

    def lookups(self, request, model_admin):
        return [("2xx", "2xx"), ("3xx", "3xx"), ("4xx", "4xx"), ("5xx", "5xx"), ("none", "none")]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if value == "none":
            return queryset.filter(status__isnull=True)
        if len(value) != 3 or not value[0].isdigit() or value[1:] != "xx":
            raise IncorrectLookupParameters(f"not a status class: {value!r}")
        low = int(value[0]) * 100
        return queryset.filter(status__gte=low, status__lt=low + 100)


class OutcomeClassFilter(admin.SimpleListFilter):
    """`outcome_class=error`: the outcomes the error rate counts (audit_app.errors)."""

    title = "errors"
    parameter_name = "outcome_class"

    def lookups(self, request, model_admin):
        return [("error", "errors only")]

    def queryset(self, request, queryset):
        from .errors import ERROR_OUTCOMES

        if self.value() == "error":
            return queryset.filter(outcome__in=[o.value for o in ERROR_OUTCOMES])
        return queryset


class MinMillisecondsFilter(admin.SimpleListFilter):
    """`<field>__gte=<ms>`: calls at least this slow (the p95 figures link here)."""

    field_path = ""
    presets = (1000, 5000, 30000)

    def lookups(self, request, model_admin):
        choices = [(str(ms), f"≥ {ms / 1000:g} s") for ms in self.presets]
        value = self.value()
        if value and value not in dict(choices):
            choices.append((value, f"≥ {value} ms"))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        try:
            ms = float(value)
        except ValueError:
            raise IncorrectLookupParameters(f"not a number of milliseconds: {value!r}") from None
        lookup = {f"{self.field_path}__gte": ms}
        leads_an_index = any(index.fields and index.fields[0] == self.field_path and index.condition is None
                             for index in queryset.model._meta.indexes)
        if not leads_an_index:
            return queryset.filter(**lookup)
        # With an index on the column, a planner without value statistics (SQLite) lists
        # "slower than N" from it and sorts every match by date, whatever their number: fast for
        # the slowest few, seconds when a fifth of the calls match. So ask the index (a bounded,
        # index-only probe) whether more than COUNT_CAP calls match; if so, list them by date
        # as before: the same condition on `column + 0`, which no index answers.
        many = queryset.model._default_manager.filter(**lookup).order_by().values("pk")[COUNT_CAP:COUNT_CAP + 1]
        if many.exists():
            return queryset.alias(_min_ms=models.F(self.field_path) + 0.0).filter(_min_ms__gte=ms)
        return queryset.filter(**lookup)


def min_ms_filter(field_path: str, title: str) -> type[MinMillisecondsFilter]:
    return type("MinMillisecondsFilter", (MinMillisecondsFilter,), {
        "field_path": field_path, "parameter_name": f"{field_path}__gte", "title": title,
    })


class HasFailuresFilter(admin.SimpleListFilter):
    """Batches with at least one failed request, or that failed as a whole."""

    title = "failures"
    parameter_name = "failures"

    def lookups(self, request, model_admin):
        return [("yes", "with failures"), ("no", "without failures")]

    def queryset(self, request, queryset):
        failed = models.Q(request_failed__gt=0) | models.Q(status__in=["failed", "expired"])
        if self.value() == "yes":
            return queryset.filter(failed)
        if self.value() == "no":
            return queryset.exclude(failed)
        return queryset


class ResultErrorFilter(admin.SimpleListFilter):
    """Batch results that are errors: from the error file, or a status of 400 and more."""

    title = "errors"
    parameter_name = "errors"

    def lookups(self, request, model_admin):
        return [("yes", "errors only")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(models.Q(from_error_file=True) | models.Q(status_code__gte=400))
        return queryset


# ============================================================================
# What every audit ModelAdmin shares: read-only, and cheap on big tables.
# ============================================================================


def _visible(model: Any) -> bool:
    """May the current admin user open this model's pages? (True outside an admin view.)"""
    allowed = VISIBLE_MODELS.get()
    return allowed is None or model._meta.label in allowed


def change_url(obj: Any) -> str | None:
    """The object's admin page, or None when the current user may not view it."""
    meta = obj._meta
    if not _visible(obj):
        return None
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


def changelist_url(model: Any, **params: Any) -> str | None:
    """The model's changelist with these filters, or None when the current user may not view it."""
    meta = model._meta
    if not _visible(model):
        return None
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def link(url: str | None, text: Any) -> str:
    """A link, or the bare text when there is no page the user may open: no link leads to a 403."""
    if url is None:
        return format_html("{}", text)
    return format_html('<a href="{}">{}</a>', url, text)


def object_link(obj: Any, text: Any = None) -> str:
    if obj is None:
        return "-"
    return link(change_url(obj), text if text is not None else obj)


class LinkPermissionsMixin:
    """Renders admin pages with the user's view permissions at hand, so that change_url,
    changelist_url and link() offer only pages the user can open. The response is
    rendered here, inside that context, rather than later by the handler."""

    def _with_links(self, request, view, *args, **kwargs):
        token = VISIBLE_MODELS.set(visible_models(request.user))
        try:
            response = view(request, *args, **kwargs)
            if hasattr(response, "render") and not getattr(response, "is_rendered", True):
                response.render()
            return response
        finally:
            VISIBLE_MODELS.reset(token)

    def changelist_view(self, request, extra_context=None):
        return self._with_links(request, super().changelist_view, extra_context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return self._with_links(request, super().changeform_view, object_id, form_url, extra_context)


class IndexedOrderingChangeList(ChangeList):
    """Honours `?o=` only for columns in `sortable_by`: Django itself sorts by any column
    named in the URL, and sorting a million calls by an unindexed column takes seconds."""

    def get_ordering(self, request, queryset):
        order = self.params.get(ORDER_VAR)
        if order and self.sortable_by is not None:
            kept = []
            for part in str(order).split("."):
                index = part.lstrip("-")
                if not index.isdigit() or int(index) >= len(self.list_display):
                    continue
                if self.list_display[int(index)] in self.sortable_by:
                    kept.append(part)
            if kept:
                self.params[ORDER_VAR] = ".".join(kept)
            else:
                self.params.pop(ORDER_VAR, None)
        return super().get_ordering(request, queryset)


class ReadOnlyAdmin(LinkPermissionsMixin, admin.ModelAdmin):
    """Audit rows are never added, edited or deleted in the admin, not even by
    superusers: only the retention command (prune_audit) removes them."""

    actions = None
    paginator = CappedPaginator
    # The full count and facet counts are COUNT(*) over the whole table.
    show_full_result_count = False
    show_facets = ShowFacets.NEVER
    list_per_page = 100
    # Only indexed columns (each admin names its own); the default ordering still applies.
    sortable_by: tuple[str, ...] = ()

    def get_changelist(self, request, **kwargs):
        return IndexedOrderingChangeList

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        return self._with_links(request, self._changelist_view, extra_context)

    def _changelist_view(self, request, extra_context=None):
        response = admin.ModelAdmin.changelist_view(self, request, extra_context)
        context = getattr(response, "context_data", None)
        cl = context.get("cl") if context else None
        if cl is not None:
            # Still lazy: the TemplateResponse renders after this.
            context["calendar"] = calendar_hierarchy(cl)
            if hasattr(self, "export_url"):
                context["export_url"] = self.export_url(cl)
            if hasattr(self, "totals"):
                context["totals"] = self.totals(request, cl)
        return response


# ============================================================================
# Streamed CSV export of a filtered changelist.
#
# `<changelist>/export.csv?<the changelist's query string>` builds the queryset
# through the ModelAdmin's own ChangeList, so search, filters, date hierarchy and
# ordering apply exactly as on the page, then streams it with a server-side
# cursor (`iterator(chunk_size=2000)`): a million rows never sit in memory.
# Columns are listed per admin; secrets (row MACs, key hashes) are never among them.
# ============================================================================


CHUNK_ROWS = 2000
# Spreadsheets run cells starting with these as formulas; filenames and user
# agents come from clients, so they are defused with a leading quote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    """A file-like object whose write() returns the line instead of storing it."""

    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return timezone.localtime(value).isoformat() if timezone.is_aware(value) else value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_lines(header: Iterable[str], rows: Iterable[Iterable[Any]], rows_per_chunk: int = 500) -> Iterator[str]:
    """CSV text in chunks of a few hundred rows (one write per row would be slow)."""
    writer = csv.writer(_Echo())
    buffer = [writer.writerow(list(header))]
    for row in rows:
        buffer.append(writer.writerow([_cell(v) for v in row]))
        if len(buffer) >= rows_per_chunk:
            yield "".join(buffer)
            buffer = []
    if buffer:
        yield "".join(buffer)


def _stream(queryset) -> Iterator[tuple]:
    """Rows through a server-side cursor, CHUNK_ROWS at a time.

    On PostgreSQL outside a transaction Django declares the cursor WITH HOLD,
    which makes the server materialise the whole result before the first row:
    inside one it streams. SQLite streams either way, and a transaction there
    would hold the write lock for the whole download.
    """
    if connection.vendor == "postgresql":
        with transaction.atomic():
            yield from queryset.iterator(chunk_size=CHUNK_ROWS)
    else:
        yield from queryset.iterator(chunk_size=CHUNK_ROWS)


class CsvExportMixin:
    """Adds `export.csv` to a ModelAdmin's URLs and an "Export CSV" link to its changelist.

    `csv_columns` is a sequence of (header, ORM path) pairs read with values_list().
    """

    csv_columns: tuple[tuple[str, str], ...] = ()

    def export_url_name(self) -> str:
        return f"{self.opts.app_label}_{self.opts.model_name}_export"

    def get_urls(self):
        urls = super().get_urls()
        export = path("export.csv", self.admin_site.admin_view(self.export_csv_view), name=self.export_url_name())
        return [export, *urls]  # before the catch-all object URLs

    def export_url(self, cl) -> str:
        return reverse(f"admin:{self.export_url_name()}", current_app=self.admin_site.name) + cl.get_query_string()

    def export_csv_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            cl = self.get_changelist_instance(request)
        except IncorrectLookupParameters as exc:
            return HttpResponseBadRequest(f"Bad filter: {exc}", content_type="text/plain")
        headers, paths = zip(*self.csv_columns)
        rows = _stream(cl.queryset.values_list(*paths))
        response = StreamingHttpResponse(csv_lines(headers, rows), content_type="text/csv; charset=utf-8")
        stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="{self.opts.model_name}-{stamp}.csv"'
        return response


# ============================================================================
# Totals (calls, tokens, cost) above filtered changelists, within the page-time budget.
#
# Exact where a rollup answers the filter (decisions.md, "Totals on filtered lists"):
# the daily-usage list is itself the rollup, and a calls list filtered only by
# whole days, user, key, model and endpoint family (calls made with a key) is
# answered by summing UsageDaily. Any other filter is summed over at most the
# first COUNT_CAP rows of the list, in its order, and labelled so.
# ============================================================================


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
