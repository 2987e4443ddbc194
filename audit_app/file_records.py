"""Recording files and uploads seen through the relay: who uploaded what."""
from __future__ import annotations

import logging
from datetime import datetime, timezone as dt_timezone
from typing import Any

from django.db.models import F
from django.utils import timezone

from .models import FileOrigin, FileRecord, UploadRecord

log = logging.getLogger(__name__)


def from_epoch(value: Any) -> datetime | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        try:
            return datetime.fromtimestamp(value, tz=dt_timezone.utc)
        except (OverflowError, OSError, ValueError):  # not a time a record can hold
            return None
    return None


def _file_fields(obj: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("filename", "purpose", "status"):
        if isinstance(obj.get(name), str):
            fields[name] = obj[name][:512 if name == "filename" else 64]
    if isinstance(obj.get("bytes"), int):
        fields["bytes"] = obj["bytes"]
    for name in ("created_at", "expires_at"):
        if (when := from_epoch(obj.get(name))) is not None:
            fields[name] = when
    return fields


def record_file(obj: dict[str, Any], *, origin: str, user=None, key=None, call_id: int | None = None,
                batch=None) -> FileRecord | None:
    """Create or refresh the record of an upstream file object; the first owner stays."""
    file_id = obj.get("id")
    if not isinstance(file_id, str) or not file_id:
        return None
    record, created = FileRecord.objects.get_or_create(
        file_id=file_id[:128],
        defaults={**_file_fields(obj), "origin": origin, "created_by": user, "created_by_key": key,
                  "call_id": call_id, "batch": batch},
    )
    if not created:
        changes = _file_fields(obj)
        if record.created_by_id is None and user is not None:
            # A file first seen unowned (sync_files) and now claimed by its creator's call.
            changes.update(created_by=user, created_by_key=key, origin=origin, call_id=call_id)
        if batch is not None and record.batch_id is None:
            changes["batch"] = batch
        changes = {name: value for name, value in changes.items() if getattr(record, name) != value}
        for name, value in changes.items():
            setattr(record, name, value)
        if changes:
            # Only what changed: a full save of what was read would undo a concurrent write
            # (a deletion marked, a batch's claim on its output file).
            record.save(update_fields=[*changes, "updated_at"])
    return record


def mark_deleted(file_id: str) -> None:
    for record in FileRecord.objects.filter(file_id=file_id, deleted_at__isnull=True):
        record.deleted_at = timezone.now()
        record.status = "deleted"
        record.save(update_fields=["deleted_at", "status", "updated_at"])


def record_upload(obj: dict[str, Any], *, user=None, key=None) -> UploadRecord | None:
    upload_id = obj.get("id")
    if not isinstance(upload_id, str) or not upload_id:
        return None
    fields: dict[str, Any] = {
        "filename": str(obj.get("filename") or "")[:512], "purpose": str(obj.get("purpose") or "")[:64],
        "bytes": obj.get("bytes") if isinstance(obj.get("bytes"), int) else None,
        "mime_type": str(obj.get("mime_type") or "")[:128], "status": str(obj.get("status") or "")[:32],
        "created_at": from_epoch(obj.get("created_at")), "expires_at": from_epoch(obj.get("expires_at")),
    }
    record, created = UploadRecord.objects.get_or_create(
        upload_id=upload_id[:128], defaults={**fields, "created_by": user, "created_by_key": key})
    if not created:
        record.status = fields["status"] or record.status
        if record.status == "completed" and record.completed_at is None:
            record.completed_at = timezone.now()
        if record.status == "cancelled" and record.cancelled_at is None:
            record.cancelled_at = timezone.now()
        if isinstance(obj.get("file"), dict):
            record.file = record_file(obj["file"], origin=FileOrigin.UPLOADS_API,
                                      user=record.created_by, key=record.created_by_key)
        record.save()
    return record


def count_part(upload_id: str) -> None:
    UploadRecord.objects.filter(upload_id=upload_id).update(parts=F("parts") + 1, updated_at=timezone.now())
