"""Import prices from LiteLLM's public price map (USD per token) into ModelPrice
rows (USD per 1M tokens).

Used by the data migration that ships the initial prices and by
`manage.py import_prices`. Prices are never edited in place: a changed price
becomes a new row effective from the import date.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

SHIPPED_PRICES = Path(__file__).resolve().parent / "data" / "openai-model-prices.json"
MILLION = Decimal(1_000_000)
_PLACES = Decimal("1e-10")

# ModelPrice field -> (LiteLLM key(s) in order of preference, per-token?)
_FIELDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "input_per_1m": (("input_cost_per_token",), True),
    "cached_input_per_1m": (("cache_read_input_token_cost",), True),
    "output_per_1m": (("output_cost_per_token", "output_cost_per_image_token"), True),
    "batch_input_per_1m": (("input_cost_per_token_batches",), True),
    "batch_output_per_1m": (("output_cost_per_token_batches",), True),
    "image_input_per_1m": (("input_cost_per_image_token",), True),
    "per_image": (("input_cost_per_image", "output_cost_per_image"), False),
    "per_second": (("input_cost_per_second",), False),
    "per_character": (("input_cost_per_character",), False),
    "per_video_second": (("output_cost_per_video_per_second",), False),
}


@dataclass
class ImportResult:
    created: int = 0
    unchanged: int = 0
    skipped: int = 0


def load_map(path: Path) -> dict[str, dict[str, Any]]:
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and isinstance(data.get("models"), dict):
        data = data["models"]  # the shipped file wraps the map with its provenance
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object of model name -> prices")
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        # Through str: Decimal(2.5e-06) would carry the float's binary error.
        return Decimal(str(value))
    except ArithmeticError:
        return None


def price_fields(entry: dict[str, Any]) -> dict[str, Decimal | None]:
    out: dict[str, Decimal | None] = {}
    for field, (keys, per_token) in _FIELDS.items():
        value = next((_decimal(entry[k]) for k in keys if k in entry), None)
        if value is not None:
            # The columns hold 10 decimal places; rounding here keeps a re-import
            # of the same file from looking like a price change.
            out[field] = ((value * MILLION) if per_token else value).quantize(_PLACES)
        else:
            out[field] = None
    return out


def priced_models(entries: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(model, price fields) for each entry; fields are None for entries that are not a price."""
    for name, entry in sorted(entries.items()):
        # Size/quality variants ("low/1024-x-1024/gpt-image-1") and fine-tune
        # templates are not model names a request carries.
        if "/" in name or name.startswith("ft:") or len(name) > 128:
            yield name, None
            continue
        fields = price_fields(entry)
        yield name, None if all(v is None for v in fields.values()) else fields


def import_map(
    price_model, entries: dict[str, dict[str, Any]], effective_from: datetime, source: str
) -> ImportResult:
    """Create a price row for every model whose prices differ from the ones in effect."""
    result = ImportResult()
    # A data migration passes the model as it was then: only the rates it had columns for.
    columns = {f.name for f in price_model._meta.get_fields()}
    for name, fields in priced_models(entries):
        if fields is not None:
            fields = {f: v for f, v in fields.items() if f in columns}
            fields = fields if any(v is not None for v in fields.values()) else None
        if fields is None:
            result.skipped += 1
            continue
        current = (
            price_model.objects.filter(model=name, effective_from__lte=effective_from)
            .order_by("-effective_from").first()
        )
        if current is not None and all(getattr(current, f) == v for f, v in fields.items()):
            result.unchanged += 1
            continue
        price_model.objects.update_or_create(
            model=name, effective_from=effective_from, defaults={**fields, "source": source[:64]}
        )
        result.created += 1
    return result
