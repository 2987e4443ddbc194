"""Batches and their per-request results: who ran it, how it ended, what it cost."""
from __future__ import annotations

from django.db import models
from django.utils import timezone

from .calls import Billing
from .ledger import Maced
from .tokens import BilledDimensions, Owned, TokenUsage


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)
# OpenAI's lifecycle timestamps, as named on the batch object.
LIFECYCLE_FIELDS = (
    "created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
    "cancelling_at", "cancelled_at", "expires_at",
)


def _file_link(related_name: str) -> models.ForeignKey:
    return models.ForeignKey(
        "audit_app.FileRecord", to_field="file_id", db_constraint=False, null=True, blank=True,
        on_delete=models.DO_NOTHING, related_name=related_name,
    )


class BatchRecord(Owned, TokenUsage, Maced):
    """Token and cost totals are the sums of the batch's results."""

    batch_id = models.CharField("batch id", max_length=128, unique=True)
    endpoint = models.CharField(max_length=128, blank=True)
    completion_window = models.CharField(max_length=16, blank=True)
    # File links by upstream id, without a DB constraint: the id is recorded even
    # when the relay has no FileRecord for it (yet), and links once it does.
    input_file = _file_link("batches")
    status = models.CharField(max_length=16, choices=BatchStatus.choices, blank=True)
    request_total = models.PositiveIntegerField(null=True, blank=True)
    request_completed = models.PositiveIntegerField(null=True, blank=True)
    request_failed = models.PositiveIntegerField(null=True, blank=True)
    output_file = _file_link("+")
    error_file = _file_link("+")
    metadata = models.JSONField(null=True, blank=True)
    errors = models.JSONField(null=True, blank=True, help_text="upstream's validation errors")

    created_at = models.DateTimeField(null=True, blank=True)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    last_polled_at = models.DateTimeField(null=True, blank=True)
    last_poll_error = models.CharField(max_length=1024, blank=True)
    # A poller's lease: it works on the batch (network I/O, no lock held) until then.
    claimed_until = models.DateTimeField(null=True, blank=True, editable=False)
    # Set, with the totals, in the transaction that finishes counting results.
    results_counted_at = models.DateTimeField(null=True, blank=True)
    unpriced_results = models.PositiveIntegerField(default=0)
    first_seen_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-first_seen_at"]
        indexes = [
            models.Index(fields=["status"], name="batchrecord_status"),
            models.Index(fields=["-first_seen_at"], name="batchrecord_seen"),  # the admin's order
            models.Index(fields=["created_by", "-first_seen_at"], name="batchrecord_user_seen"),
            models.Index(fields=["updated_at"], name="batchrecord_updated"),  # the sealer's pass
        ]

    def __str__(self) -> str:
        return self.batch_id

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class BatchResult(TokenUsage, BilledDimensions):
    """One per request of a batch; (batch, custom_id) is unique, which is what
    makes re-reading an output file after a crash count nothing twice."""

    batch = models.ForeignKey(BatchRecord, on_delete=models.CASCADE, related_name="results")
    custom_id = models.CharField(max_length=512)
    request_id = models.CharField(max_length=128, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    model = models.CharField(max_length=128, blank=True)
    error_code = models.CharField(max_length=128, blank=True)
    error_message = models.CharField(max_length=1024, blank=True)
    from_error_file = models.BooleanField(default=False)
    unpriced = models.BooleanField(default=False)
    billing = models.CharField(max_length=8, choices=Billing.choices, blank=True, default="")

    class Meta:
        ordering = ["batch", "id"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "custom_id"], name="batchresult_batch_custom_id"),
        ]
        indexes = [models.Index(fields=["custom_id"], name="batchresult_custom_id")]  # admin search

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.custom_id}"
