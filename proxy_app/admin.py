"""Relay keys and per-user limits in the admin.

A key is created here for a user; its plaintext is shown once, on the page that
answers the save (never put in a message cookie or the session), and only its
hash is stored. Keys are revoked, never deleted: the audit trail points at them.
The key hash is never displayed.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import ShowFacets
from django.db.models import DecimalField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from audit_app.admin_toolkit import LinkPermissionsMixin, change_url, changelist_url, link
from audit_app.admin_toolkit import user_filter
from audit_app.budgets import OWNER_FIELDS
from audit_app.models import ApiCall, AsyncJob, UsageDaily

from .models import RelayKey, Team, UserLimit


def month_spend(**owner: int) -> Decimal:
    """USD spent this calendar month by a key (key_id=), a user (user_id=) or a team's keys
    (team_id=), from the rollups: read fresh here, not through the relay's 10-second spend cache."""
    first = timezone.localdate().replace(day=1)
    if "team_id" in owner:
        owner = {"key__team_id": owner["team_id"]}
    return UsageDaily.objects.filter(date__gte=first, **owner).aggregate(s=Sum("cost"))["s"] or Decimal(0)


_MONEY = DecimalField(max_digits=20, decimal_places=10)


def _sum(queryset, field: str, outer: str, column: str):
    total = queryset.filter(**{field: OuterRef(outer)}).order_by().values(field).annotate(s=Sum(column)).values("s")
    return Coalesce(Subquery(total, output_field=_MONEY), Value(Decimal(0)), output_field=_MONEY)


def month_spend_columns(owner: str, outer: str = "pk") -> dict[str, Any]:
    """This month's spend and what the budget holds beyond it (calls of unknown cost, jobs
    still running: what refusals count, audit_app.budgets.month_spend, but for calls left
    pending past the timeout until reconcile_calls has run), as columns of the
    keys', limits' or teams' list (`owner`: "k", "u" or "t", audit_app.budgets.OWNER_FIELDS;
    `outer`: the list row's column it matches): a few indexed sums per row of the page
    (usagedaily_key_date / usagedaily_user_date, the jobs' owner keys)."""
    first = timezone.localdate().replace(day=1)
    field, job_field = OWNER_FIELDS[owner]
    rollups = UsageDaily.objects.filter(date__gte=first)
    running = AsyncJob.objects.filter(counted_at__isnull=True, budget_hold__isnull=False)
    return {"spent_this_month": _sum(rollups, field, outer, "cost"),
            "held_this_month": _sum(rollups, field, outer, "budget_held") + _sum(running, job_field, outer, "budget_hold")}


def spend_against_budget(obj: Any, budget: Decimal | None) -> str:
    """"$12.34 of $50.00 (24%)" (with what is held, when anything is), or the spend alone
    without a budget. The share counts the held amount too, as refusals do."""
    spend = getattr(obj, "spent_this_month", Decimal(0))
    held = getattr(obj, "held_this_month", Decimal(0))
    text = f"${spend.quantize(Decimal('0.01'))}"
    if held:
        text += f" + ${held.quantize(Decimal('0.01'))} held"
    if budget is None:
        return format_html('{} <span class="quiet">no budget</span>', text)
    share = float((spend + held) / budget) if budget > 0 else 1.0
    level = "over" if share >= 1 else "near" if share >= 0.8 else "ok"
    return format_html('<span class="budget-{}" title="{}% of the monthly budget">{} of ${} ({}%)</span>',
                       level, int(share * 100), text, budget, int(share * 100))


_NAME = re.compile(r"^[A-Za-z0-9._:\-]+$")


class NameListField(forms.CharField):
    """A list of names typed as "a, b c" (or as a JSON list); stored as a JSON list."""

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return value
        return ", ".join(value) if isinstance(value, list) else ""

    def to_python(self, value: Any) -> list[str]:
        text = (value or "").strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                raise forms.ValidationError("Not a valid JSON list.") from None
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise forms.ValidationError("Expected a list of names.")
        else:
            items = [part for part in re.split(r"[,\s]+", text) if part]
        bad = [i for i in items if not _NAME.match(i)]
        if bad:
            raise forms.ValidationError(f"Not a valid name: {', '.join(bad)}")
        return list(dict.fromkeys(items))  # keep order, drop repeats


class RelayKeyForm(forms.ModelForm):
    allowed_families = NameListField(
        required=False, help_text="Endpoint families this key may call, e.g. responses, chat, embeddings, "
                                  "files, batches. Empty: all.")
    allowed_models = NameListField(
        required=False, help_text="Models this key may use, e.g. gpt-4o-mini, text-embedding-3-small. Empty: all.")

    class Meta:
        model = RelayKey
        fields = ("owner", "name", "team", "expires_at", "allowed_families", "allowed_models",
                  "monthly_budget_usd", "requests_per_minute")

    def clean(self):
        data = super().clean()
        owner, team = data.get("owner") or getattr(self.instance, "owner", None), data.get("team")
        if team is not None and owner is not None and not owner.groups.filter(pk=team.group_id).exists():
            raise forms.ValidationError({"team": f"{owner} is not a member of the team's group {team}."})
        if team is None and owner is not None and self.instance.pk is None:
            data["team"] = self.instance.team = Team.of_user(owner)
        return data


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "active"), ("expired", "expired"), ("revoked", "revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.active(now)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(RelayKey)
class RelayKeyAdmin(LinkPermissionsMixin, admin.ModelAdmin):
    form = RelayKeyForm
    list_display = ("prefix", "name", "owner_link", "status", "last_used_at", "month_spend", "scope",
                    "requests_per_minute", "expires_at", "calls_link")
    # Only indexed columns (prefix); the list is ordered newest first.
    sortable_by = ("prefix",)
    list_filter = (KeyStatusFilter, user_filter("owner", "owner"), "expires_at", "created_at")
    search_fields = ("prefix", "name", "owner__username")
    search_help_text = "A key prefix (tr-…), a key name or a username."
    list_select_related = ("owner",)
    autocomplete_fields = ("owner",)
    actions = ["revoke_keys"]
    date_hierarchy = "created_at"
    show_facets = ShowFacets.NEVER
    fieldsets = (
        (None, {"fields": ("owner", "name", "team", "expires_at")}),
        ("Scope and limits", {"fields": ("allowed_families", "allowed_models", "monthly_budget_usd",
                                         "requests_per_minute")}),
        ("State", {"fields": ("prefix", "status", "created_at", "last_used_at", "revoked_at", "spend_this_month",
                              "calls_link")}),
    )
    readonly_fields = ("prefix", "status", "created_at", "last_used_at", "revoked_at", "spend_this_month",
                       "calls_link")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**month_spend_columns("k"))

    @admin.display(description="this month / budget")
    def month_spend(self, obj: RelayKey) -> str:
        return spend_against_budget(obj, obj.monthly_budget_usd)

    def get_fieldsets(self, request, obj=None):
        if obj is None:  # adding: the state does not exist yet
            return self.fieldsets[:2]
        return self.fieldsets

    def get_readonly_fields(self, request, obj=None):
        # A key belongs to its owner for good: its calls are recorded against them.
        # Its team too: reports, team budgets and reconciliation follow the key's team, so
        # moving a used key would move its past spend with it.
        return (*self.readonly_fields, "owner", "team") if obj is not None else self.readonly_fields

    @admin.display(description="owner")
    def owner_link(self, obj: RelayKey) -> str:
        return link(change_url(obj.owner), obj.owner.get_username())

    def get_sortable_by(self, request):
        return self.sortable_by

    def get_changelist(self, request, **kwargs):
        from audit_app.admin_toolkit import IndexedOrderingChangeList

        return IndexedOrderingChangeList

    @admin.display(description="status")
    def status(self, obj: RelayKey) -> str:
        if obj.pk is None:
            return "-"
        if obj.is_revoked:
            return "revoked"
        return "expired" if obj.is_expired() else "active"

    @admin.display(description="scope")
    def scope(self, obj: RelayKey) -> str:
        parts = []
        if obj.allowed_families:
            parts.append("families: " + ", ".join(obj.allowed_families))
        if obj.allowed_models:
            parts.append("models: " + ", ".join(obj.allowed_models))
        return "; ".join(parts) or "all"

    @admin.display(description="calls")
    def calls_link(self, obj: RelayKey) -> str:
        if obj.pk is None:
            return "-"
        return format_html("{} · {}", link(changelist_url(ApiCall, key__id__exact=obj.pk), "calls"),
                           link(changelist_url(UsageDaily, key__id__exact=obj.pk), "daily usage"))

    @admin.display(description="spent this month (USD)")
    def spend_this_month(self, obj: RelayKey) -> str:
        return "-" if obj.pk is None else f"{month_spend(key_id=obj.pk):.2f}"

    def save_model(self, request, obj: RelayKey, form, change: bool) -> None:
        if not change:
            # In the one insert that also stores the scope and limits, so the action
            # log shows one "created" entry.
            request._relay_new_key = obj.new_secret()
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj: RelayKey, post_url_continue=None):
        plaintext = getattr(request, "_relay_new_key", None)
        if plaintext is None or "_popup" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        # The one and only time the plaintext exists outside the client: rendered
        # into this response, not stored in a message (a cookie or the session).
        context = {**self.admin_site.each_context(request), "opts": self.opts, "key": obj,
                   "plaintext": plaintext, "title": "New relay key", "change_url": change_url(obj),
                   "changelist_url": changelist_url(RelayKey)}
        response = TemplateResponse(request, "admin/proxy_app/relaykey/key_created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    # Revoking changes the key: a view-only staff user must not see or run it
    # (Django offers an action only to users with every one of its permissions).
    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset) -> None:
        count = 0
        # One by one, so that each revocation lands in the action log.
        for key in queryset.filter(revoked_at__isnull=True):
            key.revoke()
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # keys are revoked, not deleted: the audit trail points at them


@admin.register(UserLimit)
class UserLimitAdmin(LinkPermissionsMixin, admin.ModelAdmin):
    list_display = ("user", "monthly_budget_usd", "month_spend", "keys_link")
    sortable_by = ()

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**month_spend_columns("u", "user_id"))

    @admin.display(description="this month / budget")
    def month_spend(self, obj: UserLimit) -> str:
        return spend_against_budget(obj, obj.monthly_budget_usd)

    search_fields = ("user__username",)
    list_select_related = ("user",)
    autocomplete_fields = ("user",)
    fields = ("user", "monthly_budget_usd", "spend_this_month")
    readonly_fields = ("spend_this_month",)
    show_facets = ShowFacets.NEVER

    @admin.display(description="spent this month (USD)")
    def spend_this_month(self, obj: UserLimit) -> str:
        return "-" if obj.pk is None else f"{month_spend(user_id=obj.user_id):.2f}"

    @admin.display(description="keys")
    def keys_link(self, obj: UserLimit) -> str:
        return format_html("{} · {}", link(changelist_url(RelayKey, owner__id__exact=obj.user_id), "keys"),
                           link(changelist_url(ApiCall, user__id__exact=obj.user_id), "calls"))


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    """A Django group as a team: its OpenAI project and its monthly budget."""

    list_display = ("__str__", "openai_project_id", "month_spend", "keys_link")
    search_fields = ("group__name", "openai_project_id")
    list_select_related = ("group",)
    autocomplete_fields = ("group",)
    fields = ("group", "openai_project_id", "monthly_budget_usd", "spend_this_month")
    readonly_fields = ("spend_this_month",)
    show_facets = ShowFacets.NEVER

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(**month_spend_columns("t"))

    @admin.display(description="this month / budget")
    def month_spend(self, obj: Team) -> str:
        return spend_against_budget(obj, obj.monthly_budget_usd)

    @admin.display(description="spent this month (USD)")
    def spend_this_month(self, obj: Team) -> str:
        return "-" if obj.pk is None else f"{month_spend(team_id=obj.pk):.2f}"

    @admin.display(description="keys")
    def keys_link(self, obj: Team) -> str:
        return link(changelist_url(RelayKey, team__id__exact=obj.pk), "keys")


def _guard_third_party_actions() -> None:
    """django-axes offers "Clean up expired attempts" with no permission of its own,
    so a view-only staff user could delete login records. Every admin action here
    needs the permission of what it does; this one deletes."""
    from axes.admin import AccessAttemptAdmin

    action = AccessAttemptAdmin.cleanup_expired_attempts
    if not getattr(action, "allowed_permissions", None):
        action.allowed_permissions = ("delete",)


_guard_third_party_actions()
