"""Budgets that hold: reservations before forwarding, settlement at completion.

docs/prices.md ("Budgets") states the design and the overshoot bound; in short:

- Before a generating call of a key or user with a monthly budget is forwarded, the
  relay reserves an estimated cost for it (`estimate`): input tokens at most the
  body's bytes, output tokens the request's `max_output_tokens` (or `max_tokens`,
  `max_completion_tokens`) capped by the model's largest output, each at the
  highest rate the model has for its kind; tool calls and images at their rates.
- The reservation is admitted only if spend + every open reservation + it stays
  within the budget. The reservation is an atomic increment of a shared counter in
  Redis (or a BudgetHold row with the database cache, whose increments are not
  atomic), so 20 concurrent calls cannot all see the same headroom.
- At completion it is settled: released, with the real cost now in the rollups.
  A call that ends unpriced or usage-unknown keeps its reservation as spend (the
  call's `budget_held`, summed in the rollups): its cost is unknown, so the
  budget counts the most it could have been.
- An unsettled reservation (a worker killed mid-call) expires with the pending-call
  timeout: reservations are counted in time buckets that expire after it.
- A key or user with a budget may not use a model without a price, or a dimension
  without a rate (a tier, audio output, a billed tool), because the relay could not
  count it: 403 naming the reason, until an admin adds the price or rate.

Amounts in the cache are integers of 1e-10 USD (the cost columns' scale).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import timezone as dt_timezone
from decimal import ROUND_CEILING, Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache, caches
from django.db.models import Sum
from django.utils import timezone

from . import pricing
from .models import BudgetHold, UsageDaily

UNIT = Decimal("1e-10")
# Requests that generate (and so are billed). Reads, files, batches and jobs are not
# reserved here: batches and background jobs are billed when they finish (docs/prices.md).
GENERATING_PATHS = frozenset({
    "/v1/responses", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
    "/v1/images/generations", "/v1/images/edits", "/v1/images/variations",
    "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/translations",
})
# Body fields the estimate reads (sniffed from bodies too large to parse whole).
ESTIMATE_FIELDS = frozenset({"background", "model", "max_output_tokens", "max_completion_tokens", "max_tokens", "n",
                             "service_tier", "size", "quality", "max_tool_calls"})
_OUTPUT_LIMITS = ("max_output_tokens", "max_completion_tokens", "max_tokens")
# Tools whose calls OpenAI bills per call: the rate each needs in the model's price.
_SEARCH_RATE = "search_context_cost_per_query.search_context_size_"
_UNRATED_TOOLS = {"file_search": "file_search_cost_per_call",
                  "image_generation": "image_generation_cost_per_call"}


# Overridable in settings; the defaults are documented in docs/prices.md.
DEFAULTS = {
    # Output reserved for a call that sets no limit, on a model whose largest output
    # the price map does not give.
    "RELAY_BUDGET_OUTPUT_CAP_TOKENS": 32768,
    # The least a generating call reserves.
    "RELAY_BUDGET_MIN_RESERVATION_USD": Decimal("0.0001"),
    # Tool calls reserved per billed tool when the request sets no max_tool_calls.
    "RELAY_BUDGET_TOOL_CALLS": 5,
    # How long a spend figure is reused when no call of its budget has settled.
    "RELAY_SPEND_CACHE_SECONDS": 60,
}


def _setting(name: str) -> Any:
    return getattr(settings, name, DEFAULTS[name])


class Unpriceable(Exception):
    """The call would use something without a rate: its cost could not be counted."""


@dataclass
class Reservation:
    amount: Decimal
    # (cache key of the reservation bucket, amount in units) per budget it counts against.
    holds: list[tuple[str, int]] = field(default_factory=list)
    budget_owners: list[str] = field(default_factory=list)  # "k12", "u3": whose spend it settles into


def applies(key: Any, user: Any) -> bool:
    return budget_of(key, user) != []


def budget_of(key: Any, user: Any) -> list[tuple[str, Decimal, str]]:
    """(owner tag, budget, the setting's name) for each budget over this call."""
    out = []
    if key is not None and key.monthly_budget_usd is not None:
        out.append((f"k{key.pk}", key.monthly_budget_usd, "key monthly_budget_usd"))
    limit = getattr(user, "relay_limit", None) if user is not None else None
    if limit is not None and limit.monthly_budget_usd is not None:
        out.append((f"u{user.pk}", limit.monthly_budget_usd, "user monthly_budget_usd"))
    team = key.team if key is not None and key.team_id else None
    if team is not None and team.monthly_budget_usd is not None:
        out.append((f"t{team.pk}", team.monthly_budget_usd, f"team {team} monthly_budget_usd"))
    return out


# --- estimate ------------------------------------------------------------------


def _rates_with(rates: dict, test) -> list[Decimal]:
    return [Decimal(str(v)) for k, v in rates.items() if test(k)]


def estimate(model: Any, fields: dict[str, Any], body_bytes: int, path: str) -> Decimal:
    """An upper estimate of the call's cost; Unpriceable names what has no rate."""
    if not isinstance(model, str) or not model:
        raise Unpriceable("the relay could not read the request's model")
    price = pricing.price_for(model, timezone.now())
    if price is None:
        raise Unpriceable(f"model '{model}' has no price")
    rates = price.rates or {}
    tier = fields.get("service_tier")
    if isinstance(tier, str) and tier.lower() not in pricing.STANDARD_TIERS:
        key = f"input_cost_per_token_{tier.lower()}"
        if not any(k.endswith(f"_{tier.lower()}") for k in rates):
            raise Unpriceable(f"model '{model}' has no rate for service_tier '{tier}' ({key})")
    total = Decimal(0)
    n = fields.get("n") if isinstance(fields.get("n"), int) and fields.get("n") > 0 else 1
    suffix = pricing.tier_suffix(pricing.Usage(service_tier=tier if isinstance(tier, str) else None), False)
    tiers = {k[len("input_cost_per_token_"):] for k in rates
             if k.startswith("input_cost_per_token_") and not k.startswith("input_cost_per_token_above_")}

    def of_tier(k: str) -> bool:
        if suffix:
            return k.endswith(suffix)
        return not any(k.endswith(f"_{t}") for t in tiers)

    # The highest rate of each kind at the call's tier (long-context rates included).
    in_rates = _rates_with(rates, lambda k: of_tier(k) and "token" in k and (
        k.startswith(("input_cost_per", "cache_creation_input", "cache_read_input"))))
    out_rates = _rates_with(rates, lambda k: of_tier(k) and k.startswith("output_cost_per") and "token" in k)
    if in_rates or out_rates:
        # Tokens never outnumber the bytes of the text they encode.
        total += body_bytes * max(in_rates, default=Decimal(0))
        cap = price.max_output_tokens or _setting('RELAY_BUDGET_OUTPUT_CAP_TOKENS')
        asked = next((fields[k] for k in _OUTPUT_LIMITS if isinstance(fields.get(k), int)), None)
        out_tokens = min(asked, cap) if asked is not None and asked > 0 else cap
        total += n * out_tokens * max(out_rates, default=Decimal(0))
        modalities = fields.get("modalities")
        if isinstance(modalities, list) and "audio" in modalities and "output_cost_per_audio_token" not in rates:
            raise Unpriceable(f"model '{model}' has no rate for audio output (output_cost_per_audio_token)")
    elif path.startswith("/v1/images/"):
        per_image = _rates_with(rates, lambda k: "_per_image" in k)
        if not per_image:
            raise Unpriceable(f"model '{model}' has no per-image price (input_cost_per_image/<size>)")
        total += n * max(per_image)
    elif "input_cost_per_character" in rates:
        total += body_bytes * Decimal(str(rates["input_cost_per_character"]))
    elif "input_cost_per_second" in rates:
        # Compressed speech runs at 8 kbit/s or more: at most one second per 1000 bytes.
        total += math.ceil(body_bytes / 1000) * Decimal(str(rates["input_cost_per_second"]))
    else:
        raise Unpriceable(f"model '{model}' has no rate the relay can count")
    total += _tool_fees(model, rates, fields)
    if path == "/v1/chat/completions" and pricing.is_search_model(model):
        total += max(_rates_with(rates, lambda k: k.startswith(_SEARCH_RATE)), default=Decimal(0))
    return max(total, _setting('RELAY_BUDGET_MIN_RESERVATION_USD'))


def _tool_fees(model: str, rates: dict, fields: dict[str, Any]) -> Decimal:
    tools = fields.get("tools")
    if not isinstance(tools, list):
        return Decimal(0)
    calls = fields.get("max_tool_calls")
    calls = calls if isinstance(calls, int) and calls > 0 else _setting('RELAY_BUDGET_TOOL_CALLS')
    fees = Decimal(0)
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str):
            continue
        if kind.startswith("web_search"):
            search = _rates_with(rates, lambda k: k.startswith(_SEARCH_RATE))
            if not search:
                raise Unpriceable(f"model '{model}' has no rate for web search ({_SEARCH_RATE}*)")
            fees += calls * max(search)
        elif kind == "code_interpreter":
            container = pricing.price_for(pricing.CONTAINER_PRICE, timezone.now())
            rate = (container.rates or {}).get("code_interpreter_cost_per_session") if container else None
            if rate is None:
                raise Unpriceable("the code interpreter has no rate (code_interpreter_cost_per_session)")
            fees += Decimal(str(rate))
        elif kind in _UNRATED_TOOLS:
            raise Unpriceable(f"the {kind} tool has no rate in the price list ({_UNRATED_TOOLS[kind]})")
    return fees


# --- spend and reservations ---------------------------------------------------------


def _units(amount: Decimal) -> int:
    return int((amount / UNIT).to_integral_value(rounding=ROUND_CEILING))


def _bucket_seconds() -> int:
    return max(1, settings.RELAY_PENDING_TIMEOUT_SECONDS // 12)


def _reservation_keys(owner: str, now: float) -> list[str]:
    """The buckets still counted: those started within the pending-call timeout."""
    size = _bucket_seconds()
    current = int(now // size)
    return [f"relay:resv:{owner}:{b}" for b in range(current - 12, current + 1)]


def _month() -> date:
    return timezone.localdate().replace(day=1)


def month_spend(owner: str) -> Decimal:
    """Priced cost plus the holds of unpriced and usage-unknown calls, this calendar month.

    Cached in the shared cache together with the settlement generation it was read
    at: a settlement bumps the generation, so the next check reads the rollups
    again instead of a figure that lacks the call just settled.
    """
    first = _month()
    spend_key, gen_key = f"relay:spend:{owner}:{first:%Y%m}", f"relay:spend-gen:{owner}"
    got = cache.get_many([spend_key, gen_key])
    gen = got.get(gen_key, 0)
    cached = got.get(spend_key)
    if cached is not None and cached[1] == gen:
        return Decimal(cached[0])
    rows = UsageDaily.objects.filter(date__gte=first)
    owner_id = int(owner[1:])
    rows = rows.filter(**{"k": {"key_id": owner_id}, "u": {"user_id": owner_id}, "t": {"key__team_id": owner_id}}[owner[0]])
    sums = rows.aggregate(cost=Sum("cost"), held=Sum("budget_held"))
    spend = (sums["cost"] or Decimal(0)) + (sums["held"] or Decimal(0))
    cache.set(spend_key, (str(spend), gen), _setting('RELAY_SPEND_CACHE_SECONDS'))
    return spend


def atomic_cache() -> bool:
    """Whether the cache counts atomically (Redis): else reservations are rows (BudgetHold)."""
    from django.core.cache.backends.redis import RedisCache

    return isinstance(caches["default"], RedisCache)


def reserved(owner: str, now: float) -> Decimal:
    """USD held by calls of this budget in progress (within the pending-call timeout)."""
    if not atomic_cache():
        since = datetime.fromtimestamp(now - settings.RELAY_PENDING_TIMEOUT_SECONDS, dt_timezone.utc)
        held = BudgetHold.objects.filter(owner=owner, created_at__gte=since).aggregate(s=Sum("amount"))["s"]
        return held or Decimal(0)
    values = cache.get_many(_reservation_keys(owner, now))
    return sum((Decimal(v) for v in values.values()), Decimal(0)) * UNIT


def _hold(owner: str, amount: Decimal, now: float) -> tuple[tuple[str, int], Decimal]:
    """Add a hold; returns it and what is held with it: itself and the holds made before it.

    Counting only earlier holds admits calls in the order they reserved: a burst of
    concurrent calls cannot refuse each other all at once.
    """
    if not atomic_cache():
        at = datetime.fromtimestamp(now, dt_timezone.utc)
        row = BudgetHold.objects.create(owner=owner, amount=amount, created_at=at)
        since = datetime.fromtimestamp(now - settings.RELAY_PENDING_TIMEOUT_SECONDS, dt_timezone.utc)
        BudgetHold.objects.filter(owner=owner, created_at__lt=since).delete()  # lapsed, never settled
        held = BudgetHold.objects.filter(owner=owner, created_at__gte=since, pk__lte=row.pk) \
            .aggregate(s=Sum("amount"))["s"]
        return ("db", row.pk), held or amount
    units = _units(amount)
    timeout = settings.RELAY_PENDING_TIMEOUT_SECONDS + 2 * _bucket_seconds()
    *older, bucket = _reservation_keys(owner, now)
    cache.add(bucket, 0, timeout=timeout)
    try:
        after = cache.incr(bucket, units)
    except ValueError:  # expired between add and incr
        cache.add(bucket, units, timeout=timeout)
        after = units
    # `after` counts this hold and those made before it in this bucket.
    held = sum((Decimal(v) for v in cache.get_many(older).values()), Decimal(after)) * UNIT
    return (bucket, units), held


def reserve(key: Any, user: Any, amount: Decimal, now: float) -> tuple[Reservation | None, str]:
    """Hold `amount` against every budget over the call, or none of them.

    Returns (reservation, "") or (None, a sentence naming the budget that refused).
    """
    reservation = Reservation(amount=amount)
    for owner, budget, name in budget_of(key, user):
        hold, open_ = _hold(owner, amount, now)
        reservation.holds.append(hold)
        spent = month_spend(owner)
        if spent + open_ > budget:
            release(reservation)
            return None, (f"{name} of ${budget} (spent ${spent:.2f} this month, ${open_ - amount:.2f} held "
                          f"by calls in progress, this call may cost up to ${amount:.4f})")
        reservation.budget_owners.append(owner)
    return reservation, ""


def release(reservation: Reservation | None) -> None:
    if reservation is None:
        return
    rows = [units for bucket, units in reservation.holds if bucket == "db"]
    if rows:
        BudgetHold.objects.filter(pk__in=rows).delete()
    for bucket, units in reservation.holds:
        if bucket == "db":
            continue
        try:
            cache.decr(bucket, units)
        except ValueError:  # expired: the hold has lapsed already
            pass
    reservation.holds = []


def settle(reservation: Reservation | None) -> None:
    """The call's real cost (or its hold) is in the rollups: mark every cached spend
    figure of its budgets stale, then let the reservation go. In that order, a
    concurrent check counts the call twice for a moment, never not at all."""
    if reservation is None:
        return
    mark_spend_stale(reservation.budget_owners)
    release(reservation)


def mark_spend_stale(owners: list[str]) -> None:
    """A cost just landed in the rollups for these budgets: the next check reads them again."""
    for owner in owners:
        gen_key = f"relay:spend-gen:{owner}"
        cache.add(gen_key, 0, timeout=None)
        try:
            cache.incr(gen_key)
        except ValueError:
            cache.add(gen_key, 1, timeout=None)
