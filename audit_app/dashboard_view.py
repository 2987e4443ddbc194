"""The usage dashboard and the errors and latency view: thin views over audit_app.dashboard
and audit_app.errors, with the same period presets and filters (user, key, model, family)."""
from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from proxy_app.models import RelayKey

from . import budget_alerts
from .dashboard import (CHOICES_LIMIT, PRESETS, VISIBLE_MODELS, PeriodError, Scope, build_dashboard,
                        parse_period, parse_scope, visible_models)
from .dashboard_chart import render_spend_chart
from .errors import OUTCOME_COLUMNS, OUTCOME_HEADS, STATUS_CLASSES, build_errors
from .models import UsageDaily

PERMISSION = "audit_app.view_usagedaily"
ERRORS_PERMISSION = "audit_app.view_apicall"


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


def _page(request: HttpRequest, permission: str, title: str, template: str, build) -> TemplateResponse:
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
                 "chart": render_spend_chart(dashboard.days, timezone_name=settings.TIME_ZONE)}
        if request.user.has_perm("proxy_app.view_relaykey"):
            lines = budget_alerts.budget_lines()
            if scope.user_id is not None:
                lines = [b for b in lines if b.owner_id == scope.user_id]
            if scope.key_id is not None:
                lines = [b for b in lines if b.kind == "user" or b.object_id == scope.key_id]
            extra["budgets"] = lines
            extra["budget_month"] = budget_alerts.month_start()
        return extra

    return _page(request, PERMISSION, "Usage dashboard", "admin/relay_dashboard.html", build)


def errors_dashboard(request: HttpRequest) -> TemplateResponse:
    # Error counts and latencies describe calls: the right to view calls.
    def build(request, period, scope):
        return {"report": build_errors(period, scope),
                "outcome_columns": [OUTCOME_HEADS[o] for o in OUTCOME_COLUMNS],
                "status_classes": STATUS_CLASSES}

    return _page(request, ERRORS_PERMISSION, "Errors and latency", "admin/relay_errors.html", build)
