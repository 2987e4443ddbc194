"""Relay keys: the personal credentials staff tools use instead of the OpenAI key."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
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
        key = cls(owner=owner, name=name, expires_at=expires_at)
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
                cls.objects.select_related("owner", "owner__relay_limit")
                .filter(key_hash=key_hash).first()
            )
            if key is not None:
                key_cache.put(key_hash, key)
        return key

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
post_save.connect(key_cache.clear, sender=UserLimit, dispatch_uid="relay-key-cache-limit-saved")
post_delete.connect(key_cache.clear, sender=UserLimit, dispatch_uid="relay-key-cache-limit-deleted")
post_save.connect(key_cache.clear, sender=settings.AUTH_USER_MODEL, dispatch_uid="relay-key-cache-user-saved")
post_delete.connect(key_cache.clear, sender=settings.AUTH_USER_MODEL, dispatch_uid="relay-key-cache-user-deleted")
