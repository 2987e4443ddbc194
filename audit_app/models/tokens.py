"""Columns shared by several audit models: tokens and cost, and who created a record."""
from __future__ import annotations

from django.conf import settings
from django.db import models

# USD with sub-micro-cent precision: a single embedding call costs ~$0.0000004.
MONEY = dict(max_digits=20, decimal_places=10)

TOKEN_FIELDS = (
    "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens",
)


class TokenUsage(models.Model):
    """NULL means "not reported", 0 means "reported as zero": they are not the same."""

    input_tokens = models.BigIntegerField(null=True, blank=True)
    cached_input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    reasoning_tokens = models.BigIntegerField(null=True, blank=True)
    total_tokens = models.BigIntegerField(null=True, blank=True)
    cost = models.DecimalField(**MONEY, null=True, blank=True, help_text="USD; empty when unknown")

    class Meta:
        abstract = True


class Owned(models.Model):
    """Who created a record through the relay: the user and the key they used."""

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_by_key = models.ForeignKey(
        "proxy_app.RelayKey", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        abstract = True
