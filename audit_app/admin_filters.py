"""Changelist filters that stay cheap on millions of audit rows.

Django's default filters list their choices with SELECT DISTINCT over the
filtered table (a full scan of the calls) and render every related object (all
users). These take their choices from small tables instead: key owners, recent
keys, the daily rollups. Their query parameters are plain ORM lookups
(`user__id__exact`, `model__exact`, `started_at__gte`, ...), so any page (the
dashboard included) can link to a filtered changelist by building a query string.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_user_model
from django.db import models
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from proxy_app.models import RelayKey

from .models import UsageDaily

CHOICES_LIMIT = 100


def _int(value: str) -> int:
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
        return queryset.filter(**{f"{self.field_path}_id": _int(value)}) if value else queryset


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
        from .admin_pagination import COUNT_CAP

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
