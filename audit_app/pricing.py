"""Prices in effect at a moment, and what a usage record costs under them.

All money is Decimal. A cost that cannot be computed is None (unpriced),
never 0: a missing price must show up as a gap, not as free usage.
"""
from __future__ import annotations

import re
import time
from datetime import datetime
from decimal import Decimal

from .models import ModelPrice
from .usage import Usage

MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("1e-10")
# Dated snapshots: gpt-4o-2024-08-06, o3-mini-2025-01-31, gpt-4-0613, gpt-3.5-turbo-1106.
_SNAPSHOT = re.compile(r"^(?P<family>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def family_of(model: str) -> str | None:
    m = _SNAPSHOT.match(model)
    return m.group("family") if m else None


# Prices change rarely and are read on every call: each process keeps them for
# a short while. Saving a price clears this process's copy at once; other
# workers see it within PRICE_CACHE_SECONDS.
PRICE_CACHE_SECONDS = 60.0
_cache: dict[str, tuple[float, list[ModelPrice]]] = {}


def _rows(name: str) -> list[ModelPrice]:
    now = time.monotonic()
    hit = _cache.get(name)
    if hit is None or now - hit[0] > PRICE_CACHE_SECONDS:
        hit = (now, list(ModelPrice.objects.filter(model=name).order_by("-effective_from")))
        _cache[name] = hit
    return hit[1]


def clear_cache(**_: object) -> None:
    _cache.clear()


def price_for(model: str, at: datetime) -> ModelPrice | None:
    """The price row in effect at `at` for the model, or for its family when a
    dated snapshot has no price of its own."""
    if not model:
        return None
    for name in (model, family_of(model)):
        if name:
            for price in _rows(name):
                if price.effective_from <= at:
                    return price
    return None


def cost_of(usage: Usage, price: ModelPrice | None, *, batch: bool = False) -> Decimal | None:
    """USD for the usage under the price, or None when any billed part has no rate."""
    if price is None or usage.is_empty:
        return None
    total = Decimal(0)
    input_rate = price.batch_input_per_1m if batch else price.input_per_1m
    output_rate = price.batch_output_per_1m if batch else price.output_per_1m
    cached_rate = price.cached_input_per_1m
    if batch and cached_rate is not None and price.input_per_1m and price.batch_input_per_1m is not None:
        # Batch discounts apply to cached input in the same proportion.
        cached_rate = cached_rate * price.batch_input_per_1m / price.input_per_1m
    if cached_rate is None:
        cached_rate = input_rate  # no cache discount known: charge the full input rate

    if usage.input_tokens is not None or usage.output_tokens is not None:
        # Token-billed (gpt-image included): image counts are informational.
        cached = usage.cached_input_tokens or 0
        image_in = usage.image_input_tokens or 0
        parts = [
            ((usage.input_tokens or 0) - cached - image_in, input_rate),
            (cached, cached_rate),
            (image_in, price.image_input_per_1m or input_rate),
            (usage.output_tokens, output_rate),
        ]
        per = MILLION
    else:
        parts = [(usage.images, price.per_image), (usage.audio_seconds, price.per_second),
                 (usage.characters, price.per_character),
                 (usage.video_seconds, price.per_video_second)]
        per = Decimal(1)
    for quantity, rate in parts:
        if not quantity:
            continue
        if rate is None:
            return None
        total += Decimal(quantity) * rate / per
    # Exactly what the cost columns hold, so that what is stored is what was computed.
    return total.quantize(COST_PLACES)
