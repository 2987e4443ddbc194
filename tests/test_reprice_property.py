"""`reprice` with unchanged prices changes nothing, for every kind of call.

The property: whatever a call used, the cost the live path stored is the cost the
stored row reprices to, because both go through one function
(audit_app.recorder.priced_fields) fed only from what is on the row. Checked on
two generated workloads: one through the relay with the SDK (every case of the
pricing table, streamed and not, mixed with the rollup test's workload), and a
larger one of random usage records of every dimension, tier, model kind
(snapshots, fine-tunes, unknown models) and unit, closed through the recorder as
the pipeline closes them.
"""
from __future__ import annotations

import random
from decimal import Decimal

from django.core.management import call_command
from django.utils import timezone

from audit_app.models import ApiCall, Billing, Outcome, UsageDaily
from audit_app.recorder import CallContext, close_call, open_call
from audit_app.usage import Usage
from tests.conftest import settle
from tests.test_pricing_dimensions import CASES
from tests.test_usage_rollups import run_workload


def snapshot() -> dict[int, tuple]:
    return {c.pk: (c.cost, c.unpriced, c.billing, c.price_id, c.row_mac) for c in ApiCall.objects.all()}


def rollups() -> list[tuple]:
    return sorted((d.date, d.key_id, d.model, d.family, d.cost, d.unpriced_calls) for d in UsageDaily.objects.all())


def reprice_today(capsys) -> str:
    call_command("reprice", "--since", timezone.now().strftime("%Y-%m-%d"))
    return capsys.readouterr().out


def test_reprice_without_a_price_change_changes_nothing_on_a_workload_through_the_relay(
        relay_url, issue_key, sdk, upstream, capsys):
    rng = random.Random(20261130)
    for case in rng.sample(CASES, len(CASES)):
        for stream in case.streams:
            upstream.scenario = case.scenario
            case.call(sdk, case.model, stream, **case.extra)
    upstream.scenario = None
    run_workload(relay_url, upstream, [issue_key("bob")[1]], calls=30, seed=7)
    settle()
    before, sums = snapshot(), rollups()
    kinds = {c.billing for c in ApiCall.objects.all()}
    assert {Billing.PRICED, Billing.UNPRICED, Billing.FREE} <= kinds

    out = reprice_today(capsys)
    assert ", 0 changed" in out, out
    assert snapshot() == before and rollups() == sums


MODELS = ["gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2099-01-01", "o4-mini", "gpt-5.4", "gpt-5.6",
          "gpt-4o-mini-tts", "gpt-image-1.5", "gpt-4o-audio-preview-2024-12-17", "whisper-1", "tts-1",
          "ft:gpt-4o-mini-2024-07-18:acme::x1", "ft:gpt-4.1-2025-04-14:acme::x2", "dall-e-3", "house-model"]
TIERS = [None, "default", "auto", "flex", "priority", "scale"]


UNIT_BILLED = {"whisper-1": "seconds", "tts-1": "characters", "dall-e-3": "images"}


def random_usage(rng: random.Random, model: str) -> Usage:
    """A usage record of the model's kind (now and then another), internally consistent."""
    kind = UNIT_BILLED.get(model, "tokens") if rng.random() < 0.9 else \
        rng.choice(["tokens", "seconds", "characters", "images"])
    if kind == "seconds":
        return Usage(audio_seconds=Decimal(rng.randint(1, 90_000)) / 1000)
    if kind == "characters":
        return Usage(characters=rng.randint(1, 4096))
    if kind == "images":
        return Usage(images=rng.randint(1, 4), image_variant=rng.choice(
            ["1024-x-1024", "hd/1024-x-1792", "standard/1024-x-1024", "256-x-256"]))
    inp = rng.choice([0, 10, 1000, 100_000, 300_000])
    # Most calls are plain text at the standard tier, as in real traffic; the rest use
    # other dimensions, which many models have no rate for (unpriced).
    some = lambda n: rng.randint(0, n) if rng.random() < 0.2 else 0  # noqa: E731
    audio = some(inp // 3)
    image = some(inp // 3)
    cached = rng.randint(0, inp - audio - image)
    out = rng.randint(0, 5000)
    audio_out = some(out // 2)
    image_out = some(out // 4)
    u = Usage(input_tokens=inp, output_tokens=out, total_tokens=inp + out,
              cached_input_tokens=cached, reasoning_tokens=rng.randint(0, out - audio_out - image_out),
              audio_input_tokens=audio or None, image_input_tokens=image or None,
              audio_output_tokens=audio_out or None, image_output_tokens=image_out or None,
              cache_write_tokens=some(inp - audio - image - cached) or None,
              service_tier=rng.choice(TIERS) if rng.random() < 0.4 else None,
              cache_retention=rng.choice([None, "in_memory", "24h"]))
    if rng.random() < 0.2:
        u.web_search_calls = rng.randint(1, 3)
        u.search_context_size = rng.choice([None, "low", "medium", "high"])
    if rng.random() < 0.1:
        u.code_interpreter_sessions = rng.randint(1, 2)
    if rng.random() < 0.05:
        u.file_search_calls = 1
    return u


def test_reprice_without_a_price_change_changes_nothing_on_random_usage_of_every_dimension(
        issue_key, shipped_prices, capsys):
    key, _ = issue_key("carol")
    rng = random.Random(1311)
    for _ in range(300):
        ctx = CallContext(method="POST", path="/v1/responses", family="responses", key=key, user=key.owner)
        call_id = open_call(ctx)
        model = rng.choice(MODELS)
        close_call(call_id, ctx, usage=random_usage(rng, model), response_model=model, model=model.split(":")[0],
                   outcome=Outcome.OK, status=200)
    before, sums = snapshot(), rollups()
    billed = [c.billing for c in ApiCall.objects.all()]
    assert billed.count(Billing.PRICED) > 60 and billed.count(Billing.UNPRICED) > 60

    out = reprice_today(capsys)
    assert "300 calls checked, 0 changed" in out, out
    assert snapshot() == before and rollups() == sums
