"""Daily usage rollups, kept current as calls finish.

Every finished call with a key adds itself to its (date, user, key, model,
family) bucket in the same transaction that completes its row, so the
rollups always equal the sum of the raw calls, and keep that sum after old
raw rows are pruned.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from .models import ApiCall, Billing, UsageDaily

_COUNTERS = (
    "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens",
    "images", "audio_seconds", "characters", "cost", "budget_held",
    "audio_input_tokens", "audio_output_tokens", "image_input_tokens", "image_output_tokens",
    "web_search_calls", "file_search_calls", "code_interpreter_sessions", "image_generation_calls", "tool_cost",
)
_MONEY = ("cost", "audio_seconds", "budget_held", "tool_cost")
_TABLE = UsageDaily._meta.db_table
_COLUMNS = ("date", "user_id", "key_id", "model", "family", "service_tier", "calls", *_COUNTERS, "unpriced_calls",
            "unknown_calls")
_ON_CONFLICT = (
    "ON CONFLICT (date, user_id, key_id, model, family, service_tier) DO UPDATE SET "
    + ", ".join(f"{c} = {_TABLE}.{c} + excluded.{c}" for c in ("calls", *_COUNTERS, "unpriced_calls", "unknown_calls"))
)
_UPSERT = f"INSERT INTO {_TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) {_ON_CONFLICT}"
# The same, with its row from a query that yields at most one row (see call_rows).
UPSERT_SELECT = (f"INSERT INTO {_TABLE} ({', '.join(_COLUMNS)}) SELECT {', '.join(['%s'] * len(_COLUMNS))} "
                 "FROM {source} " + _ON_CONFLICT)


def bucket_date(started_at: datetime) -> date:
    return timezone.localtime(started_at).date()


def bucket_values(*, started_at: datetime, user_id: int, key_id: int, model: str, family: str,
                  calls: int = 1, unpriced: int = 0, unknown: int = 0, service_tier: str | None = "",
                  **counters: Any) -> list[Any]:
    """The values of one call (or a delta) for its bucket, in the upsert's column order."""
    values = [bucket_date(started_at), user_id, key_id, model or "", family or "", service_tier or "", calls]
    values += [counters.get(c) or 0 for c in _COUNTERS]
    values += [unpriced, unknown]
    return values


def add(**bucket: Any) -> None:
    """Add one call (or a delta) to its bucket. Call inside the caller's transaction."""
    upsert(bucket_values(**bucket))


def upsert(values: list[Any]) -> None:
    """Add values from bucket_values() to their bucket. Call inside the caller's transaction."""
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT, values)


def add_call(call: ApiCall) -> None:
    if call.key_id is None or call.user_id is None:
        return  # rejected before authentication: nobody's usage
    add(
        started_at=call.started_at, user_id=call.user_id, key_id=call.key_id, model=call.model,
        family=call.family, service_tier=call.service_tier, unpriced=1 if call.unpriced else 0,
        unknown=1 if call.billing == Billing.UNKNOWN else 0,
        **{c: getattr(call, c) for c in _COUNTERS},
    )


@transaction.atomic
def rebuild(since: date | None = None) -> int:
    """Recompute the buckets from raw calls (for days whose raw calls are all kept).

    Batch results and billed jobs (background responses, videos) are not calls:
    their shares of the buckets are dropped, not rebuilt. For
    tests and repairs of call-only data; returns the number of buckets written.
    """
    calls = ApiCall.objects.filter(key__isnull=False, user__isnull=False)
    buckets = UsageDaily.objects.all()
    if since is not None:
        start = timezone.make_aware(datetime.combine(since, datetime.min.time()))
        calls = calls.filter(started_at__gte=start)
        buckets = buckets.filter(date__gte=since)
    buckets.delete()
    rows = (
        calls.annotate(day=_day())
        .values("day", "user_id", "key_id", "model", "family", "service_tier")
        .annotate(
            n=Count("id"),
            unpriced_n=Count("id", filter=Q(unpriced=True)),
            unknown_n=Count("id", filter=Q(billing=Billing.UNKNOWN)),
            **{f"s_{c}": Sum(c) for c in _COUNTERS},
        )
    )
    objs = [
        UsageDaily(
            date=r["day"], user_id=r["user_id"], key_id=r["key_id"], model=r["model"],
            family=r["family"], service_tier=r["service_tier"] or "", calls=r["n"], unpriced_calls=r["unpriced_n"],
            unknown_calls=r["unknown_n"],
            **{c: r[f"s_{c}"] or (Decimal(0) if c in _MONEY else 0) for c in _COUNTERS},
        )
        for r in rows.iterator()
    ]
    UsageDaily.objects.bulk_create(objs, batch_size=1000)
    return len(objs)


def _day():
    from django.db.models.functions import TruncDate

    return TruncDate("started_at", tzinfo=timezone.get_current_timezone())
