"""Access control per key and per user: scopes, monthly budgets, rate limits.

Each check refuses before anything is forwarded. Family scope, budgets and
rate limits are request rules (they need only the caller); the model scope
needs the body, so `proxy_app.inspection` calls `check_model_scope` once it
has read the body's fields.
"""
from __future__ import annotations

import json
import math
import time
from datetime import date
from decimal import Decimal

from django.core.cache import cache
from django.db.models import Sum
from django.utils import timezone

from audit_app.models import UsageDaily
from audit_app.recorder import CallContext

from . import upstream
from .errors import PolicyDenied, RelayError
from .paths import ApiPath, family_hint
from .policy import REQUEST_RULES

# Spend is cached this long: a budget check costs a cache read, not a query.
SPEND_CACHE_SECONDS = 10


class BudgetExceeded(RelayError):
    status_code = 429
    error_type = "insufficient_quota"
    default_code = "relay_budget_exceeded"


class RateLimited(RelayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


# --- scopes -----------------------------------------------------------------


def check_family_scope(api_path: ApiPath, method: str, ctx: CallContext) -> None:
    allowed = ctx.key.allowed_families if ctx.key is not None else None
    if allowed and api_path.family not in allowed:
        raise PolicyDenied(
            f"Relay key {ctx.key.prefix}… may only call these endpoint families: "
            f"{', '.join(allowed)} (scope: allowed_families); this is '{api_path.family}'.",
            code="outside_key_scope",
        )


def has_model_scope(ctx: CallContext) -> bool:
    return ctx.key is not None and bool(ctx.key.allowed_models)


def check_model_scope(ctx: CallContext, api_path: ApiPath, method: str, fields: dict) -> None:
    """The body's model, and for a new batch the models inside its input file."""
    if not has_model_scope(ctx):
        return
    _check_model(ctx, fields.get("model"))
    if api_path.path == "/v1/batches" and method == "POST":
        _check_batch_input(ctx, fields)


def _check_model(ctx: CallContext, model: object, where: str = "") -> None:
    allowed = ctx.key.allowed_models
    if allowed and isinstance(model, str) and model not in allowed:
        raise PolicyDenied(
            f"Relay key {ctx.key.prefix}… may only use these models: {', '.join(allowed)} "
            f"(scope: allowed_models); {where}'{model}' is not one of them.",
            code="outside_key_scope", param="model",
        )


def _check_batch_input(ctx: CallContext, values: dict) -> None:
    """A batch runs the models named in its input file: read them before it starts."""
    endpoint = values.get("endpoint")
    if isinstance(endpoint, str) and ctx.key.allowed_families:
        family = family_hint(endpoint)
        if family not in ctx.key.allowed_families:
            raise PolicyDenied(
                f"Relay key {ctx.key.prefix}… may only call these endpoint families: "
                f"{', '.join(ctx.key.allowed_families)} (scope: allowed_families); "
                f"this batch runs '{family}'.", code="outside_key_scope", param="endpoint",
            )
    file_id = values.get("input_file_id")
    if not isinstance(file_id, str) or not file_id or "/" in file_id:
        return  # upstream will refuse the batch itself
    try:
        with upstream.get(f"/files/{file_id}/content", stream=True) as resp:
            if resp.status_code != 200:
                raise PolicyDenied(
                    f"The relay could not read batch input file {file_id} to check its models "
                    f"against this key's scope (upstream said {resp.status_code}).",
                    code="outside_key_scope", param="input_file_id",
                )
            for number, line in enumerate(resp.iter_lines(chunk_size=64 * 1024), start=1):
                if not line.strip():
                    continue
                try:
                    model = json.loads(line).get("body", {}).get("model")
                except (ValueError, AttributeError):
                    continue  # upstream validates the file's format
                _check_model(ctx, model, where=f"line {number} of {file_id} uses ")
    except OSError as exc:
        raise PolicyDenied(f"The relay could not read batch input file {file_id}: {type(exc).__name__}.",
                           code="outside_key_scope", param="input_file_id") from None


# --- budgets ------------------------------------------------------------------


def _month_start() -> date:
    return timezone.localdate().replace(day=1)


def month_spend(*, key_id: int | None = None, user_id: int | None = None) -> Decimal:
    """USD spent this calendar month by a key or a user, from the daily rollups."""
    first = _month_start()
    who = f"k{key_id}" if key_id is not None else f"u{user_id}"
    cache_key = f"relay:spend:{who}:{first:%Y%m}"
    cached = cache.get(cache_key)
    if cached is not None:
        return Decimal(cached)
    rows = UsageDaily.objects.filter(date__gte=first)
    rows = rows.filter(key_id=key_id) if key_id is not None else rows.filter(user_id=user_id)
    spend = rows.aggregate(s=Sum("cost"))["s"] or Decimal(0)
    cache.set(cache_key, str(spend), SPEND_CACHE_SECONDS)
    return spend


def check_budgets(api_path: ApiPath, method: str, ctx: CallContext) -> None:
    key = ctx.key
    if key is None:
        return
    if key.monthly_budget_usd is not None:
        spent = month_spend(key_id=key.pk)
        if spent >= key.monthly_budget_usd:
            raise BudgetExceeded(
                f"Relay key {key.prefix}… has used its monthly budget of ${key.monthly_budget_usd} "
                f"(spent ${spent:.2f} this month; budget: key monthly_budget_usd)."
            )
    limit = getattr(ctx.user, "relay_limit", None)
    if limit is not None and limit.monthly_budget_usd is not None:
        spent = month_spend(user_id=ctx.user.pk)
        if spent >= limit.monthly_budget_usd:
            raise BudgetExceeded(
                f"User {ctx.user.get_username()} has used their monthly budget of "
                f"${limit.monthly_budget_usd} (spent ${spent:.2f} this month; budget: user monthly_budget_usd)."
            )


# --- rate limits -----------------------------------------------------------------


WINDOW_SECONDS = 60


def check_rate_limit(api_path: ApiPath, method: str, ctx: CallContext) -> None:
    """Requests per minute per key, shared by every worker and host through
    Django's cache (atomic with Redis; close to it with the database cache).

    A sliding-window counter: the previous minute's count, weighted by how
    much of it still lies inside the last 60 seconds, plus this minute's. A
    plain fixed window would let a key send its whole limit at 0:59 and again
    at 1:00. Refused requests are not counted, so a client that keeps retrying
    is admitted as soon as its rate falls under the limit.
    """
    key = ctx.key
    if key is None or not key.requests_per_minute:
        return
    limit = key.requests_per_minute
    now = time.time()
    window, into = divmod(now, WINDOW_SECONDS)
    counter = f"relay:rpm:{key.pk}:{int(window)}"
    current = _increment(counter)
    previous = cache.get(f"relay:rpm:{key.pk}:{int(window) - 1}", 0)
    weight = 1 - into / WINDOW_SECONDS
    if previous * weight + current <= limit:
        return
    try:
        cache.decr(counter)
    except ValueError:  # the counter expired meanwhile: nothing left to undo
        pass
    retry = _seconds_until_admitted(limit, previous, current - 1, into)
    raise RateLimited(
        f"Relay key {key.prefix}… is limited to {limit} requests per minute "
        f"(limit: requests_per_minute). Retry in {retry}s.",
        headers={"Retry-After": str(retry)},
    )


def _increment(counter: str) -> int:
    # Two windows' lifetime: the next window still reads this one.
    if cache.add(counter, 1, timeout=2 * WINDOW_SECONDS + 5):
        return 1
    try:
        return cache.incr(counter)
    except ValueError:  # expired between add and incr
        cache.add(counter, 1, timeout=2 * WINDOW_SECONDS + 5)
        return 1


def _seconds_until_admitted(limit: int, previous: int, current: int, into: float) -> int:
    """When one more request would fit, if no other arrives meanwhile."""
    if current < limit and previous:
        # Within this window, once the previous one's weight has decayed enough.
        wait = WINDOW_SECONDS * (1 - (limit - 1 - current) / previous) - into
    else:
        # In the next window, this one becomes the weighted previous.
        wait = WINDOW_SECONDS - into + WINDOW_SECONDS * max(0.0, 1 - (limit - 1) / max(current, 1))
    return max(1, math.ceil(wait))


REQUEST_RULES.extend([check_family_scope, check_rate_limit, check_budgets])
