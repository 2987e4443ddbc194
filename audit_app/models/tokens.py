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


def _count(label: str) -> models.BigIntegerField:
    return models.BigIntegerField(label, null=True, blank=True)


class BilledDimensions(models.Model):
    """What a call used beyond plain text tokens, each billed at a rate of its own
    (audit_app.pricing). Token kinds are parts of input_tokens / output_tokens;
    cached_* are parts of their kind. NULL: not reported (or none)."""

    cache_write_tokens = _count("cache write tokens")
    cache_retention = models.CharField(max_length=16, blank=True, null=True,
                                       help_text="prompt_cache_retention upstream applied (24h: extended)")
    audio_input_tokens = _count("audio input tokens")
    cached_audio_input_tokens = _count("cached audio input tokens")
    image_input_tokens = _count("image input tokens")
    cached_image_input_tokens = _count("cached image input tokens")
    audio_output_tokens = _count("audio output tokens")
    image_output_tokens = _count("image output tokens")
    service_tier = models.CharField(max_length=16, blank=True, null=True,
                                    help_text="the tier upstream says served the call")
    image_variant = models.CharField(max_length=32, blank=True, null=True,
                                     help_text="quality/size, for per-image prices")
    web_search_calls = _count("web search calls")
    search_context_size = models.CharField(max_length=8, blank=True, null=True)
    file_search_calls = _count("file search calls")
    code_interpreter_sessions = _count("code interpreter sessions")
    image_generation_calls = _count("image generation calls")
    # The part of `cost` that is per-call tool fees (web search, containers).
    tool_cost = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)

    class Meta:
        abstract = True


DIMENSION_FIELDS = (
    "cache_write_tokens", "cache_retention", "audio_input_tokens", "cached_audio_input_tokens", "image_input_tokens",
    "cached_image_input_tokens", "audio_output_tokens", "image_output_tokens", "service_tier",
    "image_variant", "web_search_calls", "search_context_size", "file_search_calls",
    "code_interpreter_sessions", "image_generation_calls", "tool_cost",
)


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
