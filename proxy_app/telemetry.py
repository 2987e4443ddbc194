"""What the relay tells operators about each call: Prometheus metrics, the /metrics
view that serves them, and one JSON log line, both emitted once when the call ends.

Metrics work across gunicorn workers through prometheus-client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, set up by the gunicorn config); /metrics sums
every worker's, behind a token or an IP list. Nothing secret is logged: keys
appear by their visible prefix only.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import time
from typing import Any

from django.conf import settings
from django.db.models import Max
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, multiprocess)
from prometheus_client.core import GaugeMetricFamily

from audit_app.recorder import CallContext
from relay_project.jsonlog import ACCESS_LOGGER
from relay_project.redact import scrub_keys

from .errors import error_response


# ============================================================================
# What the relay tells operators about each call: Prometheus metrics and one
# JSON log line, both emitted once when the call ends.
#
# Metrics work across gunicorn workers through prometheus-client's multiprocess
# mode (PROMETHEUS_MULTIPROC_DIR, set up by the gunicorn config). Nothing
# secret is logged: keys appear by their visible prefix only.
# ============================================================================


access_log = logging.getLogger(ACCESS_LOGGER)

REQUESTS = Counter("relay_requests_total", "Requests answered, by endpoint family, status and outcome.",
                   ["family", "status", "outcome"])
UPSTREAM_LATENCY = Histogram(
    "relay_upstream_latency_seconds", "Time from sending to OpenAI until its response headers.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
OVERHEAD = Histogram(
    "relay_overhead_seconds", "Time the relay spends before forwarding (auth, policy, audit row).",
    buckets=(0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
OPEN_STREAMS = Gauge("relay_open_streams", "Responses being relayed right now.",
                     multiprocess_mode="livesum")
BYTES_IN = Counter("relay_bytes_in_total", "Request body bytes forwarded upstream.")
BYTES_OUT = Counter("relay_bytes_out_total", "Response body bytes sent to clients.")
AUDIT_FAILURES = Counter("relay_audit_write_failures_total", "Audit rows that could not be written.")


def forwarding(ctx: CallContext) -> None:
    """The call is about to go upstream: the relay's own part ends here."""
    ctx.forwarded_at = time.monotonic()
    OVERHEAD.observe(ctx.forwarded_at - ctx.started_monotonic)


def upstream_answered(ctx: CallContext) -> None:
    if ctx.forwarded_at is not None:
        ctx.upstream_ms = (time.monotonic() - ctx.forwarded_at) * 1000
        UPSTREAM_LATENCY.observe(ctx.upstream_ms / 1000)


def call_finished(ctx: CallContext, *, status: int | None, outcome: str, bytes_in: int = 0,
                  bytes_out: int = 0, **extra: Any) -> None:
    REQUESTS.labels(ctx.family or "-", str(status or 0), outcome).inc()
    if bytes_in:
        BYTES_IN.inc(bytes_in)
    if bytes_out:
        BYTES_OUT.inc(bytes_out)
    event = {
        "event": "relay.call",
        "request_id": ctx.request_id,
        "method": ctx.method,
        "path": ctx.path,
        "family": ctx.family,
        "status": status,
        "outcome": outcome,
        "duration_ms": round((time.monotonic() - ctx.started_monotonic) * 1000, 3),
        "upstream_ms": round(ctx.upstream_ms, 3) if ctx.upstream_ms is not None else None,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "key": ctx.key.prefix if ctx.key is not None else None,
        "user": ctx.user.get_username() if ctx.user is not None else None,
        "client_ip": ctx.client_ip,
        **{k: v for k, v in extra.items() if v not in (None, "")},
    }
    if isinstance(event.get("error"), str):
        event["error"] = scrub_keys(event["error"])
    access_log.info(json.dumps(event, default=str))


# ============================================================================
# GET /metrics for Prometheus, across every gunicorn worker, behind a token or an IP list.
# ============================================================================


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
