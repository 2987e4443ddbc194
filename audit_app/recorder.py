"""Opening and closing ApiCall rows: the audit half of the forwarding pipeline.

The row is committed before anything goes upstream (no call without its row)
and completed by a single UPDATE when the response has been sent, whatever
way it ended.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from .models import ApiCall, Outcome

log = logging.getLogger(__name__)

_ERROR_MAX = ApiCall._meta.get_field("error").max_length
_UA_MAX = ApiCall._meta.get_field("user_agent").max_length


@dataclass
class CallContext:
    """What is known about a call before it goes upstream."""

    method: str
    path: str
    family: str = ""
    key: Any = None
    user: Any = None
    client_ip: str | None = None
    user_agent: str = ""
    started_at: Any = field(default_factory=timezone.now)
    started_monotonic: float = field(default_factory=time.monotonic)


def _base_fields(ctx: CallContext) -> dict[str, Any]:
    return dict(
        started_at=ctx.started_at,
        method=ctx.method[:10],
        path=ctx.path[:2048],
        family=ctx.family,
        key=ctx.key,
        user=ctx.user,
        client_ip=ctx.client_ip,
        user_agent=ctx.user_agent[:_UA_MAX],
    )


def _finish_fields(ctx: CallContext) -> dict[str, Any]:
    return dict(
        finished_at=timezone.now(),
        duration_ms=round((time.monotonic() - ctx.started_monotonic) * 1000, 3),
    )


def open_call(ctx: CallContext) -> ApiCall:
    """Insert the pending row. A DatabaseError here must stop the call (503)."""
    return ApiCall.objects.create(**_base_fields(ctx), outcome=Outcome.PENDING)


def record_rejected(ctx: CallContext, status: int, message: str) -> None:
    """One finished row for a request the relay answered itself.

    Never raises: a failing audit write must not turn a clear 4xx into a 500.
    """
    try:
        ApiCall.objects.create(
            **_base_fields(ctx), **_finish_fields(ctx), status=status,
            outcome=Outcome.REJECTED, error=message[:_ERROR_MAX],
        )
    except DatabaseError:
        log.exception("audit: could not record a rejected %s %s", ctx.method, ctx.path)


def close_call(call_id: int, ctx: CallContext, **fields: Any) -> None:
    """Complete the row. Retries once on a fresh connection, because this runs
    after a long stream whose connection may have been recycled meanwhile."""
    if "error" in fields:
        fields["error"] = (fields["error"] or "")[:_ERROR_MAX]
    fields.update(_finish_fields(ctx))
    for attempt in (1, 2):
        try:
            ApiCall.objects.filter(pk=call_id).update(**fields)
            return
        except DatabaseError:
            if attempt == 2:
                # The row stays pending; reconcile_calls will mark it interrupted.
                log.exception("audit: could not complete call %s", call_id)
            else:
                connection.close()


def release_connection() -> None:
    """Give the DB connection back while a long response streams.

    Under gevent each in-flight request holds its own connection; 500 open
    streams must not mean 500 PostgreSQL connections.
    """
    close_old_connections()
    if connection.connection is not None and not connection.in_atomic_block:
        connection.close()
