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
- A background Response's or a video's reservation passes to its job when the call ends
  (`AsyncJob.budget_hold`, counted by `month_spend`), and holds until the job is
  billed, by whoever sees it end first (audit_app.jobs).
- A key or user with a budget may not use a model without a price, or a dimension
  without a rate (a tier, audio output, a billed tool), because the relay could not
  count it: 403 naming the reason, until an admin adds the price or rate.

Amounts in the cache are integers of 1e-10 USD (the cost columns' scale).

The second half of this module reports spend against budget for the month and
sends the 80% / 100% alerts.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone as dt_timezone
from decimal import Decimal, ROUND_CEILING
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache, caches
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Sum
from django.utils import timezone

from . import pricing
from .jobs import video_priced_as
from .models import ApiCall, AsyncJob, BudgetAlert, BudgetHold, Outcome, UsageDaily


UNIT = Decimal("1e-10")
# Requests that generate (and so are billed), each reserved while it runs. The
# reservation of a background Response or a video passes to its job, which holds it
# until billed (jobs.bill); batches and remixes are refused under a budget (docs/prices.md).
GENERATING_PATHS = frozenset({
    "/v1/responses", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
    "/v1/images/generations", "/v1/images/edits", "/v1/images/variations",
    "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/videos",
    "/v1/responses/compact",
})
# What upstream assumes for a video request that leaves them out (OpenAI's spec).
_VIDEO_DEFAULTS = {"model": "sora-2", "seconds": "4", "size": "720x1280"}
# Body fields the estimate reads (sniffed from bodies too large to parse whole).
ESTIMATE_FIELDS = frozenset({"background", "model", "max_output_tokens", "max_completion_tokens", "max_tokens",
                             "n", "seconds", "service_tier", "size", "quality", "max_tool_calls"})
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
    if path == "/v1/videos":
        return _video_cost(model, fields)
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


def _video_cost(model: Any, fields: dict[str, Any]) -> Decimal:
    """A video's cost, known from its request: its seconds at its model's (and size's) rate."""
    model = _VIDEO_DEFAULTS["model"] if model is None else model
    seconds = fields.get("seconds", _VIDEO_DEFAULTS["seconds"])
    if not isinstance(model, str) or not model:
        raise Unpriceable("the relay could not read the request's model")
    if not isinstance(seconds, (str, int)) or isinstance(seconds, bool) \
            or not re.fullmatch(r"[0-9]{1,4}", str(seconds)) or int(seconds) <= 0:
        raise Unpriceable("the relay could not read the request's seconds")
    priced_as = video_priced_as(model, fields.get("size", _VIDEO_DEFAULTS["size"]))
    price = pricing.price_for(priced_as, timezone.now())
    cost = pricing.cost_of(pricing.Usage(video_seconds=Decimal(int(seconds))), price) if price is not None else None
    if cost is None:
        raise Unpriceable(f"model '{priced_as}' has no per-second video price")
    return max(cost, _setting('RELAY_BUDGET_MIN_RESERVATION_USD'))


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


# A budget's owner (its tag's letter: k12, u3, t7; a BudgetLine's kind's first letter) as
# a column of the rollups (and of ApiCall) and of AsyncJob.
OWNER_FIELDS = {"k": ("key_id", "created_by_key_id"), "u": ("user_id", "created_by_id"),
                "t": ("key__team_id", "created_by_key__team_id")}


def _month() -> date:
    return timezone.localdate().replace(day=1)


def month_spend(owner: str) -> Decimal:
    """Priced cost plus the holds of unpriced and usage-unknown calls, this calendar month,
    plus the holds of jobs still running, background responses and videos (whenever they
    started: their cost lands on the day they end), plus those of calls left pending past
    the timeout, whose reservations have lapsed.

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
    owner_id = int(owner[1:])
    field, job_field = OWNER_FIELDS[owner[0]]
    by_owner = {field: owner_id}
    # Running jobs' holds and lapsed calls' first: a job billed (or a call reconciled)
    # between the reads is then counted twice for a moment, never not at all.
    running = AsyncJob.objects.filter(counted_at__isnull=True, budget_hold__isnull=False, **{job_field: owner_id}) \
        .aggregate(held=Sum("budget_hold"))["held"]
    # Calls of this month still pending past the timeout (a dead worker, reconcile_calls not
    # run yet): their reservations have lapsed, the hold their rows carry still counts; from
    # a cached figure's lifetime before the lapse (twice for a moment, never not at all),
    # and not for a call whose job holds it now.
    cutoff = settings.RELAY_PENDING_TIMEOUT_SECONDS - _setting("RELAY_SPEND_CACHE_SECONDS")
    lapsed = ApiCall.objects.filter(
        outcome=Outcome.PENDING, budget_held__isnull=False, **by_owner,
        started_at__gte=timezone.make_aware(datetime.combine(first, datetime.min.time())),
        started_at__lt=timezone.now() - timedelta(seconds=cutoff),
    ).exclude(Exists(AsyncJob.objects.filter(call_id=OuterRef("pk")))).aggregate(held=Sum("budget_held"))["held"]
    sums = UsageDaily.objects.filter(date__gte=first, **by_owner).aggregate(cost=Sum("cost"), held=Sum("budget_held"))
    spend = sum((v or Decimal(0) for v in (sums["cost"], sums["held"], running, lapsed)), Decimal(0))
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


# ============================================================================
# Spend against budget for the month, per key and per user, and the 80% / 100% alerts.
#
# Spend is read from the daily rollups (UsageDaily.cost: priced calls only; calls
# of unknown cost are counted apart and named in the figures, never as $0).
# `check_budget_alerts` is the one function that sends alerts: call it after a
# call settles (for its key and user), or for everyone from the
# `send_budget_alerts` command on a timer. Each threshold mails once per key or
# user per month: the BudgetAlert row is inserted before the mail, and its unique
# key (kind, id, month, threshold) stops a second process from sending it again.
# ============================================================================


log = logging.getLogger(__name__)

THRESHOLDS = (80, 100)


def month_start(today: date | None = None) -> date:
    return (today or timezone.localdate()).replace(day=1)


@dataclass
class BudgetLine:
    kind: str  # "key", "user" or "team"
    object_id: int
    label: str
    owner: str
    owner_id: int | None  # the user mailed with the admins; None for a team
    budget: Decimal
    spend: Decimal  # priced cost this month
    unknown_calls: int  # unpriced + usage unknown: not in the spend
    # What the budget counts beyond the spend, as `month_spend` does: the holds of calls of
    # unknown cost and of jobs still running. Alerts and the bar count it, as refusals do.
    held: Decimal = Decimal(0)

    @property
    def counted(self) -> Decimal:
        return self.spend + self.held

    @property
    def share(self) -> float:
        return float(self.counted / self.budget) if self.budget > 0 else 1.0

    @property
    def percent(self) -> int:
        return int(self.share * 100)

    @property
    def level(self) -> str:
        """"over" at 100% and more, "near" from 80%, else "ok": the CSS class of the bar."""
        return "over" if self.share >= 1 else "near" if self.share >= 0.8 else "ok"


def _spend(kind: str, ids: list[int], first: date) -> dict[int, tuple[Decimal, int, Decimal]]:
    """(priced cost, calls of unknown cost, held) this month per owner id."""
    if not ids:
        return {}
    field, job_field = OWNER_FIELDS[kind[0]]
    holds = dict(AsyncJob.objects.filter(counted_at__isnull=True, budget_hold__isnull=False, **{f"{job_field}__in": ids})
                 .values(job_field).annotate(s=Sum("budget_hold")).order_by().values_list(job_field, "s"))
    rows = (UsageDaily.objects.filter(date__gte=first, **{f"{field}__in": ids}).values(field)
            .annotate(cost=Sum("cost"), held=Sum("budget_held"), unpriced=Sum("unpriced_calls"),
                      unknown=Sum("unknown_calls")).order_by())
    out = {oid: (Decimal(0), 0, held or Decimal(0)) for oid, held in holds.items()}
    for r in rows:
        held = (r["held"] or Decimal(0)) + (holds.get(r[field]) or Decimal(0))
        out[r[field]] = (r["cost"] or Decimal(0), (r["unpriced"] or 0) + (r["unknown"] or 0), held)
    return out


def budget_lines(*, today: date | None = None, key_ids: list[int] | None = None,
                 user_ids: list[int] | None = None, team_ids: list[int] | None = None) -> list[BudgetLine]:
    """Every key, user and team with a monthly budget (or only those named), with this month's spend."""
    from proxy_app.models import RelayKey, Team, UserLimit

    first = month_start(today)
    keys = RelayKey.objects.select_related("owner").filter(monthly_budget_usd__isnull=False,
                                                           revoked_at__isnull=True)
    limits = UserLimit.objects.select_related("user").filter(monthly_budget_usd__isnull=False)
    teams = Team.objects.select_related("group").filter(monthly_budget_usd__isnull=False)
    if key_ids is not None or user_ids is not None or team_ids is not None:
        keys = keys.filter(pk__in=key_ids or [])
        limits = limits.filter(user_id__in=user_ids or [])
        teams = teams.filter(pk__in=team_ids or [])
    keys, limits, teams = list(keys), list(limits), list(teams)
    none = (Decimal(0), 0, Decimal(0))
    key_spend = _spend("key", [k.pk for k in keys], first)
    user_spend = _spend("user", [lim.user_id for lim in limits], first)
    team_spend = _spend("team", [t.pk for t in teams], first)
    lines = [BudgetLine("key", k.pk, str(k), k.owner.get_username(), k.owner_id, k.monthly_budget_usd,
                        *key_spend.get(k.pk, none)) for k in keys]
    lines += [BudgetLine("user", lim.user_id, lim.user.get_username(), lim.user.get_username(), lim.user_id,
                         lim.monthly_budget_usd, *user_spend.get(lim.user_id, none)) for lim in limits]
    lines += [BudgetLine("team", t.pk, str(t), str(t), None, t.monthly_budget_usd, *team_spend.get(t.pk, none))
              for t in teams]
    return sorted(lines, key=lambda line: (-line.share, line.kind, line.label))


def _admin_emails() -> list[str]:
    configured = list(getattr(settings, "RELAY_ALERT_EMAILS", []) or [])
    if configured:
        return configured
    return list(get_user_model().objects.filter(is_superuser=True, is_active=True).exclude(email="")
                .values_list("email", flat=True))


def check_budget_alerts(*, key_id: int | None = None, user_id: int | None = None,
                        team_id: int | None = None, today: date | None = None) -> list[BudgetAlert]:
    """Send the 80% and 100% alerts due for one key, user and/or team (or, with none, for
    every budget); returns the alerts sent now. Each goes once per threshold per month.
    A budget counts what refusals count (`BudgetLine.counted`): spend and holds.

    Cheap enough to call after a call settles: two small rollup queries when the key
    or user has a budget, none otherwise. Never raises on a mail failure (logged; the
    alert row is removed so that the next check tries again).
    """
    if key_id is None and user_id is None and team_id is None:
        lines = budget_lines(today=today)
    else:
        lines = budget_lines(today=today, key_ids=[key_id] if key_id else [],
                             user_ids=[user_id] if user_id else [], team_ids=[team_id] if team_id else [])
    first = month_start(today)
    sent: list[BudgetAlert] = []
    for line in lines:
        due = [t for t in THRESHOLDS if line.counted * 100 >= line.budget * t]
        if not due:
            continue
        already = set(BudgetAlert.objects.filter(kind=line.kind, object_id=line.object_id, month=first)
                      .values_list("threshold", flat=True))
        for threshold in due:
            if threshold in already:
                continue
            alert = _send(line, threshold, first)
            if alert is not None:
                sent.append(alert)
    return sent


def _send(line: BudgetLine, threshold: int, first: date) -> BudgetAlert | None:
    owner_email = None if line.owner_id is None else \
        get_user_model().objects.filter(pk=line.owner_id).values_list("email", flat=True).first()
    recipients = list(dict.fromkeys([e for e in [owner_email, *_admin_emails()] if e]))
    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(
                kind=line.kind, object_id=line.object_id, month=first, threshold=threshold,
                budget=line.budget, spend=line.counted, recipients=", ".join(recipients)[:1024])
    except IntegrityError:
        return None  # another process sent it
    what = {"key": f"Relay key {line.label} of {line.owner}", "user": f"User {line.label}",
            "team": f"Team {line.label}"}[line.kind]
    reached = "has used its whole" if threshold >= 100 else f"has used {threshold}% of its"
    subject = f"[Team Relay] {what} {reached} monthly budget"
    body = (f"{what} {reached} monthly budget for {first:%B %Y}.\n\n"
            f"Spent: ${line.counted.quantize(Decimal('0.01'))} of ${line.budget} ({line.percent}%).\n")
    if line.held:
        body += (f"Of this, ${line.held.quantize(Decimal('0.01'))} is held for calls of unknown cost and "
                 f"for jobs still running (background responses, videos).\n")
    if line.unknown_calls:
        body += (f"{line.unknown_calls} calls are of unknown cost (unpriced or usage unknown): this "
                 f"figure counts what was held for them, not what they cost.\n")
    if threshold >= 100:
        body += "\nFurther calls are refused until the budget is raised or the month ends.\n"
    if not recipients:
        log.warning("budget alert %s: nobody to send it to (no owner email, no RELAY_ALERT_EMAILS, "
                    "no superuser with an email)", subject)
        return alert
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:  # a mail server down must not stop the relay; the next check retries
        log.exception("budget alert: could not send %r", subject)
        alert.delete()
        return None
    return alert


# A call that settles checks its budgets at most this often per key, user or team.
CHECK_EVERY_SECONDS = 60


def check_after_call(key, user) -> list[BudgetAlert]:
    """For the integrator to call when a generating call settles (after its cost is in the
    rollups): checks the alerts of the budgets over that call (budget_of: its key, user
    and team), at most once per CHECK_EVERY_SECONDS each (a cache.add, shared by every
    worker). Costs nothing for calls without a budget. Never raises."""
    month = month_start()
    due = {owner[0]: int(owner[1:]) for owner, _, _ in budget_of(key, user)
           if cache.add(f"relay:budget-check:{owner}:{month:%Y%m}", 1, CHECK_EVERY_SECONDS)}
    if not due:
        return []
    try:
        return check_budget_alerts(key_id=due.get("k"), user_id=due.get("u"), team_id=due.get("t"))
    except Exception:  # an alert must never fail the call that triggered it
        log.exception("budget alerts: check after a call failed")
        return []
