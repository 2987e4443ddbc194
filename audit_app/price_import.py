"""Import prices from LiteLLM's public price map (USD per token) into ModelPrice
rows (USD per 1M tokens).

Used by the data migration that ships the initial prices and by
`manage.py import_prices`. Prices are never edited in place: a changed price
becomes a new row effective from the import date.
"""
from __future__ import annotations

import json
import re
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


def entry_rates(entry: dict[str, Any]) -> dict[str, str]:
    """Every money field of a price-map entry, under the map's own name, as a Decimal string.

    USD per unit exactly as the map gives it (per token, per second, per character,
    per query): `search_context_cost_per_query` holds one rate per context size and
    becomes `search_context_cost_per_query.search_context_size_low` and so on.
    """
    rates: dict[str, str] = {}
    for name, value in entry.items():
        if "cost" not in name:
            continue
        if isinstance(value, dict):
            for sub, inner in value.items():
                if (d := _decimal(inner)) is not None:
                    rates[f"{name}.{sub}"] = str(d)
        elif (d := _decimal(value)) is not None:
            rates[name] = str(d)
    return rates


def price_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """The columns of a ModelPrice row for a price-map entry: the classic per-1M columns
    (what the admin shows and edits), every rate in `rates`, and the model's output cap."""
    out: dict[str, Any] = {}
    for field, (keys, per_token) in _FIELDS.items():
        value = next((_decimal(entry[k]) for k in keys if k in entry), None)
        if value is not None:
            # The columns hold 10 decimal places; rounding here keeps a re-import
            # of the same file from looking like a price change.
            out[field] = ((value * MILLION) if per_token else value).quantize(_PLACES)
        else:
            out[field] = None
    out["rates"] = entry_rates(entry)
    cap = entry.get("max_output_tokens")
    out["max_output_tokens"] = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None
    return out


# "hd/1024-x-1792/dall-e-3", "1024-x-1024/dall-e-2", "low/1024-x-1024/gpt-image-1": a
# per-image price of one size (and quality) of a model.
_VARIANT = re.compile(r"^(?:(?P<quality>[a-z]+)/)?(?P<size>\d+-x-\d+)/(?P<model>[^/]+)$")
# Rates that are not a model's but a tool's, kept under the map's own name.
TOOL_ENTRIES = frozenset({"openai/container"})
_PER_IMAGE_KEYS = ("input_cost_per_image", "output_cost_per_image", "input_cost_per_pixel",
                   "output_cost_per_pixel")


def priced_models(entries: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(model, price fields) for each model; fields are None for entries that are not a price.

    Fine-tuned templates (`ft:gpt-4o-mini-2024-07-18`) are models of their own: a
    fine-tuned call is priced at the row of its base (pricing.price_for). Size and
    quality variants fold into their model's `rates` as `input_cost_per_image/hd/1024-x-1792`,
    creating the model's row when the map has no plain entry for it (dall-e).
    """
    models: dict[str, dict[str, Any]] = {}
    variants: dict[str, dict[str, str]] = {}
    skipped: list[str] = []
    for name, entry in sorted(entries.items()):
        m = _VARIANT.match(name)
        if m is not None:
            variant = f"{m['quality']}/{m['size']}" if m["quality"] else m["size"]
            for key in _PER_IMAGE_KEYS:
                if (d := _decimal(entry.get(key))) is not None:
                    variants.setdefault(m["model"], {})[f"{key}/{variant}"] = str(d)
            continue
        if ("/" in name and name not in TOOL_ENTRIES) or len(name) > 128:
            skipped.append(name)  # provider-prefixed duplicates ("openai/sora-2")
            continue
        fields = price_fields(entry)
        if all(fields[f] is None for f in _FIELDS) and not fields["rates"]:
            skipped.append(name)
            continue
        models[name] = fields
    for name, rates in variants.items():
        if name not in models:
            models[name] = {**{f: None for f in _FIELDS}, "rates": {}, "max_output_tokens": None}
        models[name]["rates"] = {**rates, **models[name]["rates"]}
    for name in skipped:
        yield name, None
    yield from sorted(models.items())


def import_map(
    price_model, entries: dict[str, dict[str, Any]], effective_from: datetime, source: str
) -> ImportResult:
    """Create a price row for every model whose prices differ from the ones in effect."""
    result = ImportResult()
    # A data migration passes the model as it was then: only the rates it had columns for.
    columns = {f.name for f in price_model._meta.get_fields()}
    # Migration 0002 runs this with the historical model, before `rates` existed.
    has_rates = any(f.name == "rates" for f in price_model._meta.get_fields())
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
        if not has_rates:
            fields = {f: v for f, v in fields.items() if f not in ("rates", "max_output_tokens")}
        if current is not None and all(_same(getattr(current, f), v) for f, v in fields.items()):
            result.unchanged += 1
            continue
        price_model.objects.update_or_create(
            model=name, effective_from=effective_from, defaults={**fields, "source": source[:64]}
        )
        result.created += 1
    return result


def _same(current: Any, new: Any) -> bool:
    if isinstance(new, dict):  # rates: compare as numbers, "2.5E-6" == "0.0000025"
        current = current or {}
        return set(current) == set(new) and all(Decimal(str(current[k])) == Decimal(new[k]) for k in new)
    return current == new
