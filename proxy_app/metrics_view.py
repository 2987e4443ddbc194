"""GET /metrics for Prometheus, across every gunicorn worker, behind a token or an IP list."""
from __future__ import annotations

import hmac
import os

from django.conf import settings
from django.db.models import Max
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from .errors import error_response


class BatchLagCollector:
    """How long the stalest open batch has gone without a poll: read at scrape time
    from the database, so it is right whichever host runs poll_batches."""

    def collect(self):
        from audit_app.models import BatchRecord
        from audit_app.models.batches import FINAL_STATUSES

        oldest = (
            BatchRecord.objects.exclude(status__in=FINAL_STATUSES)
            .aggregate(t=Max(timezone.now() - Coalesce("last_polled_at", "first_seen_at")))["t"]
        )
        gauge = GaugeMetricFamily("relay_poll_batches_lag_seconds",
                                  "Seconds since the least recently polled open batch was polled.")
        gauge.add_metric([], oldest.total_seconds() if oldest else 0.0)
        yield gauge
        from audit_app.models import AsyncJob

        oldest = (AsyncJob.objects.filter(counted_at__isnull=True)
                  .aggregate(t=Max(timezone.now() - Coalesce("last_polled_at", "first_seen_at")))["t"])
        gauge = GaugeMetricFamily("relay_poll_jobs_lag_seconds",
                                  "Seconds since the least recently polled open background response or "
                                  "video job was polled (poll_batches bills them).")
        gauge.add_metric([], oldest.total_seconds() if oldest else 0.0)
        yield gauge


def _allowed(request: HttpRequest) -> bool:
    token = settings.RELAY_METRICS_TOKEN
    if token:
        scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    return request.META.get("REMOTE_ADDR") in settings.RELAY_METRICS_ALLOWED_IPS


def metrics(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return error_response(405, "Only GET is allowed on /metrics.", code="method_not_allowed")
    if not _allowed(request):
        return error_response(403, "Metrics are available to RELAY_METRICS_ALLOWED_IPS or with "
                                   "RELAY_METRICS_TOKEN.", code="metrics_forbidden")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):
            registry.register(collector)
    registry.register(BatchLagCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
