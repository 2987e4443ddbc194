"""Rollups for the errors and latency view, and the record of budget alerts sent."""
from __future__ import annotations

from django.db import models

# Edges, in milliseconds, of the latency histograms (duration and time to first byte).
# Chosen once (docs/admin.md): changing them makes old rows unreadable. Bucket i
# holds values in [EDGES[i-1], EDGES[i]); bucket 0 is under 50 ms, the last one
# 300 s and more. Neighbouring edges are at most 2x apart (1.5x over 200 ms), so a
# percentile read from the histogram is within one bucket of the true value.
LATENCY_EDGES_MS = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000,
                    20000, 30000, 60000, 120000, 300000)
LATENCY_BUCKETS = len(LATENCY_EDGES_MS) + 1
DURATION_COLUMNS = tuple(f"d{i:02d}" for i in range(LATENCY_BUCKETS))
TTFB_COLUMNS = tuple(f"t{i:02d}" for i in range(LATENCY_BUCKETS))


class StatusClass(models.IntegerChoices):
    NONE = 0, "no status"
    S1XX = 1, "1xx"
    S2XX = 2, "2xx"
    S3XX = 3, "3xx"
    S4XX = 4, "4xx"
    S5XX = 5, "5xx"


def _histogram_fields(prefix: str, what: str) -> dict[str, models.Field]:
    edges = (0, *LATENCY_EDGES_MS)
    fields = {}
    for i in range(LATENCY_BUCKETS):
        upper = f"{LATENCY_EDGES_MS[i]} ms" if i < len(LATENCY_EDGES_MS) else "∞"
        # db_default: the per-call upsert names only the counters it changes (latency.compact).
        fields[f"{prefix}{i:02d}"] = models.BigIntegerField(
            default=0, db_default=0, verbose_name=f"{what} {edges[i]} ms – {upper}")
    return fields


class CallStatsDaily(models.Model):
    """Finished calls per day, model, endpoint family, key, outcome and status class, with
    histograms of their duration and time to first byte: what the errors and latency view
    reads, kept current as calls finish so that it never scans raw calls.

    `user_id` and `key_id` are plain integers, 0 for a call refused before authentication
    (which belongs to nobody but still counts in the error rate): a NULL would never
    conflict in the upsert's unique key.
    """

    date = models.DateField()
    model = models.CharField(max_length=128, blank=True)
    family = models.CharField("endpoint family", max_length=32, blank=True)
    user_id = models.IntegerField(default=0)
    key_id = models.IntegerField(default=0)
    outcome = models.CharField(max_length=16)
    status_class = models.PositiveSmallIntegerField(choices=StatusClass.choices, default=0)
    calls = models.BigIntegerField(default=0, db_default=0)
    # Calls whose first byte reached the client (the t-buckets count only these).
    ttfb_calls = models.BigIntegerField(default=0, db_default=0)
    locals().update(_histogram_fields("d", "duration"))
    locals().update(_histogram_fields("t", "first byte"))

    class Meta:
        verbose_name = "call statistics (daily)"
        verbose_name_plural = "call statistics (daily)"
        constraints = [
            models.UniqueConstraint(
                fields=["date", "model", "family", "user_id", "key_id", "outcome", "status_class"],
                name="callstatsdaily_bucket"),
        ]
        indexes = [models.Index(fields=["model", "date"], name="callstatsdaily_model_date")]

    def __str__(self) -> str:
        return f"{self.date} {self.model or '-'} {self.outcome} {self.get_status_class_display()}"


class BudgetAlert(models.Model):
    """One row per alert sent: the unique key makes "once per threshold per month" hold
    across processes (the row is inserted before the mail goes out)."""

    KIND_KEY, KIND_USER, KIND_TEAM = "key", "user", "team"
    kind = models.CharField(max_length=4, choices=[(KIND_KEY, "key"), (KIND_USER, "user"), (KIND_TEAM, "team")])
    object_id = models.IntegerField()
    month = models.DateField(help_text="first day of the month")
    threshold = models.PositiveSmallIntegerField(help_text="percent of the budget")
    budget = models.DecimalField(max_digits=12, decimal_places=2)
    spend = models.DecimalField(max_digits=20, decimal_places=10,
                                help_text="what the budget counted: spend and the holds of calls and jobs")
    recipients = models.CharField(max_length=1024, blank=True)
    sent_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-sent_at"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "object_id", "month", "threshold"], name="budgetalert_once"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.object_id}: {self.threshold}% of ${self.budget} ({self.month:%Y-%m})"
