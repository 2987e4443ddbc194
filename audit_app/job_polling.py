"""The poller's pass over background Responses and video jobs not billed yet.

Same guarantees as for batches (audit_app.batch_polling, whose lease it uses):
a job is leased in one statement (FOR UPDATE SKIP LOCKED on PostgreSQL) before
its upstream state is fetched with no lock held, so several pollers on several
hosts never work on the same job; billing itself is the single conditional
write in audit_app.jobs.bill, so a poller killed at any point, or racing a
client's retrieve, bills a job at most once, and the next pass bills it if it
was not. Upstream's object is read with a streaming sniffer: a finished
Response echoes its whole output (megabytes of base64 for images), and only
its id, status, model and usage matter here.
"""
from __future__ import annotations

import logging

import requests
from django.db import DatabaseError
from django.db.models import F, Q
from django.utils import timezone

from relay_project.lib import upstream
from relay_project.lib.sniff import JsonFieldSniffer

from . import jobs
from .batch_polling import PollError, PollSummary, claim, project_of
from .models import AsyncJob, JobKind

log = logging.getLogger(__name__)
_ERROR_MAX = AsyncJob._meta.get_field("last_poll_error").max_length
_FIELDS = frozenset({"id", "object", "status", "model", "seconds", "size"})
_PATH = {JobKind.RESPONSE: "/responses/{}", JobKind.VIDEO: "/videos/{}"}


def due(job_id: str | None = None, limit: int | None = None) -> list[int]:
    """Jobs not billed yet whose lease is free, least recently polled first."""
    if job_id:
        rows = AsyncJob.objects.filter(job_id=job_id)
    else:
        rows = AsyncJob.objects.filter(counted_at__isnull=True).filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=timezone.now()))
    rows = rows.order_by(F("last_polled_at").asc(nulls_first=True), "pk").values_list("pk", flat=True)
    return list(rows[:limit] if limit else rows)


def fetch(job: AsyncJob) -> dict:
    try:
        with upstream.get(_PATH[job.kind].format(job.job_id), stream=True, project=project_of(job)) as resp:
            if resp.status_code == 404:
                # Deleted upstream before anyone saw it end: whatever it used is unknowable,
                # and OpenAI may have billed it, so it is billed `unknown`, never left open forever.
                return {"id": job.job_id, "status": jobs.GONE}
            if resp.status_code != 200:
                raise PollError(f"upstream answered {resp.status_code} for {job.job_id}")
            sniffer = JsonFieldSniffer(_FIELDS, frozenset({"usage"}))
            for chunk in resp.iter_content(256 * 1024):
                sniffer.feed(chunk)
    except requests.RequestException as exc:
        raise PollError(f"upstream unreachable: {type(exc).__name__}") from None
    obj = dict(sniffer.values)
    if not sniffer.is_object or obj.get("id") != job.job_id:
        raise PollError(f"upstream's object for {job.job_id} is not the job")
    return obj


def poll_job(pk: int, summary: PollSummary, *, force: bool = False) -> None:
    try:
        job = claim(pk, force=force, model=AsyncJob)
        if job is None or job.counted_at is not None:
            summary.add("skipped")  # another poller has it, or it was billed meanwhile
            return
        summary.add("checked")
        error, before = "", job.status
        try:
            obj = fetch(job)
            obj.setdefault("object", "response" if job.kind == JobKind.RESPONSE else "video")
            if jobs.seen(obj, job=job):
                summary.add("completed" if job.status == "completed" else "failed")
            if job.status != before:
                summary.add("changed")
        except PollError as exc:
            error = str(exc)
        except Exception as exc:  # a malformed answer must not stop the pass
            log.exception("poll_batches: job %s", job.job_id)
            error = f"{type(exc).__name__}: {exc}"
        if error:
            summary.add("errors", f"{job.job_id}: {error}")
        AsyncJob.objects.filter(pk=job.pk).update(
            last_polled_at=timezone.now(), last_poll_error=error[:_ERROR_MAX], claimed_until=None)
    except DatabaseError as exc:
        summary.add("errors", f"job #{pk}: {type(exc).__name__}: {exc}")
        log.warning("poll_batches: job #%s: %s", pk, exc)
