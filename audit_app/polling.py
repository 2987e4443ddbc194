"""The poller's pass (`poll_batches`): batches, background Responses and video jobs,
each refreshed from upstream and counted once when it ends.

Safe on several hosts at once: a poller takes an object by writing a lease on it
(`claimed_until`); the network I/O runs with no row lock or transaction held; results
and usage are added in the transaction that marks the object counted, which only one
writer can do. Measured at 1,000 jobs: docs/poller-bench.md (bench/poll_all.py).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import requests
from django.db import connection, DatabaseError, transaction
from django.db.models import F, Q
from django.utils import timezone

from relay_project.lib import upstream
from relay_project.lib.sniff import JsonFieldSniffer

from . import jobs
from .batch_records import count_results, needs_results, record_batch, store_results
from .models import AsyncJob, BatchRecord, JobKind
from .models.batches import FINAL_STATUSES


# ============================================================================
# One pass of `poll_batches`: refresh open batches from upstream, count finished ones' results.
#
# Safe on several hosts at once. A poller takes a batch by writing a lease on it
# (`claimed_until`) in a short transaction, on PostgreSQL after
# SELECT ... FOR UPDATE SKIP LOCKED, so two pollers never work on the same
# batch; the network I/O then runs with no row lock or transaction held, so
# that the relay's own updates of the batch (a client polling its status)
# never wait on a download. A poller that dies leaves a lease that expires.
# Results are counted once whatever happens: each is unique per (batch,
# custom_id), and the totals are added in the transaction that marks the
# batch counted, which only one writer can do.
# ============================================================================


log = logging.getLogger(__name__)
_ERROR_MAX = BatchRecord._meta.get_field("last_poll_error").max_length
# Never-polled batches first: a NULL sorts first ascending on SQLite but last on PostgreSQL.
_LEAST_RECENTLY_POLLED = F("last_polled_at").asc(nulls_first=True)
# Long enough for a large result file; a poller that dies holds its batches this long.
CLAIM_LEASE = timedelta(minutes=15)


class PollError(Exception):
    """Upstream did not give a usable answer for one batch; the next pass retries it."""


@dataclass
class PollSummary:
    checked: int = 0
    changed: int = 0
    completed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    results: int = 0
    messages: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, message: str = "", amount: int = 1) -> None:
        with self._lock:  # the pool's threads report into one summary
            setattr(self, name, getattr(self, name) + amount)
            if message:
                self.messages.append(message)

    def line(self) -> str:
        return (f"checked {self.checked}, changed {self.changed}, completed {self.completed}, "
                f"failed {self.failed}, errors {self.errors}, results read {self.results}, "
                f"skipped (claimed elsewhere) {self.skipped}")


def due_batches(batch_id: str | None = None, limit: int | None = None) -> list[int]:
    """Batches not final yet, and final ones whose results are not counted, least recently polled first."""
    if batch_id:
        rows = BatchRecord.objects.filter(batch_id=batch_id)
    else:
        rows = BatchRecord.objects.filter(
            ~Q(status__in=FINAL_STATUSES)
            | Q(results_counted_at__isnull=True) & (Q(output_file__isnull=False) | Q(error_file__isnull=False))
        )
        rows = rows.filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=timezone.now()))
    rows = rows.order_by(_LEAST_RECENTLY_POLLED, "pk").values_list("pk", flat=True)
    return list(rows[:limit] if limit else rows)


def claim(pk: int, *, force: bool = False, model=BatchRecord):
    """The batch (or other leased record, `model`), leased to this poller, or None if
    another poller holds it. `force` takes it whatever the lease: an operator asking
    for one job by id must be able to take over from a poller that died.

    One statement: it writes the lease only where none is held, and returns the
    row it leased. On PostgreSQL the row is picked with FOR UPDATE SKIP LOCKED, so
    a poller never queues behind another's claim; on SQLite the conditional write
    alone decides (one writer at a time).
    """
    now = timezone.now()
    quote = connection.ops.quote_name
    table, claimed = quote(model._meta.db_table), quote("claimed_until")
    free = "" if force else f" AND ({claimed} IS NULL OR {claimed} < %s)"
    pick = f"SELECT {quote('id')} FROM {table} WHERE {quote('id')} = %s{free}"
    if connection.features.has_select_for_update_skip_locked:
        pick += " FOR UPDATE SKIP LOCKED"
    update = f"UPDATE {table} SET {claimed} = %s WHERE {quote('id')} IN ({pick})"
    field = model._meta.get_field("claimed_until")
    lease, now_db = (field.get_db_prep_save(v, connection) for v in (now + CLAIM_LEASE, now))
    params = [lease, pk] + ([] if force else [now_db])
    if not connection.features.can_return_columns_from_insert:  # SQLite before 3.35
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(update, params)
            return model.objects.get(pk=pk) if cursor.rowcount else None
    columns = ", ".join(quote(f.column) for f in model._meta.concrete_fields)
    leased = list(model.objects.raw(f"{update} RETURNING {columns}", params))  # read to the end: SQLite commits then
    return leased[0] if leased else None


def project_of(record) -> str:
    """The OpenAI project a batch or job was created in: its creator key's team's. OpenAI
    scopes them by project, so asking in another project answers 404."""
    key = record.created_by_key
    return key.openai_project if key is not None else ""


def fetch_batch(batch_id: str, project: str = "") -> dict:
    try:
        resp = upstream.get(f"/batches/{batch_id}", project=project)
    except requests.RequestException as exc:
        raise PollError(f"upstream unreachable: {type(exc).__name__}") from None
    if resp.status_code != 200:
        raise PollError(f"upstream answered {resp.status_code} for batch {batch_id}")
    try:
        obj = resp.json()
    except ValueError:
        raise PollError("upstream's batch object is not JSON") from None
    if not isinstance(obj, dict):
        raise PollError("upstream's batch object is not an object")
    return obj


def file_lines(file_id: str, project: str = "") -> Iterator[bytes]:
    """A result file, line by line, never whole in memory."""
    with upstream.get(f"/files/{file_id}/content", stream=True, project=project) as resp:
        if resp.status_code != 200:
            raise PollError(f"upstream answered {resp.status_code} for file {file_id}")
        yield from resp.iter_lines(chunk_size=64 * 1024)


def ensure_known(batch_id: str) -> bool:
    """For `--batch ID` of a batch the relay never saw: record it (unowned) from upstream."""
    if BatchRecord.objects.filter(batch_id=batch_id).exists():
        return True
    return record_batch(fetch_batch(batch_id)) is not None


def _state(batch: BatchRecord) -> tuple:
    return (batch.status, batch.request_total, batch.request_completed, batch.request_failed,
            batch.output_file_id, batch.error_file_id)


def poll_one(pk: int, summary: PollSummary, *, force: bool = False) -> None:
    batch = None
    try:
        batch = claim(pk, force=force)
        if batch is None or (batch.is_final and not needs_results(batch)):
            summary.add("skipped")  # another poller has it, or finished it meanwhile
            return
        summary.add("checked")
        before, was_final = _state(batch), batch.is_final
        error, counted = "", False
        try:
            project = project_of(batch)
            batch = record_batch(fetch_batch(batch.batch_id, project), known=batch) or batch
            if needs_results(batch):
                for file_id, is_error in ((batch.output_file_id, False), (batch.error_file_id, True)):
                    if file_id:
                        summary.add("results", amount=store_results(
                            batch, file_lines(file_id, project), from_error_file=is_error))
                batch, counted = count_results(batch)
        except (PollError, requests.RequestException) as exc:
            error = str(exc) if isinstance(exc, PollError) else f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a malformed answer must not stop the pass, nor recur silently
            log.exception("poll_batches: batch %s", batch.batch_id)
            error = f"{type(exc).__name__}: {exc}"
        if error:
            summary.add("errors", f"{batch.batch_id}: {error}")
        if _state(batch) != before:
            summary.add("changed")
        # Finished in this pass: it reached its final state, or its results were counted.
        if batch.is_final and (counted or not was_final):
            summary.add("completed" if batch.status == "completed" else "failed")
        BatchRecord.objects.filter(pk=batch.pk).update(
            last_polled_at=timezone.now(), last_poll_error=error[:_ERROR_MAX], claimed_until=None)
    except DatabaseError as exc:
        summary.add("errors", f"batch #{pk}: {type(exc).__name__}: {exc}")
        log.warning("poll_batches: batch #%s: %s", pk, exc)


def poll(pks: list[int], concurrency: int, progress: Callable[[str], None] | None = None,
         should_stop: Callable[[], bool] = lambda: False, force: bool = False,
         one: Callable[..., None] | None = None, what: str = "batches") -> PollSummary:
    """Poll each batch once, `concurrency` at a time; batches not started when a stop
    is asked for are left to the next run. `force` takes batches whatever their lease
    (an operator's `--batch ID`)."""
    summary = PollSummary()
    one = one or poll_one
    queue = iter(pks)
    done = 0

    def next_pk() -> int | None:
        nonlocal done
        with summary._lock:
            if should_stop():
                return None
            pk = next(queue, None)
            if progress and done and done % 100 == 0:
                progress(f"  {done}/{len(pks)} {what}")
            done += 1
            return pk

    def worker() -> None:
        # One database connection per worker for the whole pass: opening one per
        # batch cost more than polling it on PostgreSQL.
        try:
            while (pk := next_pk()) is not None:
                one(pk, summary, force=force)
        finally:
            if concurrency > 1:
                connection.close()

    if concurrency <= 1:
        worker()
    else:
        threads = [threading.Thread(target=worker, name=f"poll-{n}") for n in range(min(concurrency, len(pks)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return summary


# ============================================================================
# The poller's pass over background Responses and video jobs not billed yet.
#
# Same guarantees as for batches (above, whose lease it uses):
# a job is leased in one statement (FOR UPDATE SKIP LOCKED on PostgreSQL) before
# its upstream state is fetched with no lock held, so several pollers on several
# hosts never work on the same job; billing itself is the single conditional
# write in audit_app.jobs.bill, so a poller killed at any point, or racing a
# client's retrieve, bills a job at most once, and the next pass bills it if it
# was not. Upstream's object is read with a streaming sniffer: a finished
# Response echoes its whole output (megabytes of base64 for images), and only
# its id, status, model and usage matter here.
# ============================================================================


log = logging.getLogger(__name__)
_ERROR_MAX = AsyncJob._meta.get_field("last_poll_error").max_length
_FIELDS = frozenset({"id", "object", "status", "model", "seconds", "size"})
_PATH = {JobKind.RESPONSE: "/responses/{}", JobKind.VIDEO: "/videos/{}"}


def due_jobs(job_id: str | None = None, limit: int | None = None) -> list[int]:
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
