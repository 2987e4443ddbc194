"""Prices and daily usage rollups: what answers "who spent what"."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from .tokens import MONEY

PRICE = dict(max_digits=20, decimal_places=10, null=True, blank=True)


class ModelPrice(models.Model):
    """A model's price list from a date on. Token prices are USD per 1M tokens.

    Rows are never rewritten when prices change: a new row with a later
    `effective_from` keeps past calls priced as they were.

    What prices a call is `rates`: every money field of the model's price-map entry,
    under the map's own name (`input_cost_per_token_flex`,
    `cache_read_input_audio_token_cost`, `output_cost_per_token_above_272k_tokens_priority`,
    `search_context_cost_per_query.search_context_size_high`, `input_cost_per_image/hd/1024-x-1792`),
    in USD per unit as the map gives it. Why a dict and not a column per rate: the
    map has 80 such fields for OpenAI alone (tiers x long context x modality x cache)
    and gains more with each new tier; a new one needs no migration, and docs/prices.md
    can say exactly which field of the map priced which part of a call. The per-1M
    columns stay as the admin's editable face of the common rates: saving a row
    with an edited column writes it into `rates` (see save()).
    """

    model = models.CharField(max_length=128)
    effective_from = models.DateTimeField(default=timezone.now)
    input_per_1m = models.DecimalField("input / 1M", **PRICE)
    cached_input_per_1m = models.DecimalField("cached input / 1M", **PRICE)
    output_per_1m = models.DecimalField("output / 1M", **PRICE)
    batch_input_per_1m = models.DecimalField("batch input / 1M", **PRICE)
    batch_output_per_1m = models.DecimalField("batch output / 1M", **PRICE)
    image_input_per_1m = models.DecimalField("image input / 1M", **PRICE)
    per_image = models.DecimalField(**PRICE)
    per_second = models.DecimalField("per audio second", **PRICE)
    per_character = models.DecimalField("per character", **PRICE)
    per_video_second = models.DecimalField("per video second", **PRICE)
    rates = models.JSONField(default=dict, blank=True,
                             help_text="USD per unit by price-map field name (see docs/prices.md)")
    # The model's largest output: what a budget reserves for a call that sets no max.
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    source = models.CharField(max_length=64, blank=True, help_text="where the price came from")

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="modelprice_model_from"),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d}"

    def save(self, *args, **kwargs):
        self.rates = sync_columns(self, dict(self.rates or {}))
        super().save(*args, **kwargs)


def sync_columns(price, rates: dict) -> dict:
    """`rates` with the per-1M columns written in where they differ from what `rates`
    says (an admin edited a column); a cleared column removes its rates."""
    from decimal import Decimal

    from ..pricing import _FIELDS, MILLION

    for column, (keys, per_token) in _FIELDS.items():
        value = getattr(price, column)
        present = [k for k in keys if k in rates]
        implied = Decimal(str(rates[present[0]])) * (MILLION if per_token else 1) if present else None
        if value is None:
            for k in present:
                del rates[k]
        elif implied is None or implied.quantize(Decimal("1e-10")) != Decimal(value).quantize(Decimal("1e-10")):
            per_unit = Decimal(value) / MILLION if per_token else Decimal(value)
            rates[present[0] if present else keys[0]] = str(per_unit.normalize())
    return rates


class UsageDaily(models.Model):
    """Per day, user, key, model and endpoint family: kept current as calls finish,
    so that dashboards and budgets never scan raw calls, and totals outlive pruning."""

    date = models.DateField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    key = models.ForeignKey("proxy_app.RelayKey", on_delete=models.PROTECT, related_name="+")
    model = models.CharField(max_length=128, blank=True)
    family = models.CharField("endpoint family", max_length=32, blank=True)
    # The tier upstream reported ("" when none): priority and flex calls are billed at
    # rates of their own, so a statement shows them on rows of their own.
    service_tier = models.CharField(max_length=16, blank=True, default="")

    calls = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    images = models.BigIntegerField(default=0)
    audio_seconds = models.DecimalField(max_digits=16, decimal_places=3, default=0)
    characters = models.BigIntegerField(default=0)
    audio_input_tokens = models.BigIntegerField(default=0)
    audio_output_tokens = models.BigIntegerField(default=0)
    image_input_tokens = models.BigIntegerField(default=0)
    image_output_tokens = models.BigIntegerField(default=0)
    web_search_calls = models.BigIntegerField(default=0)
    file_search_calls = models.BigIntegerField(default=0)
    code_interpreter_sessions = models.BigIntegerField(default=0)
    image_generation_calls = models.BigIntegerField(default=0)
    tool_cost = models.DecimalField(**MONEY, default=0, help_text="USD of per-call tool fees, part of cost")
    cost = models.DecimalField(**MONEY, default=0, help_text="USD, priced calls only")
    unpriced_calls = models.BigIntegerField(default=0)
    # Billed by OpenAI, usage not readable by the relay: cost unknown, never $0.
    unknown_calls = models.BigIntegerField(default=0)
    # Budget holds of unpriced and usage-unknown calls (never part of `cost`).
    budget_held = models.DecimalField(**MONEY, default=0, help_text="USD counted by budgets for calls of unknown cost")

    class Meta:
        verbose_name_plural = "usage (daily)"
        ordering = ["-date"]
        constraints = [
            models.UniqueConstraint(
                fields=["date", "user", "key", "model", "family", "service_tier"], name="usagedaily_bucket"
            ),
        ]
        indexes = [
            models.Index(fields=["user", "date"], name="usagedaily_user_date"),
            models.Index(fields=["key", "date"], name="usagedaily_key_date"),
            models.Index(fields=["model", "date"], name="usagedaily_model_date"),
        ]

    def __str__(self) -> str:
        return f"{self.date} {self.user_id}/{self.key_id} {self.model or '-'}"


class BudgetHold(models.Model):
    """A budget reservation of a call in flight, when the cache cannot count atomically.

    With Redis, reservations are counters in the cache (atomic INCRBY). Django's
    database cache increments by reading then writing, which loses one of two
    concurrent updates; so without Redis each reservation is a row here: an insert
    is atomic, a call is checked against the holds made before it (lower id), and
    settling deletes its row. Rows older than the pending-call timeout no longer count.
    """

    owner = models.CharField(max_length=24)  # "k12" (a key), "u3" (a user) or "t2" (a team)
    amount = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["owner", "created_at"], name="budgethold_owner_created")]
