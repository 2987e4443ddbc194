"""Errors and latency rollups: every finished call adds itself to its day's histograms.

One row per (day, model, endpoint family, user, key, outcome, status class), with
the call count and two fixed-edge histograms (models.stats.LATENCY_EDGES_MS):
duration and time to first byte. The write is one more upsert in the
transaction that completes the call (on PostgreSQL, one more CTE of the single
statement), so the errors and latency view reads a few thousand rollup rows
per month instead of millions of calls, and percentiles come from summed
histograms.
"""
from __future__ import annotations

import bisect
import operator
from functools import lru_cache
from dataclasses import dataclass
from datetime import date
from typing import Any, Iterable

from django.db import connection

from .models import ApiCall, CallStatsDaily
from .models.stats import DURATION_COLUMNS, LATENCY_BUCKETS, LATENCY_EDGES_MS, TTFB_COLUMNS
from .rollups import bucket_date

_TABLE = CallStatsDaily._meta.db_table
_KEY = ("date", "model", "family", "user_id", "key_id", "outcome", "status_class")
_COUNTS = ("calls", "ttfb_calls", *DURATION_COLUMNS, *TTFB_COLUMNS)
_COLUMNS = (*_KEY, *_COUNTS)
_ON_CONFLICT = (f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
                + ", ".join(f"{c} = {_TABLE}.{c} + excluded.{c}" for c in _COUNTS))
_UPSERT = f"INSERT INTO {_TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) {_ON_CONFLICT}"


def compact(values: list[Any]) -> tuple[tuple[str, ...], list[Any]]:
    """A call's stat_values() as only the counters it changes (a call touches at most four of
    the 42): the statement the relay runs per call names those alone, which on PostgreSQL
    took close_call's extra cost from about 1.1 ms to a fraction of that (docs/admin.md)."""
    counts = values[len(_KEY):]
    columns = tuple(c for c, v in zip(_COUNTS, counts) if v) or ("calls",)
    return columns, [*values[:len(_KEY)], *(v for c, v in zip(_COUNTS, counts) if c in columns)]


@lru_cache(maxsize=1024)
def compact_sql(columns: tuple[str, ...], source: str | None = None) -> str:
    """INSERT … ON CONFLICT for these counters; with `source`, its row comes from that CTE."""
    names = (*_KEY, *columns)
    marks = ", ".join(["%s"] * len(names))
    conflict = (f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
                + ", ".join(f"{c} = {_TABLE}.{c} + excluded.{c}" for c in columns))
    rows = f"SELECT {marks} FROM {source}" if source else f"VALUES ({marks})"
    return f"INSERT INTO {_TABLE} ({', '.join(names)}) {rows} {conflict}"


def bucket_of(ms: float) -> int:
    """The histogram bucket of a duration in milliseconds."""
    return bisect.bisect_right(LATENCY_EDGES_MS, ms)


def status_class(status: int | None) -> int:
    return status // 100 if status and 100 <= status < 600 else 0


def stat_values(*, started_at, model: str, family: str, user_id: int | None, key_id: int | None,
                outcome: str, status: int | None, duration_ms: float | None, ttfb_ms: float | None,
                calls: int = 1) -> list[Any]:
    """One finished call's values for its stats row, in the upsert's column order."""
    duration = [0] * LATENCY_BUCKETS
    ttfb = [0] * LATENCY_BUCKETS
    if duration_ms is not None:
        duration[bucket_of(duration_ms)] = calls
    if ttfb_ms is not None:
        ttfb[bucket_of(ttfb_ms)] = calls
    return [bucket_date(started_at), (model or "")[:128], family or "", user_id or 0, key_id or 0,
            str(outcome), status_class(status), calls, calls if ttfb_ms is not None else 0, *duration, *ttfb]


def upsert(values: list[Any]) -> None:
    """Add a call's stat_values() to its row. Call inside the caller's transaction."""
    columns, params = compact(values)
    with connection.cursor() as cursor:
        cursor.execute(compact_sql(columns), params)


def add_call(call: ApiCall) -> None:
    """Count a finished call that was written without the recorder (reconcile_calls)."""
    upsert(stat_values(started_at=call.started_at, model=call.model, family=call.family,
                       user_id=call.user_id, key_id=call.key_id, outcome=call.outcome, status=call.status,
                       duration_ms=call.duration_ms, ttfb_ms=call.ttfb_ms))


def rebuild(since: date | None = None) -> int:
    """Recompute the rows from raw calls (tests, seed_demo, repairs). Returns rows written.

    One pass over the calls in Python: for days whose raw calls are all kept.
    """
    from collections import defaultdict

    calls = ApiCall.objects.exclude(outcome="pending")
    rows = CallStatsDaily.objects.all()
    if since is not None:
        from datetime import datetime

        from django.utils import timezone
        calls = calls.filter(started_at__gte=timezone.make_aware(datetime.combine(since, datetime.min.time())))
        rows = rows.filter(date__gte=since)
    rows.delete()
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0] * len(_COUNTS))
    for call in calls.values("started_at", "model", "family", "user_id", "key_id", "outcome", "status",
                             "duration_ms", "ttfb_ms").iterator(chunk_size=5000):
        values = stat_values(**{k: v for k, v in call.items()})
        acc = sums[tuple(values[:len(_KEY)])]
        for i, v in enumerate(values[len(_KEY):]):
            acc[i] += v
    bulk_add(((*k, *v) for k, v in sums.items()))
    return len(sums)


def bulk_add(rows: Iterable[Iterable[Any]]) -> None:
    """Add many pre-summed rows (values in _COLUMNS order)."""
    with connection.cursor() as cursor:
        cursor.executemany(_UPSERT, [list(r) for r in rows])


# --- reading ----------------------------------------------------------------------------


@dataclass
class Histogram:
    counts: list[int]

    @classmethod
    def empty(cls) -> "Histogram":
        return cls([0] * LATENCY_BUCKETS)

    def add(self, counts: Iterable[int]) -> None:
        # map(add) runs in C: the errors view adds thousands of rows of 20 buckets.
        self.counts = list(map(operator.add, self.counts, counts))

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (0-100), interpolated linearly inside its bucket.

        Exact to within the bucket that holds it; None without values. In the
        open last bucket (300 s and more) the answer is its lower edge.
        """
        total = self.total
        if not total:
            return None
        rank = total * p / 100
        seen = 0
        for i, count in enumerate(self.counts):
            if count and seen + count >= rank:
                lo = LATENCY_EDGES_MS[i - 1] if i else 0
                if i >= len(LATENCY_EDGES_MS):
                    return float(lo)
                hi = LATENCY_EDGES_MS[i]
                return lo + (hi - lo) * max(rank - seen, 0) / count
            seen += count
        return float(LATENCY_EDGES_MS[-1])

    def bucket_floor(self, p: float) -> int:
        """The lower edge (ms) of the bucket holding the p-th percentile: for "calls at least this slow"."""
        total, seen = self.total, 0
        rank = total * p / 100
        for i, count in enumerate(self.counts):
            if count and seen + count >= rank:
                return LATENCY_EDGES_MS[i - 1] if i else 0
            seen += count
        return 0
