"""Usage and cost, with expected dollars worked out by hand from the shipped prices.

Shipped prices used here (USD per 1M tokens): gpt-4o 2.50 in / 1.25 cached / 10.00 out,
batch 1.25 / 5.00; o3 2.00 / 0.50 / 8.00; text-embedding-3-small 0.02 in;
gpt-image-1 5.00 text in / 10.00 image in / 40.00 out.
"""
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
import requests
from django.core.management import call_command
from django.db.models import Sum
from django.utils import timezone

from tests.conftest import finished_call
from audit_app.models import ApiCall, ModelPrice, Outcome, UsageDaily
from audit_app.pricing import cost_of, price_for
from audit_app.usage import Usage


@pytest.fixture
def post(relay_url, relay_key):
    def post(path: str, body: dict, **kwargs) -> requests.Response:
        return requests.post(f"{relay_url}{path}", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {relay_key}"}, **kwargs)
    return post


def answer_with(upstream, path: str, body: dict) -> None:
    upstream.inject(path, status=200, body=body)


def test_plain_call(post, upstream):
    answer_with(upstream, "/v1/responses", {
        "object": "response", "model": "gpt-4o-2024-08-06", "output": [],
        "usage": {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 500, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 1500}})
    post("/v1/responses", {"model": "gpt-4o", "input": "hi"})
    row = finished_call()
    # 1000 x 2.50 + 500 x 10.00 per 1M, at the price of the snapshot upstream reports.
    assert row.cost == Decimal("0.0075")
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens, row.total_tokens) == (1000, 0, 500, 1500)
    assert not row.unpriced and row.price.model == "gpt-4o-2024-08-06"
    assert row.model == "gpt-4o"  # what the client asked for


def test_a_snapshot_without_its_own_price_uses_its_familys(shipped_prices):
    at = timezone.now()
    assert price_for("gpt-4o-2099-12-31", at).model == "gpt-4o"
    assert price_for("o3-mini-2099-01-31", at).model == "o3-mini"
    assert price_for("gpt-4o-mini", at).model == "gpt-4o-mini"
    assert price_for("not-a-model-2099-01-01", at) is None


def test_cached_input_is_charged_at_the_cached_rate(post, upstream):
    answer_with(upstream, "/v1/chat/completions", {
        "object": "chat.completion", "model": "gpt-4o", "choices": [],
        "usage": {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 600},
                  "completion_tokens": 100, "total_tokens": 1100}})
    post("/v1/chat/completions", {"model": "gpt-4o", "messages": []})
    row = finished_call()
    # 400 uncached x 2.50 + 600 cached x 1.25 + 100 x 10.00 = 2750 per 1M.
    assert row.cost == Decimal("0.00275")
    assert row.cached_input_tokens == 600


def test_reasoning_tokens_are_part_of_output(post, upstream):
    answer_with(upstream, "/v1/responses", {
        "object": "response", "model": "o3", "output": [],
        "usage": {"input_tokens": 100, "output_tokens": 1000,
                  "output_tokens_details": {"reasoning_tokens": 800}, "total_tokens": 1100}})
    post("/v1/responses", {"model": "o3", "input": "think"})
    row = finished_call()
    # 100 x 2.00 + 1000 x 8.00 (reasoning already inside the 1000) = 8200 per 1M.
    assert row.cost == Decimal("0.0082")
    assert row.reasoning_tokens == 800


def test_embeddings(post, upstream):
    answer_with(upstream, "/v1/embeddings", {
        "object": "list", "model": "text-embedding-3-small", "data": [],
        "usage": {"prompt_tokens": 1000, "total_tokens": 1000}})
    post("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    row = finished_call()
    assert row.cost == Decimal("0.00002")  # 1000 x 0.02 per 1M
    assert row.output_tokens == 0


def test_image_generation(post, upstream):
    answer_with(upstream, "/v1/images/generations", {
        "created": 1, "data": [{"b64_json": "AAAA" * 50000}],
        "usage": {"input_tokens": 50, "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                  "output_tokens": 4160, "total_tokens": 4210}})
    post("/v1/images/generations", {"model": "gpt-image-1", "prompt": "a cat", "n": 1})
    row = finished_call()
    # 50 x 5.00 + 4160 x 40.00 per 1M.
    assert row.cost == Decimal("0.16665")
    assert row.images == 1


def test_unknown_model_is_unpriced_never_free(post, upstream):
    answer_with(upstream, "/v1/responses", {
        "object": "response", "model": "brand-new-model", "output": [],
        "usage": {"input_tokens": 10, "output_tokens": 10, "total_tokens": 20}})
    post("/v1/responses", {"model": "brand-new-model", "input": "hi"})
    row = finished_call()
    assert row.cost is None and row.unpriced is True
    assert row.total_tokens == 20
    daily = UsageDaily.objects.get()
    assert daily.unpriced_calls == 1 and daily.cost == 0


def test_calls_without_usage_are_neither_priced_nor_unpriced(relay_url, relay_key, upstream):
    requests.get(f"{relay_url}/v1/models", headers={"Authorization": f"Bearer {relay_key}"}, timeout=10)
    row = finished_call()
    assert row.cost is None and not row.unpriced and row.total_tokens is None


def test_streamed_responses_call_is_priced(post, upstream):
    response = post("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True})
    completed = [line for line in response.text.splitlines() if '"response.completed"' in line][-1]
    import json
    usage = json.loads(completed.removeprefix("data:"))["response"]["usage"]
    row = finished_call()
    assert row.stream and row.outcome == Outcome.OK
    assert row.input_tokens == usage["input_tokens"] and row.output_tokens == usage["output_tokens"]
    cached = usage.get("input_tokens_details", {}).get("cached_tokens", 0)
    expected = (Decimal(usage["input_tokens"] - cached) * Decimal("2.5") + Decimal(cached) * Decimal("1.25")
                + Decimal(usage["output_tokens"]) * Decimal("10")) / Decimal(1_000_000)
    assert row.cost == expected and row.cost > 0


def chat_stream(relay_or_direct: str, headers: dict, include_usage: bool | None) -> bytes:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return requests.post(f"{relay_or_direct}/chat/completions", json=body, headers=headers, timeout=30).content


def normalise(stream: bytes) -> bytes:
    """Ids and timestamps differ per call; everything else must match byte for byte."""
    import re
    return re.sub(rb'"(id|created|system_fingerprint)":\s*("[^"]*"|\d+)', b'"\\1":X', stream)


@pytest.mark.parametrize("include_usage", [True, None, False])
def test_streamed_chat_gives_the_client_exactly_what_it_asked_for(relay_url, relay_key, upstream, include_usage):
    via_relay = chat_stream(f"{relay_url}/v1", {"Authorization": f"Bearer {relay_key}"}, include_usage)
    direct = chat_stream(upstream.base_url, {"Authorization": "Bearer sk-direct"}, include_usage)
    assert normalise(via_relay) == normalise(direct)
    has_usage_chunk = b'"choices": []' in via_relay or b'"choices":[]' in via_relay
    assert has_usage_chunk is bool(include_usage)
    if not include_usage:
        assert b'"usage"' not in via_relay
    row = finished_call()
    assert row.total_tokens and row.cost and row.cost > 0


def test_price_change_part_way_through_a_month(post, upstream):
    old = price_for("gpt-4o", timezone.now())
    change = timezone.now() - timedelta(hours=1)
    ModelPrice.objects.create(model="gpt-4o", effective_from=change, input_per_1m=Decimal("5"),
                              cached_input_per_1m=Decimal("2.5"), output_per_1m=Decimal("20"))
    usage = Usage(input_tokens=1000, cached_input_tokens=0, output_tokens=500, total_tokens=1500)
    assert cost_of(usage, price_for("gpt-4o", change - timedelta(days=3))) == Decimal("0.0075")
    assert price_for("gpt-4o", change - timedelta(days=3)) == old
    answer_with(upstream, "/v1/responses", {
        "object": "response", "model": "gpt-4o", "output": [],
        "usage": {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}})
    post("/v1/responses", {"model": "gpt-4o", "input": "hi"})
    assert finished_call().cost == Decimal("0.015")  # the new price: 1000 x 5 + 500 x 20


def test_reprice_applies_a_corrected_price_to_calls_and_rollups(post, upstream, capsys):
    answer_with(upstream, "/v1/responses", {
        "object": "response", "model": "house-model", "output": [],
        "usage": {"input_tokens": 2000, "output_tokens": 1000, "total_tokens": 3000}})
    post("/v1/responses", {"model": "house-model", "input": "hi"})
    assert finished_call().unpriced
    ModelPrice.objects.create(model="house-model", effective_from=datetime(2024, 1, 1, tzinfo=dt_timezone.utc),
                              input_per_1m=Decimal("1"), output_per_1m=Decimal("2"))
    assert finished_call().unpriced, "prices never change past calls silently"
    call_command("reprice", "--since", (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%d"))
    assert "1 changed" in capsys.readouterr().out
    row = finished_call()
    assert row.cost == Decimal("0.004") and not row.unpriced  # 2000 x 1 + 1000 x 2
    daily = UsageDaily.objects.get()
    assert daily.cost == Decimal("0.004") and daily.unpriced_calls == 0 and daily.calls == 1


def test_rollups_equal_the_sum_of_raw_calls(relay_url, issue_key, upstream):
    keys = [issue_key("alice")[1], issue_key("alice")[1], issue_key("bob")[1]]
    bodies = [
        ("/v1/responses", {"model": "gpt-4o", "input": "a"}),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "a", "stream": True}),
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": [], "stream": True}),
        ("/v1/chat/completions", {"model": "o3", "messages": []}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}),
        ("/v1/responses", {"model": "unknown-model", "input": "a"}),
        ("/v1/models", None),
    ]
    for i in range(3 * len(bodies)):
        path, body = bodies[i % len(bodies)]
        headers = {"Authorization": f"Bearer {keys[i % 3]}"}
        if body is None:
            requests.get(relay_url + path, headers=headers, timeout=10)
        else:
            requests.post(relay_url + path, json=body, headers=headers, timeout=30)
    requests.get(f"{relay_url}/v1/models", timeout=10)  # rejected: no key, no usage
    calls = ApiCall.objects.filter(key__isnull=False)
    fields = ["input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens", "cost"]
    raw = calls.aggregate(**{f: Sum(f) for f in fields})
    daily = UsageDaily.objects.aggregate(**{f: Sum(f) for f in fields}, calls=Sum("calls"),
                                         unpriced=Sum("unpriced_calls"))
    assert daily.pop("calls") == calls.count() == 3 * len(bodies)
    assert daily.pop("unpriced") == calls.filter(unpriced=True).count() == 3
    for f in fields:
        assert daily[f] == (raw[f] or 0), f
    assert raw["cost"] > 0
    per_bucket = {(d.date, d.user_id, d.key_id, d.model, d.family) for d in UsageDaily.objects.all()}
    assert len(per_bucket) == UsageDaily.objects.count()


def test_usage_report(post, upstream, capsys):
    answer_with(upstream, "/v1/responses", {
        "object": "response", "model": "gpt-4o", "output": [],
        "usage": {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}})
    post("/v1/responses", {"model": "gpt-4o", "input": "hi"})
    finished_call()
    call_command("usage_report", "--by", "model")
    out = capsys.readouterr().out
    assert "gpt-4o" in out and "0.007500" in out and "TOTAL" in out
    call_command("usage_report", "--by", "user", "--csv")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("user,calls") and lines[1].startswith("alice,1,")
