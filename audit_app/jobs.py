"""Background Responses and video jobs: recorded when created, billed once when first seen finished.

Whoever sees a job's end first bills it: a client retrieving it (GET), a
resumed stream, a cancel, or the poller (poll_batches). Billing is a single
conditional UPDATE ... WHERE counted_at IS NULL together with the rollup
upsert, in one transaction; of any number of observers racing, on any number
of hosts, exactly one write matches the row, so the cost lands once. The day
is the UTC day of that write (docs/accounting.md), the owner the creator and
the key they used, the model the one upstream named when it was created.
"""
from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import pricing, rollups
from .macs import record_mac
from .models import AsyncJob, Billing, JobKind
from .models.jobs import TERMINAL
from .usage import Usage

log = logging.getLogger(__name__)
_TOKENS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens")
_FAMILY = {JobKind.RESPONSE: "responses", JobKind.VIDEO: "videos"}
# The status the poller gives a job upstream no longer knows (404): its end was never seen.
GONE = "gone"


def kind_of_object(obj: dict[str, Any]) -> str | None:
    return {"response": JobKind.RESPONSE, "video": JobKind.VIDEO}.get(obj.get("object"))


def record_job(obj: dict[str, Any], *, user=None, key=None, call_id: int | None = None,
               budget_hold: Decimal | None = None) -> AsyncJob | None:
    """A job the caller just created (its upstream object); bills it at once if it is already over.

    `budget_hold`: the creating call's budget reservation, which the job holds until it
    is billed (written with the row, before anything can bill it, so that no hold
    outlives its job)."""
    kind, job_id = kind_of_object(obj), obj.get("id")
    if kind is None or not isinstance(job_id, str) or not job_id:
        return None
    job, _ = AsyncJob.objects.get_or_create(job_id=job_id[:128], defaults=dict(
        kind=kind, model=str(obj.get("model") or "")[:128], status=str(obj.get("status") or "")[:32],
        created_by=user, created_by_key=key, call_id=call_id, budget_hold=budget_hold))
    seen(obj, job=job)
    return job


def seen(obj: dict[str, Any], *, job: AsyncJob | None = None) -> bool:
    """The relay saw a job's upstream object (any read of it): bill it if it is over.

    Jobs the relay did not create are not its spend and are ignored. Returns True
    when this call billed the job.
    """
    job_id = obj.get("id")
    if not isinstance(job_id, str):
        return False
    if job is None:
        job = AsyncJob.objects.filter(job_id=job_id).first()
        if job is None:
            return False
    status = str(obj.get("status") or "")[:32]
    if job.counted_at is not None:
        return False
    if status not in TERMINAL.get(job.kind, ()) and status != GONE:
        if status and status != job.status:
            with transaction.atomic():
                if _write(job.pk, {"status": status}):
                    job.status = status
        return False
    return bill(job, obj)


def _write(pk: int, fields: dict[str, Any]) -> bool:
    """Change a job not billed yet, in one conditional UPDATE, and re-MAC it while the
    write holds its row (call inside a transaction). False if it was billed meanwhile."""
    if not AsyncJob.objects.filter(pk=pk, counted_at__isnull=True).update(**fields, updated_at=timezone.now()):
        return False
    row = AsyncJob.objects.get(pk=pk)
    AsyncJob.objects.filter(pk=pk).update(row_mac=record_mac(row))
    return True


def usage_of(job: AsyncJob, obj: dict[str, Any]) -> Usage | None:
    """The job's usage; None when its end generates nothing billable, an empty
    Usage when it is billed but its usage cannot be read (`unknown`)."""
    if obj.get("status") == GONE:
        return Usage()
    if job.kind == JobKind.VIDEO:
        if obj.get("status") != "completed":
            return None  # a failed video generates nothing billable
        try:
            seconds = Decimal(str(obj.get("seconds"))).quantize(Decimal("0.001"))
        except (InvalidOperation, ValueError):
            return Usage()  # completed, but its length unreadable: usage unknown
        return Usage(video_seconds=seconds) if seconds > 0 else Usage()
    return Usage.from_api(obj.get("usage")) or (Usage() if obj.get("status") == "completed" else None)


# OpenAI prices sora-2-pro by resolution: $0.30 a second at 720p, $0.50 at these sizes,
# which the shipped price map lists as the model "sora-2-pro-high-res".
_HIGH_RES = frozenset({"1024x1792", "1792x1024"})


def video_priced_as(model: str, size: Any) -> str:
    """The price-map model a video of this model and size is priced by."""
    if model.startswith("sora-2-pro") and size in _HIGH_RES and not model.endswith("-high-res"):
        return "sora-2-pro-high-res"
    return model


def _priced_as(job: AsyncJob, model: str, obj: dict[str, Any]) -> str:
    return video_priced_as(model, obj.get("size")) if job.kind == JobKind.VIDEO else model


def bill(job: AsyncJob, obj: dict[str, Any]) -> bool:
    """Bill a finished job exactly once. Partial usage of a cancelled or incomplete
    Response counts as OpenAI reports it; no usage on an end that generates nothing
    (failed, cancelled before it started) is free; a completed job without readable
    usage is `unknown`, never $0.

    A job that held a budget reservation stops holding it here; if its cost is unknown
    the hold stays counted, as the spend of its day (`budget_held` in the rollups)."""
    now = timezone.now()
    model = str(obj.get("model") or job.model or "")[:128]
    usage = usage_of(job, obj)
    fields: dict[str, Any] = {"status": str(obj.get("status") or "")[:32], "model": model, "counted_at": now}
    if usage is None:
        fields["billing"] = Billing.FREE
    elif usage.is_empty:
        fields["billing"] = Billing.UNKNOWN
    else:
        price = pricing.price_for(_priced_as(job, model, obj), job.first_seen_at)
        cost = pricing.cost_of(usage, price)
        fields.update({name: getattr(usage, name) for name in _TOKENS}, video_seconds=usage.video_seconds,
                      cost=cost, unpriced=cost is None,
                      billing=Billing.PRICED if cost is not None else Billing.UNPRICED)
    cost_unknown = fields["billing"] in (Billing.UNPRICED, Billing.UNKNOWN)
    with transaction.atomic():
        if not _write(job.pk, fields):
            return False  # someone else billed it first
        if job.created_by_id is not None and job.created_by_key_id is not None:
            rollups.add(started_at=now, user_id=job.created_by_id, key_id=job.created_by_key_id,
                        model=model, family=_FAMILY.get(job.kind, job.kind), calls=0,
                        unpriced=1 if fields["billing"] == Billing.UNPRICED else 0,
                        unknown=1 if fields["billing"] == Billing.UNKNOWN else 0,
                        **{name: fields.get(name) or 0 for name in _TOKENS},
                        cost=fields.get("cost") or Decimal(0),
                        budget_held=job.budget_hold if cost_unknown and job.budget_hold else Decimal(0))
    for name, value in fields.items():
        setattr(job, name, value)
    if job.budget_hold is not None:
        _budgets_changed(job)
    return True


def _budgets_changed(job: AsyncJob) -> None:
    """The job's hold became its cost (or stayed as spend): every budget over its creator
    reads its spend again at the next check."""
    from .budgets import mark_spend_stale

    team_id = job.created_by_key.team_id if job.created_by_key_id else None
    mark_spend_stale([f"k{job.created_by_key_id}", f"u{job.created_by_id}"]
                     + ([f"t{team_id}"] if team_id else []))
