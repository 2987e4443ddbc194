"""The usage dashboard page of the admin: a thin view over audit_app.dashboard."""
from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from .dashboard import PRESETS, PeriodError, build_dashboard, parse_period
from .dashboard_chart import render_spend_chart

PERMISSION = "audit_app.view_usagedaily"


def usage_dashboard(request: HttpRequest) -> TemplateResponse:
    # Wrapped in admin.site.admin_view (urls.py): anonymous and non-staff users go to the login.
    # Team-wide spend is what the usage rollups hold, so it takes the right to view them.
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Usage dashboard",
        "presets": PRESETS,
        "query": request.GET,
        "timezone_name": settings.TIME_ZONE,
    }
    try:
        period = parse_period(request.GET, timezone.localdate())
    except PeriodError as exc:
        context["error"] = str(exc)
        return TemplateResponse(request, "admin/relay_dashboard.html", context, status=400)
    dashboard = build_dashboard(period)
    context.update(
        dashboard=dashboard,
        period=period,
        chart=render_spend_chart(dashboard.days, timezone_name=settings.TIME_ZONE),
    )
    return TemplateResponse(request, "admin/relay_dashboard.html", context)
