"""One pass of `poll_batches`: refresh open batches from upstream, count finished ones' results.

Safe on several hosts at once: on PostgreSQL each batch is claimed with
SELECT ... FOR UPDATE SKIP LOCKED for the time of its refresh, so two pollers
never work on the same batch. SQLite has no row locks; there one poller is
assumed (the operator's cron or systemd unit).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import requests
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from proxy_app import upstream
from proxy_app.headers import upstream_credentials

from .batch_records import count_results, needs_results, record_batch, store_results
from .models import BatchRecord
from .models.batches import FINAL_STATUSES

log = logging.getLogger(__name__)


@dataclass
class PollSummary:
    checked: int = 0
    changed: int = 0
    completed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    messages: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, message: str = "") -> None:
        with self._lock:  # the pool's threads report into one summary
            setattr(self, name, getattr(self, name) + 1)
            if message:
                self.messages.append(message)

    def line(self) -> str:
        return (f"checked {self.checked}, changed {self.changed}, completed {self.completed}, "
                f"failed {self.failed}, errors {self.errors}, skipped (claimed elsewhere) {self.skipped}")


def due(batch_id: str | None = None, limit: int | None = None) -> list[int]:
    """Batches not final yet, and final ones whose results are not counted."""
    rows = BatchRecord.objects.filter(
        ~Q(status__in=FINAL_STATUSES) | Q(results_counted_at__isnull=True)
        & (Q(output_file__isnull=False) | Q(error_file__isnull=False))
    )
    if batch_id:
        rows = BatchRecord.objects.filter(batch_id=batch_id)
    rows = rows.order_by("last_polled_at", "pk").values_list("pk", flat=True)
    return list(rows[:limit] if limit else rows)


@contextmanager
def claimed(pk: int) -> Iterator[BatchRecord | None]:
    if connection.features.has_select_for_update_skip_locked:
        with transaction.atomic():
            yield BatchRecord.objects.select_for_update(skip_locked=True).filter(pk=pk).first()
    else:
        yield BatchRecord.objects.filter(pk=pk).first()


def _get(path: str, *, stream: bool = False) -> requests.Response:
    resp = upstream.session().get(upstream.url_for(path, ""), headers=upstream_credentials(),
                                  timeout=upstream.timeouts(), stream=stream)
    return resp


def file_lines(file_id: str) -> Iterator[bytes]:
    """A result file, line by line, never whole in memory."""
    with _get(f"/files/{file_id}/content", stream=True) as resp:
        resp.raise_for_status()
        yield from resp.iter_lines(chunk_size=64 * 1024)


def poll_one(pk: int, summary: PollSummary, lines: Callable[[str], Iterator[bytes]] = file_lines) -> None:
    try:
        with claimed(pk) as batch:
            if batch is None:
                summary.add("skipped")
                return
            summary.add("checked")
            before = (batch.status, batch.request_completed, batch.request_failed,
                      batch.output_file_id, batch.error_file_id)
            try:
                resp = _get(f"/batches/{batch.batch_id}")
                if resp.status_code != 200:
                    raise RuntimeError(f"upstream answered {resp.status_code}")
                batch = record_batch(resp.json()) or batch
                batch.last_poll_error = ""
            except (requests.RequestException, RuntimeError, ValueError) as exc:
                batch.last_poll_error = f"{type(exc).__name__}: {exc}"[:1024]
                summary.add("errors", f"{batch.batch_id}: {batch.last_poll_error}")
            batch.last_polled_at = timezone.now()
            BatchRecord.objects.filter(pk=batch.pk).update(
                last_polled_at=batch.last_polled_at, last_poll_error=batch.last_poll_error)
            after = (batch.status, batch.request_completed, batch.request_failed,
                     batch.output_file_id, batch.error_file_id)
            if after != before:
                summary.add("changed")
            if needs_results(batch) and not batch.last_poll_error:
                for file_id, is_error in ((batch.output_file_id, False), (batch.error_file_id, True)):
                    if file_id:
                        store_results(batch, lines(file_id), from_error_file=is_error)
                count_results(batch)
                if batch.status == "completed":
                    summary.add("completed")
                else:
                    summary.add("failed")
    except (requests.RequestException, DatabaseError) as exc:
        summary.add("errors", f"batch #{pk}: {type(exc).__name__}: {exc}")
        log.warning("poll_batches: batch #%s: %s", pk, exc)


def poll(pks: list[int], concurrency: int, progress: Callable[[str], None] | None = None) -> PollSummary:
    summary = PollSummary()

    def work(pk: int) -> None:
        try:
            poll_one(pk, summary)
        finally:
            connection.close()  # each thread has its own connection: give it back

    if concurrency <= 1:
        for pk in pks:
            poll_one(pk, summary)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for done, _ in enumerate(pool.map(work, pks), start=1):
                if progress and done % 100 == 0:
                    progress(f"  {done}/{len(pks)} batches")
    return summary
