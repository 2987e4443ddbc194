"""Batches through their life, and their results counted exactly once."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from relay_project.redact import scrub_keys, storable

from . import rollups
from .file_records import from_epoch, record_file
from .models import BatchRecord, BatchResult, FileOrigin
from .models.batches import FINAL_STATUSES, LIFECYCLE_FIELDS
from .usage import Usage

log = logging.getLogger(__name__)
RESULT_CHUNK = 500
_TOKENS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens")


def record_batch(obj: dict[str, Any], *, user=None, key=None, known: BatchRecord | None = None
                 ) -> BatchRecord | None:
    """Create or refresh a batch from an upstream batch object; the creator stays.

    `known`: the batch's record as the caller just read it (a poller's claim), which
    saves looking it up again; only the fields upstream changed are written either way.
    """
    batch_id = obj.get("id")
    if not isinstance(batch_id, str) or not batch_id or obj.get("object", "batch") != "batch":
        return None
    counts = obj.get("request_counts") if isinstance(obj.get("request_counts"), dict) else {}
    fields: dict[str, Any] = {
        "endpoint": str(obj.get("endpoint") or "")[:128],
        "completion_window": str(obj.get("completion_window") or "")[:16],
        "input_file_id": (obj.get("input_file_id") or None),
        "status": str(obj.get("status") or "")[:16],
        "request_total": counts.get("total"), "request_completed": counts.get("completed"),
        "request_failed": counts.get("failed"),
        "output_file_id": obj.get("output_file_id") or None,
        "error_file_id": obj.get("error_file_id") or None,
        "metadata": obj.get("metadata"), "errors": obj.get("errors"),
        **{name: from_epoch(obj.get(name)) for name in LIFECYCLE_FIELDS},
    }
    if known is not None and known.batch_id == batch_id:
        record, created = known, False
    else:
        record, created = BatchRecord.objects.get_or_create(
            batch_id=batch_id[:128], defaults={**fields, "created_by": user, "created_by_key": key})
    if not created:
        changed = [name for name, value in fields.items() if getattr(record, name) != value]
        if record.created_by_id is None and user is not None:
            record.created_by, record.created_by_key = user, key
            changed += ["created_by", "created_by_key"]
        for name in changed:
            if name in fields:
                setattr(record, name, fields[name])
        if changed:
            # Only the fields upstream's object changed: a full save of what was read would
            # undo what a poller committed meanwhile (its counted results, above all).
            record.save(update_fields=[*changed, "updated_at"])
    return record


def needs_results(batch: BatchRecord) -> bool:
    return (batch.status in FINAL_STATUSES and batch.results_counted_at is None
            and bool(batch.output_file_id or batch.error_file_id))


def result_from_line(batch: BatchRecord, line: dict[str, Any], from_error_file: bool) -> BatchResult | None:
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str):
        return None
    response = line.get("response") if isinstance(line.get("response"), dict) else {}
    body = response.get("body") if isinstance(response.get("body"), dict) else {}
    error = line.get("error") if isinstance(line.get("error"), dict) else body.get("error")
    error = error if isinstance(error, dict) else {}
    result = BatchResult(
        batch=batch, custom_id=custom_id[:512], request_id=str(response.get("request_id") or "")[:128],
        status_code=response.get("status_code") if isinstance(response.get("status_code"), int) else None,
        model=str(body.get("model") or "")[:128],
        error_code=str(error.get("code") or "")[:128],
        # Upstream's words, shown in the admin: never a key they quote (docs/security.md).
        error_message=scrub_keys(storable(str(error.get("message") or "")))[:1024],
        from_error_file=from_error_file,
    )
    usage = Usage.from_api(body.get("usage"), response=body)
    if usage is not None:
        from .recorder import priced_fields

        fields = priced_fields(usage, result.model, batch.created_at or batch.first_seen_at, batch=True)
        for name, value in fields.items():
            if name != "price" and hasattr(result, name):
                setattr(result, name, value)
    return result


def store_results(batch: BatchRecord, lines: Iterable[bytes], *, from_error_file: bool) -> int:
    """Insert results chunk by chunk; a result already stored is skipped, so a run
    that died half-way through a file can simply read it again."""
    stored = 0
    chunk: list[BatchResult] = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            log.warning("batch %s: skipped a line that is not JSON", batch.batch_id)
            continue
        result = result_from_line(batch, line, from_error_file) if isinstance(line, dict) else None
        if result is not None:
            chunk.append(result)
        if len(chunk) >= RESULT_CHUNK:
            BatchResult.objects.bulk_create(chunk, ignore_conflicts=True)
            stored += len(chunk)
            chunk = []
    if chunk:
        BatchResult.objects.bulk_create(chunk, ignore_conflicts=True)
        stored += len(chunk)
    return stored


@transaction.atomic
def count_results(batch: BatchRecord) -> tuple[BatchRecord, bool]:
    """Totals from the stored results, the files registered, the rollups fed: all
    in the one transaction that marks the batch counted, so it happens once.
    Returns the batch as it now is, and False if it had been counted already."""
    batch = (BatchRecord.objects.select_related("created_by", "created_by_key")
             .select_for_update(of=("self",)).get(pk=batch.pk))
    if batch.results_counted_at is not None:
        return batch, False
    # Per model for the rollups; the batch's totals are their sums (one query for both).
    rows = list(BatchResult.objects.filter(batch=batch).values("model").annotate(
        n=Count("id"), unpriced_n=Count("id", filter=Q(unpriced=True)),
        **{f"s_{name}": Sum(name) for name in (*_TOKENS, "cost")}))

    def total(name: str) -> Any:
        values = [row[f"s_{name}"] for row in rows if row[f"s_{name}"] is not None]
        return sum(values) if values else None  # NULL when no result reported it, as SUM gives

    for name in _TOKENS:
        setattr(batch, name, total(name))
    # Any result without a price makes the batch's cost unknown, not smaller.
    batch.unpriced_results = sum(row["unpriced_n"] for row in rows)
    batch.cost = None if batch.unpriced_results else total("cost")
    batch.results_counted_at = timezone.now()
    # Only what counting decides: a refresh from the request path may have moved the rest.
    batch.save(update_fields=[*_TOKENS, "cost", "unpriced_results", "results_counted_at", "updated_at"],
               locked=True)
    for file_id, origin in ((batch.output_file_id, FileOrigin.BATCH_OUTPUT), (batch.error_file_id, FileOrigin.BATCH_ERROR)):
        if file_id:
            record_file({"id": file_id, "purpose": "batch_output"}, origin=origin, user=batch.created_by,
                        key=batch.created_by_key, batch=batch)
    if batch.created_by_id is not None and batch.created_by_key_id is not None:
        for row in rows:
            rollups.add(started_at=batch.completed_at or batch.failed_at or batch.expired_at
                        or batch.cancelled_at or timezone.now(),
                        user_id=batch.created_by_id, key_id=batch.created_by_key_id, model=row["model"],
                        family="batches", calls=row["n"], unpriced=row["unpriced_n"],
                        **{name: row[f"s_{name}"] or 0 for name in _TOKENS},
                        cost=row["s_cost"] or Decimal(0))
    return batch, True
