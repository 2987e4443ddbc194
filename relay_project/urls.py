from django.contrib import admin
from django.urls import path, re_path

from audit_app import dashboard, errors
from proxy_app import telemetry, views

urlpatterns = [
    path("", views.HealthView.as_view()),
    path("health", views.HealthView.as_view()),
    path("v1/health", views.HealthView.as_view()),
    path("v1/actions/ping", views.PingView.as_view()),
    path("openapi.json", views.ActionsSchemaView.as_view()),
    path(".well-known/ai-plugin.json", views.PluginManifestView.as_view()),
    path("metrics", telemetry.metrics),
    # Before the admin's own URLs, whose catch-all would answer admin/dashboard/ with a 404.
    path("admin/dashboard/", admin.site.admin_view(dashboard.usage_dashboard), name="relay-dashboard"),
    path("admin/errors/", admin.site.admin_view(errors.errors_dashboard), name="relay-errors"),
    path("admin/", admin.site.urls),
    # [\s\S], not ".": a path with an encoded newline must still reach the relay's path checks.
    re_path(r"^v1(?:/[\s\S]*)?\Z", views.RelayView.as_view()),
]

handler400 = "proxy_app.views.bad_request"
handler404 = "proxy_app.views.not_found"
handler500 = "proxy_app.views.server_error"
