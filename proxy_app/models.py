"""Relay keys: the personal credentials staff tools use instead of the OpenAI key."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.signals import post_delete, post_save
from django.utils import timezone

from . import key_cache

KEY_PREFIX = "tr-"
# Characters of the key kept in clear to recognise it by (prefix included).
VISIBLE_CHARS = 10
# last_used_at is a hint for admins, not an audit field: writing it on every
# request would double the writes on the hot path.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


_PROJECT_ID = RegexValidator(r"^proj_[A-Za-z0-9_-]{1,60}$", "An OpenAI project id looks like proj_abc123.")


class Team(models.Model):
    """A Django group used as a team: its keys' spend is reported, budgeted and
    (with a project id) billed by OpenAI together.

    Why groups: admins already manage membership and permissions through them, and a
    team needs nothing more than a name and its members. A key belongs to one team,
    chosen when it is issued (its owner's team), so a user in two teams can hold a key
    for each and their spend splits the way their work does.
    """

    group = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="relay_team")
    openai_project_id = models.CharField(
        "OpenAI project id", max_length=64, blank=True, validators=[_PROJECT_ID],
        help_text="sent upstream as OpenAI-Project on every call of the team's keys, so that OpenAI's "
                  "usage and costs split by team too (not with a project-scoped OPENAI_API_KEY: see "
                  "docs/reconciliation.md). Changing it re-attributes the team's past usage in "
                  "reconciliation: re-run reconcile_usage for the days it covers.",
    )
    monthly_budget_usd = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True,
        help_text="USD per calendar month, for all of the team's keys together",
    )

    class Meta:
        ordering = ["group__name"]

    def __str__(self) -> str:
        return self.group.name

    @classmethod
    def of_user(cls, user) -> "Team | None":
        """The user's team when they belong to exactly one; None when to none or several."""
        teams = list(cls.objects.filter(group__user=user)[:2])
        return teams[0] if len(teams) == 1 else None


class RelayKeyQuerySet(models.QuerySet):
    def active(self, now: datetime | None = None) -> "RelayKeyQuerySet":
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class RelayKey(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="relay_keys"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=VISIBLE_CHARS, db_index=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Scope and limits; empty means no restriction.
    allowed_families = models.JSONField(
        default=list, blank=True,
        help_text='endpoint families this key may call, e.g. ["responses", "embeddings"]; empty: all',
    )
    allowed_models = models.JSONField(
        default=list, blank=True, help_text='models this key may use, e.g. ["gpt-4o-mini"]; empty: all'
    )
    monthly_budget_usd = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="USD per calendar month"
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.PROTECT, related_name="keys",
        help_text="whose spend this key's calls are; set from the owner's team when the key is issued",
    )

    objects = RelayKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        label = f"{self.prefix}…"
        return f"{label} ({self.name})" if self.name else label

    @classmethod
    def issue(
        cls, owner, *, name: str = "", expires_at: datetime | None = None
    ) -> tuple["RelayKey", str]:
        """Create a key and return it with its plaintext, which is never stored."""
        key = cls(owner=owner, name=name, expires_at=expires_at, team=Team.of_user(owner))
        plaintext = key.new_secret()
        key.save()
        return key, plaintext

    def new_secret(self) -> str:
        """Give this (unsaved) key a fresh random secret; returns the plaintext, kept only
        as its visible prefix and its hash."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        self.prefix, self.key_hash = plaintext[:VISIBLE_CHARS], hash_key(plaintext)
        return plaintext

    @classmethod
    def lookup(cls, plaintext: str) -> "RelayKey | None":
        """The key (with its owner and the owner's limits), from `key_cache` when seen lately."""
        key_hash = hash_key(plaintext)
        key = key_cache.get(key_hash)
        if key is None:
            # The owner's limits ride along: budget checks need them on every call.
            key = (
                cls.objects.select_related("owner", "owner__relay_limit", "team")
                .filter(key_hash=key_hash).first()
            )
            if key is not None:
                key_cache.put(key_hash, key)
        return key

    @property
    def openai_project(self) -> str:
        """The OpenAI project this key's calls are billed to upstream ("" for the key's default)."""
        return self.team.openai_project_id if self.team_id and self.team else ""

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])

    def touch(self, now: datetime | None = None) -> None:
        now = now or timezone.now()
        if self.last_used_at is None or now - self.last_used_at > LAST_USED_RESOLUTION:
            type(self).objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now


class UserLimit(models.Model):
    """Limits that apply to all of a user's keys together."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="relay_limit"
    )
    monthly_budget_usd = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="USD per calendar month"
    )

    def __str__(self) -> str:
        return f"limits for {self.user}"


# A key, its owner or the owner's limits saved in this process take effect here
# at once; other processes see the change within RELAY_KEY_CACHE_SECONDS.
post_save.connect(key_cache.forget_key, sender=RelayKey, dispatch_uid="relay-key-cache-key-saved")
post_delete.connect(key_cache.forget_key, sender=RelayKey, dispatch_uid="relay-key-cache-key-deleted")
post_save.connect(key_cache.clear, sender=Team, dispatch_uid="relay-key-cache-team-saved")
post_delete.connect(key_cache.clear, sender=Team, dispatch_uid="relay-key-cache-team-deleted")
post_save.connect(key_cache.clear, sender=UserLimit, dispatch_uid="relay-key-cache-limit-saved")
post_delete.connect(key_cache.clear, sender=UserLimit, dispatch_uid="relay-key-cache-limit-deleted")
post_save.connect(key_cache.clear, sender=settings.AUTH_USER_MODEL, dispatch_uid="relay-key-cache-user-saved")
post_delete.connect(key_cache.clear, sender=settings.AUTH_USER_MODEL, dispatch_uid="relay-key-cache-user-deleted")
