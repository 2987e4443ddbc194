"""Asynchronous jobs other than batches: background Responses and video generations."""
from __future__ import annotations

from django.db import models
from django.utils import timezone

from .calls import Billing
from .ledger import Maced
from .tokens import Owned, TokenUsage


class JobKind(models.TextChoices):
    RESPONSE = "response", "Background response"
    VIDEO = "video", "Video"


# Upstream's end states, per kind: the job is billed the first time the relay sees one.
TERMINAL = {
    JobKind.RESPONSE: frozenset({"completed", "incomplete", "failed", "cancelled"}),
    JobKind.VIDEO: frozenset({"completed", "failed"}),
}


class AsyncJob(Owned, TokenUsage, Maced):
    """A job started through the relay and billed once, when first seen finished.

    The create call is free (its row says so); this record carries the usage and
    the cost, added to the rollups of its creator and key on the UTC day the relay
    first saw it in a terminal state (`counted_at`), whoever was looking: the
    creator retrieving it, a colleague, a resumed stream, a cancel, or the poller.
    """

    kind = models.CharField(max_length=16, choices=JobKind.choices)
    job_id = models.CharField("job id", max_length=128, unique=True)
    model = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=32, blank=True)
    # The call that created the job, for the admin's link (no FK: calls are pruned).
    call_id = models.BigIntegerField(null=True, blank=True)
    video_seconds = models.DecimalField(max_digits=12, decimal_places=3, null=True, blank=True)
    unpriced = models.BooleanField(default=False)
    billing = models.CharField(max_length=8, choices=Billing.choices, blank=True, default="")
    # The creating call's budget reservation, held against its key's, owner's and team's
    # budgets while the job runs (audit_app.budgets.month_spend counts it until the job
    # is billed), and kept as spend if the job's cost turns out unknown.
    budget_hold = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True,
                                      help_text="USD held against budgets until the job is billed")

    first_seen_at = models.DateTimeField(default=timezone.now)
    # Set once, by the single conditional write that bills the job.
    counted_at = models.DateTimeField(null=True, blank=True)
    last_polled_at = models.DateTimeField(null=True, blank=True)
    last_poll_error = models.CharField(max_length=1024, blank=True)
    # A poller's lease, as on BatchRecord.
    claimed_until = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-first_seen_at"]
        indexes = [
            # The poller's work queue: jobs not billed yet.
            models.Index(fields=["last_polled_at"], name="asyncjob_open",
                         condition=models.Q(counted_at__isnull=True)),
            models.Index(fields=["created_by", "-first_seen_at"], name="asyncjob_user_seen"),
            # A call's job: budgets and reconcile_calls leave a call that created one free.
            models.Index(fields=["call_id"], name="asyncjob_call", condition=models.Q(call_id__isnull=False)),
        ]

    def __str__(self) -> str:
        return self.job_id

    @property
    def is_counted(self) -> bool:
        return self.counted_at is not None
