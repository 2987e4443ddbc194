"""Prices in effect at a moment, and what a usage record costs under them.

One function prices every call, batch result and job: `cost_of(usage, price, ...)`
(through `audit_app.recorder.priced_fields`), fed only from what is stored on the
row, so that `reprice` with unchanged prices changes nothing.

Each billed dimension is priced by its own rate, looked up by the price map's
field name in `ModelPrice.rates`, composed as

    <dimension rate><long-context suffix><tier suffix>

e.g. `cache_read_input_audio_token_cost`, `output_cost_per_token_above_272k_tokens_priority`,
`input_cost_per_token_batches`. A dimension the call used (quantity > 0) without
its rate makes the whole call unpriced (cost None, `missing` names the rate):
never a guess, never another dimension's rate. docs/prices.md lists them all.

All money is Decimal. A cost that cannot be computed is None (unpriced),
never 0: a missing price must show up as a gap, not as free usage.

The price data itself comes from LiteLLM's public price map (`import_prices`, the
shipped copy under audit_app/data): see the second half of this module.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.cache import cache

from .models import ModelPrice
from .usage import Usage


# ============================================================================
# Prices in effect at a moment, and what a usage record costs under them.
#
# One function prices every call, batch result and job: `cost_of(usage, price, ...)`
# (through `audit_app.recorder.priced_fields`), fed only from what is stored on the
# row, so that `reprice` with unchanged prices changes nothing.
#
# Each billed dimension is priced by its own rate, looked up by the price map's
# field name in `ModelPrice.rates`, composed as
#
#     <dimension rate><long-context suffix><tier suffix>
#
# e.g. `cache_read_input_audio_token_cost`, `output_cost_per_token_above_272k_tokens_priority`,
# `input_cost_per_token_batches`. A dimension the call used (quantity > 0) without
# its rate makes the whole call unpriced (cost None, `missing` names the rate):
# never a guess, never another dimension's rate. docs/prices.md lists them all.
#
# All money is Decimal. A cost that cannot be computed is None (unpriced),
# never 0: a missing price must show up as a gap, not as free usage.
# ============================================================================


MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("1e-10")
# Dated snapshots: gpt-4o-2024-08-06, o3-mini-2025-01-31, gpt-4-0613, gpt-3.5-turbo-1106.
_SNAPSHOT = re.compile(r"^(?P<family>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
# ft:gpt-4o-mini-2024-07-18:my-org::abc123 -> its base model.
_FINE_TUNED = re.compile(r"^ft:(?P<base>[^:]+):")
_LONG_CONTEXT = re.compile(r"_above_(\d+)k_tokens")
# Tiers billed at the standard rates. Any other tier upstream reports ("flex",
# "priority", "scale", ...) is priced only by the map's rates for it.
STANDARD_TIERS = frozenset({"", "default", "auto", "standard"})
# The row holding the code interpreter's per-session fee (the map's "openai/container").
CONTAINER_PRICE = "openai/container"
WEB_SEARCH_DEFAULT_CONTEXT = "medium"  # OpenAI's default search_context_size

log = logging.getLogger(__name__)


# Chat Completions' search models (gpt-4o-search-preview, gpt-5-search-api): every
# request is one web search, billed at the model's search_context_cost_per_query.
_SEARCH_MODEL = re.compile(r"-search-(?:preview|api)(?:-|$)")


def is_search_model(model: str) -> bool:
    return bool(_SEARCH_MODEL.search(model or ""))


def family_of(model: str) -> str | None:
    m = _SNAPSHOT.match(model)
    return m.group("family") if m else None


def candidates(model: str) -> list[str]:
    """Names whose price applies to `model`, most specific first: itself, its family
    (a dated snapshot), and for a fine-tuned model the map's fine-tuned price of its
    base (`ft:gpt-4o-mini-2024-07-18`) and of the base's family."""
    names = [model]
    if (m := _FINE_TUNED.match(model)) is not None:
        base = m.group("base")
        names.append(f"ft:{base}")
        if (fam := family_of(base)) is not None:
            names.append(f"ft:{fam}")
    elif (fam := family_of(model)) is not None:
        names.append(fam)
    return names


# --- the price cache: every worker sees a change on its very next call ---------------
#
# Prices are read on every call; each process keeps the rows it read, stamped with
# the price version (a counter in the shared cache, Redis in production). Saving or
# deleting a price, or an import, bumps the counter; each call reads it (one cache
# GET: 0.33 ms measured on Redis on the shared 2-core test machine) and drops its
# copy when it moved. So a change applies
# to the next call in every worker, not within a cache timeout.

VERSION_KEY = "relay:prices:version"
_cache: dict[str, list[ModelPrice]] = {}
_cache_version: list[object] = [None]


def current_version() -> object:
    """The shared price version; None when the cache cannot be read (Redis down, the
    database cache's table missing), which makes every call read its prices afresh:
    slower, never stale, and never a call that fails to be priced."""
    try:
        version = cache.get(VERSION_KEY)
        if version is None:
            # First use, or the cache was flushed: start at a version no process has seen
            # (restarting at 1 would match a worker that last saw 1 and keeps old prices).
            cache.add(VERSION_KEY, secrets.randbits(52), timeout=None)
            version = cache.get(VERSION_KEY)
    except Exception:
        log.warning("prices: the shared cache cannot be read; reading prices from the database", exc_info=True)
        return None
    return version


def _rows(name: str) -> list[ModelPrice]:
    version = current_version()
    if version != _cache_version[0] or version is None:
        _cache.clear()
        _cache_version[0] = version
    hit = _cache.get(name)
    if hit is None:
        hit = _cache[name] = list(ModelPrice.objects.filter(model=name).order_by("-effective_from"))
    return hit


def clear_cache(**_: object) -> None:
    """Drop this process's prices and tell every other worker to drop theirs."""
    _cache.clear()
    _cache_version[0] = None
    try:
        cache.incr(VERSION_KEY)
    except ValueError:  # no version yet: the next read starts one
        cache.add(VERSION_KEY, secrets.randbits(52), timeout=None)


def price_for(model: str, at: datetime) -> ModelPrice | None:
    """The price row in effect at `at` for the model, or for the name it is priced as
    (see `candidates`)."""
    if not model:
        return None
    for name in candidates(model):
        for price in _rows(name):
            if price.effective_from <= at:
                return price
    return None


# --- pricing ------------------------------------------------------------------------

# Token dimensions: (label, rate name in the map, quantity from the usage). Quantities
# are disjoint and add up to input_tokens and output_tokens.
def _token_parts(u: Usage, write_rate: bool, write_base: str) -> list[tuple[str, str, int]]:
    cached = u.cached_input_tokens or 0
    cached_audio = u.cached_audio_input_tokens or 0
    cached_image = u.cached_image_input_tokens or 0
    audio_in = u.audio_input_tokens or 0
    image_in = u.image_input_tokens or 0
    # Cache writes are carved out of input only for models that bill them at a rate of
    # their own; elsewhere they are ordinary input tokens.
    writes = (u.cache_write_tokens or 0) if write_rate else 0
    cached_text = cached - cached_audio - cached_image
    text_in = (u.input_tokens or 0) - audio_in - image_in - cached_text - writes
    audio_out = u.audio_output_tokens or 0
    image_out = u.image_output_tokens or 0
    return [
        ("text input", "input_cost_per_token", text_in),
        ("cached text input", "cache_read_input_token_cost", cached_text),
        ("cache writes", write_base, writes),
        ("audio input", "input_cost_per_audio_token", audio_in - cached_audio),
        ("cached audio input", "cache_read_input_audio_token_cost", cached_audio),
        ("image input", "input_cost_per_image_token", image_in - cached_image),
        ("cached image input", "cache_read_input_image_token_cost", cached_image),
        ("text output", "output_cost_per_token", (u.output_tokens or 0) - audio_out - image_out),
        ("audio output", "output_cost_per_audio_token", audio_out),
        ("image output", "output_cost_per_image_token", image_out),
    ]


@dataclass
class Priced:
    cost: Decimal | None
    # The part of cost that is per-call tool fees.
    tool_cost: Decimal | None = None
    # The first rate the call needed and the price has not ("output_cost_per_token_flex"),
    # or why there is no price at all.
    missing: str = ""


def tier_suffix(usage: Usage, batch: bool) -> str:
    if batch:
        return "_batches"
    tier = (usage.service_tier or "").lower()
    return "" if tier in STANDARD_TIERS else f"_{tier}"


def long_context_threshold(rates: dict) -> int | None:
    """Input tokens above which the model's long-context rates apply (272k for gpt-5.4)."""
    for name in rates:
        if (m := _LONG_CONTEXT.search(name)) is not None:
            return int(m.group(1)) * 1000
    return None


def price_usage(usage: Usage, price: ModelPrice | None, *, batch: bool = False,
                at: datetime | None = None) -> Priced:
    """USD for the usage under the price, or None (and the missing rate) when any billed
    part has no rate. Tool fees that live on a row of their own (the code interpreter's
    container) are looked up at `at`."""
    if usage.is_empty:
        return Priced(None, "no usage")
    if price is None:
        return Priced(None, "no price for the model")
    rates = price.rates or {}
    total = Decimal(0)

    def charge(quantity, key: str) -> bool:
        nonlocal total
        if not quantity:
            return True
        rate = rates.get(key)
        if rate is None:
            return False
        total += Decimal(quantity) * Decimal(str(rate))
        return True

    suffix = tier_suffix(usage, batch)
    if usage.has_tokens:
        threshold = long_context_threshold(rates)
        long = "_above_%dk_tokens" % (threshold // 1000) \
            if threshold is not None and (usage.input_tokens or 0) > threshold else ""
        write_base = "cache_creation_input_token_cost"
        if (usage.cache_retention or "").lower() == "24h":
            write_base += "_above_12hr"  # extended retention: the map's above-12-hour write rate
        write_rate = write_base + long + suffix in rates or (
            "cache_creation_input_token_cost" + long + suffix in rates)  # writes are billed: a missing 12h rate is unpriced
        for label, base, quantity in _token_parts(usage, write_rate, write_base):
            if quantity < 0:
                return Priced(None, f"inconsistent usage: negative {label}")
            if not charge(quantity, base + long + suffix):
                return Priced(None, base + long + suffix)
    else:
        # Billed by the unit: images (dall-e), seconds (whisper), characters (tts).
        # Unit counts of a token-billed call (its images, the request's characters) are
        # informational: the tokens are the bill.
        if usage.images:
            key = _image_rate(rates, usage.image_variant)
            if key is None:
                return Priced(None, f"input_cost_per_image/{usage.image_variant or '?'}")
            total += Decimal(usage.images) * _per_image(rates, key)
        if not charge(usage.audio_seconds, "input_cost_per_second"):
            return Priced(None, "input_cost_per_second")
        if not charge(usage.characters, "input_cost_per_character"):
            return Priced(None, "input_cost_per_character")
        video = getattr(usage, "video_seconds", None)
        if not charge(video, "output_cost_per_video_per_second"):
            return Priced(None, "output_cost_per_video_per_second")
    # Tool calls billed per call (per session for containers), at no tier's discount.
    before_tools = total
    if usage.web_search_calls:
        size = usage.search_context_size or WEB_SEARCH_DEFAULT_CONTEXT
        key = f"search_context_cost_per_query.search_context_size_{size}"
        if not charge(usage.web_search_calls, key):
            return Priced(None, key)
    if usage.file_search_calls and not charge(usage.file_search_calls, "file_search_cost_per_call"):
        return Priced(None, "file_search_cost_per_call")
    if usage.image_generation_calls and not charge(usage.image_generation_calls, "image_generation_cost_per_call"):
        # The image tool's own tokens are not in the Response's usage.
        return Priced(None, "image_generation_cost_per_call")
    if usage.code_interpreter_sessions:
        container = price_for(CONTAINER_PRICE, at) if at is not None else None
        rate = (container.rates or {}).get("code_interpreter_cost_per_session") if container else None
        if rate is None:
            return Priced(None, "code_interpreter_cost_per_session")
        total += Decimal(usage.code_interpreter_sessions) * Decimal(str(rate))
    # Exactly what the cost columns hold, so that what is stored is what was computed.
    tools = total - before_tools
    return Priced(total.quantize(COST_PLACES), tool_cost=tools.quantize(COST_PLACES) if tools else None)


def cost_of(usage: Usage, price: ModelPrice | None, *, batch: bool = False,
            at: datetime | None = None) -> Decimal | None:
    return price_usage(usage, price, batch=batch, at=at).cost


def _image_rate(rates: dict, variant: str | None) -> str | None:
    """The rate name for one image of this size and quality: `hd/1024-x-1792` exactly;
    a size without quality is dall-e-3's "standard" or dall-e-2's only quality."""
    if not variant:
        return None
    quality, _, size = variant.rpartition("/")
    tries = [variant]
    if not quality:
        tries.append(f"standard/{size}")
    elif quality == "standard":
        tries.append(size)
    for v in tries:
        for kind in ("input_cost_per_image", "output_cost_per_image", "input_cost_per_pixel",
                     "output_cost_per_pixel"):
            if f"{kind}/{v}" in rates:
                return f"{kind}/{v}"
    return None


def _per_image(rates: dict, key: str) -> Decimal:
    rate = Decimal(str(rates[key]))
    if "_per_pixel/" in key:
        width, height = key.rsplit("/", 1)[1].split("-x-")
        rate *= int(width) * int(height)
    return rate


# ============================================================================
# Import prices from LiteLLM's public price map (USD per token) into ModelPrice
# rows (USD per 1M tokens).
#
# Used by the data migration that ships the initial prices and by
# `manage.py import_prices`. Prices are never edited in place: a changed price
# becomes a new row effective from the import date.
# ============================================================================


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
