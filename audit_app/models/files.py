"""Files and uploads seen through the relay: who uploaded what."""
from __future__ import annotations

from django.db import models
from django.utils import timezone

from .ledger import Maced
from .tokens import Owned


class FileOrigin(models.TextChoices):
    FILES_API = "files_api", "Files API"
    UPLOADS_API = "uploads_api", "Uploads API"
    BATCH_OUTPUT = "batch_output", "Batch output"
    BATCH_ERROR = "batch_error", "Batch errors"
    UPSTREAM_ONLY = "upstream_only", "Seen upstream only"


class FileRecord(Owned, Maced):
    file_id = models.CharField("file id", max_length=128, unique=True)
    filename = models.CharField(max_length=512, blank=True)
    purpose = models.CharField(max_length=64, blank=True)
    bytes = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=32, blank=True)
    origin = models.CharField(max_length=16, choices=FileOrigin.choices)
    call = models.ForeignKey(
        "audit_app.ApiCall", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="the call that created it, while that row is kept",
    )
    batch = models.ForeignKey(
        "audit_app.BatchRecord", null=True, blank=True, on_delete=models.PROTECT,
        related_name="result_files", help_text="for batch output and error files",
    )
    created_at = models.DateTimeField(null=True, blank=True, help_text="upstream's created_at")
    expires_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    first_seen_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-first_seen_at"]
        indexes = [
            models.Index(fields=["created_by", "-first_seen_at"], name="filerecord_user_seen"),
            models.Index(fields=["purpose"], name="filerecord_purpose"),
            models.Index(fields=["-first_seen_at"], name="filerecord_seen"),  # the admin's order
            models.Index(fields=["updated_at"], name="filerecord_updated"),  # the sealer's pass
        ]

    def __str__(self) -> str:
        return f"{self.file_id} ({self.filename})" if self.filename else self.file_id


class UploadRecord(Owned):
    """An Uploads API session: created, parts added, then completed or cancelled."""

    upload_id = models.CharField("upload id", max_length=128, unique=True)
    filename = models.CharField(max_length=512, blank=True)
    purpose = models.CharField(max_length=64, blank=True)
    bytes = models.BigIntegerField(null=True, blank=True)
    mime_type = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=32, blank=True)
    parts = models.PositiveIntegerField(default=0)
    file = models.ForeignKey(
        FileRecord, null=True, blank=True, on_delete=models.PROTECT, related_name="uploads"
    )
    created_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    first_seen_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-first_seen_at"]

    def __str__(self) -> str:
        return self.upload_id
