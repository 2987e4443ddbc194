"""Spend against budget for the month, per key and per user, and the 80% / 100% alerts.

Spend is read from the daily rollups (UsageDaily.cost: priced calls only; calls
of unknown cost are counted apart and named in the figures, never as $0).
`check_budget_alerts` is the one function that sends alerts: call it after a
call settles (for its key and user), or for everyone from the
`send_budget_alerts` command on a timer. Each threshold mails once per key or
user per month: the BudgetAlert row is inserted before the mail, and its unique
key (kind, id, month, threshold) stops a second process from sending it again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from .models import BudgetAlert, UsageDaily

log = logging.getLogger(__name__)

THRESHOLDS = (80, 100)


def month_start(today: date | None = None) -> date:
    return (today or timezone.localdate()).replace(day=1)


@dataclass
class BudgetLine:
    kind: str  # "key" or "user"
    object_id: int
    label: str
    owner: str
    owner_id: int
    budget: Decimal
    spend: Decimal
    unknown_calls: int  # unpriced + usage unknown: not in the spend

    @property
    def share(self) -> float:
        return float(self.spend / self.budget) if self.budget > 0 else 1.0

    @property
    def percent(self) -> int:
        return int(self.share * 100)

    @property
    def level(self) -> str:
        """"over" at 100% and more, "near" from 80%, else "ok": the CSS class of the bar."""
        return "over" if self.share >= 1 else "near" if self.share >= 0.8 else "ok"


def _spend(field: str, ids: list[int], first: date) -> dict[int, tuple[Decimal, int]]:
    if not ids:
        return {}
    rows = (UsageDaily.objects.filter(date__gte=first, **{f"{field}__in": ids}).values(field)
            .annotate(cost=Sum("cost"), unpriced=Sum("unpriced_calls"), unknown=Sum("unknown_calls")).order_by())
    return {r[field]: (r["cost"] or Decimal(0), (r["unpriced"] or 0) + (r["unknown"] or 0)) for r in rows}


def budget_lines(*, today: date | None = None, key_ids: list[int] | None = None,
                 user_ids: list[int] | None = None) -> list[BudgetLine]:
    """Every key and user with a monthly budget (or only those named), with this month's spend."""
    from proxy_app.models import RelayKey, UserLimit

    first = month_start(today)
    keys = RelayKey.objects.select_related("owner").filter(monthly_budget_usd__isnull=False,
                                                           revoked_at__isnull=True)
    limits = UserLimit.objects.select_related("user").filter(monthly_budget_usd__isnull=False)
    if key_ids is not None or user_ids is not None:
        keys = keys.filter(pk__in=key_ids or [])
        limits = limits.filter(user_id__in=user_ids or [])
    keys, limits = list(keys), list(limits)
    key_spend = _spend("key_id", [k.pk for k in keys], first)
    user_spend = _spend("user_id", [lim.user_id for lim in limits], first)
    lines = [BudgetLine("key", k.pk, str(k), k.owner.get_username(), k.owner_id, k.monthly_budget_usd,
                        *key_spend.get(k.pk, (Decimal(0), 0))) for k in keys]
    lines += [BudgetLine("user", lim.user_id, lim.user.get_username(), lim.user.get_username(), lim.user_id,
                         lim.monthly_budget_usd, *user_spend.get(lim.user_id, (Decimal(0), 0))) for lim in limits]
    return sorted(lines, key=lambda line: (-line.share, line.kind, line.label))


def _admin_emails() -> list[str]:
    configured = list(getattr(settings, "RELAY_ALERT_EMAILS", []) or [])
    if configured:
        return configured
    return list(get_user_model().objects.filter(is_superuser=True, is_active=True).exclude(email="")
                .values_list("email", flat=True))


def check_budget_alerts(*, key_id: int | None = None, user_id: int | None = None,
                        today: date | None = None) -> list[BudgetAlert]:
    """Send the 80% and 100% alerts due for one key and/or user (or, with neither, for
    every budget); returns the alerts sent now. Each goes once per threshold per month.

    Cheap enough to call after a call settles: two small rollup queries when the key
    or user has a budget, none otherwise. Never raises on a mail failure (logged; the
    alert row is removed so that the next check tries again).
    """
    if key_id is None and user_id is None:
        lines = budget_lines(today=today)
    else:
        lines = budget_lines(today=today, key_ids=[key_id] if key_id else [],
                             user_ids=[user_id] if user_id else [])
    first = month_start(today)
    sent: list[BudgetAlert] = []
    for line in lines:
        due = [t for t in THRESHOLDS if line.spend * 100 >= line.budget * t]
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
    owner_email = get_user_model().objects.filter(pk=line.owner_id).values_list("email", flat=True).first()
    recipients = list(dict.fromkeys([e for e in [owner_email, *_admin_emails()] if e]))
    try:
        with transaction.atomic():
            alert = BudgetAlert.objects.create(
                kind=line.kind, object_id=line.object_id, month=first, threshold=threshold,
                budget=line.budget, spend=line.spend, recipients=", ".join(recipients)[:1024])
    except IntegrityError:
        return None  # another process sent it
    what = f"Relay key {line.label} of {line.owner}" if line.kind == "key" else f"User {line.label}"
    reached = "has used its whole" if threshold >= 100 else f"has used {threshold}% of its"
    subject = f"[Team Relay] {what} {reached} monthly budget"
    body = (f"{what} {reached} monthly budget for {first:%B %Y}.\n\n"
            f"Spent: ${line.spend.quantize(Decimal('0.01'))} of ${line.budget} ({line.percent}%).\n")
    if line.unknown_calls:
        body += (f"{line.unknown_calls} calls of unknown cost (unpriced or usage unknown) are not in "
                 f"this figure.\n")
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


# A call that settles checks its budgets at most this often per key or user.
CHECK_EVERY_SECONDS = 60


def check_after_call(key, user) -> list[BudgetAlert]:
    """For the integrator to call when a generating call settles (after its cost is in the
    rollups): checks the alerts of that call's key and user, if either has a budget, at
    most once per CHECK_EVERY_SECONDS each (a cache.add, shared by every worker). Costs
    nothing for keys and users without a budget. Never raises."""
    from django.core.cache import cache

    key_id = key.pk if key is not None and key.monthly_budget_usd is not None else None
    limit = getattr(user, "relay_limit", None) if user is not None else None
    user_id = user.pk if limit is not None and limit.monthly_budget_usd is not None else None
    month = month_start()
    if key_id is not None and not cache.add(f"relay:budget-check:k{key_id}:{month:%Y%m}", 1, CHECK_EVERY_SECONDS):
        key_id = None
    if user_id is not None and not cache.add(f"relay:budget-check:u{user_id}:{month:%Y%m}", 1, CHECK_EVERY_SECONDS):
        user_id = None
    if key_id is None and user_id is None:
        return []
    try:
        return check_budget_alerts(key_id=key_id, user_id=user_id)
    except Exception:  # an alert must never fail the call that triggered it
        log.exception("budget alerts: check after a call failed")
        return []
