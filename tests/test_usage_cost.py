"""Usage and cost, with expected dollars worked out by hand from the shipped prices.

Shipped prices used here (audit_app/data/openai-model-prices.json, USD per token, shown
per 1M): gpt-4o 2.50 in / 1.25 cached / 10.00 out; o3 2.00 / 0.50 / 8.00;
text-embedding-3-small 0.02 in; gpt-image-1 5.00 text in / 10.00 image in / 40.00 out;
per second: whisper-1 0.0001, gpt-4o-mini-transcribe 0.00005; per character: tts-1
0.000015, tts-1-hd 0.00003. Price changes and imports: test_usage_prices.py; rollups
against raw calls: test_usage_rollups.py.
"""
import csv
import io
import json
import time
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone

from tests.conftest import finished_call, finished_calls
from audit_app.models import ApiCall, ModelPrice, Outcome, UsageDaily
from audit_app.pricing import price_for


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


# --- streams, legacy completions and audio, against the fake's fixed usage ----------------
# The fake reports 12 input tokens (4 of them cached) and, with its default 3 deltas,
# 3 + 2 = 5 output tokens on a stream (7 on a JSON answer), reasoning 0.

STREAMED_TOKENS = (12, 4, 5, 0, 17)  # input, cached, output, reasoning, total
JSON_TOKENS = (12, 4, 7, 0, 19)
# Cases are looped inside a test rather than parametrized: on PostgreSQL each test's
# database flush and price load cost more than its calls.


def tokens(row: ApiCall) -> tuple:
    return (row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens,
            row.total_tokens)


def row_of(response: requests.Response) -> ApiCall:
    """The response's audit row, once the server has finished it."""
    request_id = response.headers["x-relay-request-id"]
    deadline = time.monotonic() + 10
    while ApiCall.objects.filter(relay_request_id=request_id, outcome=Outcome.PENDING).exists() \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    return ApiCall.objects.get(relay_request_id=request_id)


def stream_raw(url: str, body: dict, key: str) -> tuple[requests.Response, bytes]:
    """The response body exactly as it came off the socket (chunked framing removed, nothing decoded)."""
    with requests.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, stream=True,
                       timeout=30) as response:
        data = response.raw.read(decode_content=False)
    assert "content-encoding" not in response.headers
    return response, data


def test_streamed_responses_call_is_priced_from_its_final_event(post, upstream):
    for end in ("completed", "incomplete", "failed"):
        upstream.responses_end = end
        response = post("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True})
        assert f"event: response.{end}\n" in response.text
        row = row_of(response)
        assert row.stream and tokens(row) == STREAMED_TOKENS, end
        # gpt-4o: (12 - 4) x 2.50 + 4 cached x 1.25 + 5 x 10.00 = 20 + 5 + 50 = 75 per 1M.
        assert row.cost == Decimal("0.000075"), end
        assert not row.unpriced and row.price.model == "gpt-4o"


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_streamed_chat_with_include_usage_reaches_the_client_byte_for_byte(relay_url, relay_key, upstream):
    body = {**CHAT, "stream_options": {"include_usage": True}}
    response, via_relay = stream_raw(f"{relay_url}/v1/chat/completions", body, relay_key)
    assert response.status_code == 200
    assert upstream.requests[0].json() == body, "the client asked: nothing to rewrite"
    [generated] = upstream.sse_sent
    assert via_relay == generated
    assert b'"choices": [], "usage": {"prompt_tokens": 12' in via_relay
    row = row_of(response)
    assert row.stream and tokens(row) == STREAMED_TOKENS
    # (12 - 4) x 2.50 + 4 x 1.25 + 5 x 10.00 = 75 per 1M.
    assert row.cost == Decimal("0.000075")


def test_streamed_chat_without_include_usage_is_priced_and_unchanged_for_the_client(
        relay_url, relay_key, upstream):
    upstream.chat_stream_id = "chatcmpl-fixed"  # so that two streams can be compared byte for byte
    for stream_options in (None, {"include_usage": False}):
        body = {**CHAT, **({"stream_options": stream_options} if stream_options else {})}
        response, via_relay = stream_raw(f"{relay_url}/v1/chat/completions", body, relay_key)
        row = row_of(response)
        # What OpenAI sends a client that did not ask for usage: the same request, straight to upstream.
        _, direct = stream_raw(f"{upstream.base_url}/chat/completions", body, "sk-direct")
        relayed_upstream, generated_direct = upstream.sse_sent[-2], upstream.sse_sent[-1]
        assert upstream.requests[-2].json()["stream_options"]["include_usage"] is True  # the relay asked
        assert b'"choices": [], "usage": {' in relayed_upstream
        assert via_relay == direct == generated_direct, stream_options
        assert b'"usage"' not in via_relay
        assert row.stream and tokens(row) == STREAMED_TOKENS
        assert row.cost == Decimal("0.000075")  # as above: 20 + 5 + 50 per 1M
    daily = UsageDaily.objects.get()
    assert (daily.calls, daily.output_tokens, daily.cost) == (2, 10, Decimal("0.00015"))


def test_legacy_completions(relay_url, relay_key, upstream):
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}
    _, _ = stream_raw(f"{relay_url}/v1/completions", body, relay_key)
    unpriced = finished_call()
    assert tokens(unpriced) == JSON_TOKENS
    assert unpriced.cost is None and unpriced.unpriced, "the shipped map has no legacy completion model"

    # OpenAI lists gpt-3.5-turbo-instruct at 1.50 in / 2.00 out per 1M, with no cache
    # discount: the admin says so with a cached rate equal to the input rate (without
    # one, the fake's 4 cached tokens would leave the call unpriced, never guessed).
    price = ModelPrice.objects.create(model="gpt-3.5-turbo-instruct", input_per_1m=Decimal("1.5"),
                                      output_per_1m=Decimal("2"), cached_input_per_1m=Decimal("1.5"),
                                      effective_from=datetime(2024, 1, 1, tzinfo=dt_timezone.utc))
    for stream, include_usage, expected in [
        (False, None, Decimal("0.000032")),  # 12 x 1.50 + 7 x 2.00 = 18 + 14 = 32 per 1M
        (True, None, Decimal("0.000028")),   # 12 x 1.50 + 5 x 2.00 = 18 + 10 = 28 per 1M
        (True, True, Decimal("0.000028")),
    ]:
        body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": stream}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        response, via_relay = stream_raw(f"{relay_url}/v1/completions", body, relay_key)
        row = row_of(response)
        assert tokens(row) == (STREAMED_TOKENS if stream else JSON_TOKENS)
        assert row.cost == expected and row.price == price
        if stream:
            # The fake's completion streams carry fixed ids: a direct call gives the very same bytes.
            _, direct = stream_raw(f"{upstream.base_url}/completions", body, "sk-direct")
            assert via_relay == direct == upstream.sse_sent[-1]
            assert (b'"usage": {' in via_relay) is bool(include_usage)


WAV = b"RIFF" + b"\0" * 60


def test_transcription_is_priced_by_the_second(relay_url, relay_key, upstream):
    for path, model, expected in [
        ("/v1/audio/transcriptions", "whisper-1", Decimal("0.0042")),  # 42 s x 0.0001
        ("/v1/audio/translations", "whisper-1", Decimal("0.0042")),
        ("/v1/audio/transcriptions", "gpt-4o-mini-transcribe", Decimal("0.0021")),  # 42 s x 0.00005
        ("/v1/audio/transcriptions", "whisper-9", None),  # no price at all
    ]:
        response = requests.post(f"{relay_url}{path}", headers={"Authorization": f"Bearer {relay_key}"},
                                 files={"file": ("a.wav", WAV, "audio/wav")}, data={"model": model}, timeout=30)
        assert response.json()["text"] == "hello"
        row = row_of(response)
        assert row.model == model and row.audio_seconds == Decimal("42")  # the fake reports 42 s
        assert row.input_tokens is None
        assert row.cost == expected and row.unpriced is (expected is None), model


SPOKEN = "Grüße aus Zürich!"  # 17 characters, 19 bytes in UTF-8: billed by characters


def test_speech_is_priced_by_the_character(post, upstream):
    for model, expected in [
        ("tts-1", Decimal("0.000255")),     # 17 x 0.000015
        ("tts-1-hd", Decimal("0.00051")),   # 17 x 0.00003
        ("gpt-4o-mini-tts", None),          # priced by tokens and output seconds, never per character
    ]:
        response = post("/v1/audio/speech", {"model": model, "input": SPOKEN, "voice": "alloy"})
        assert response.content == b"ID3" + b"\0" * 4093
        row = row_of(response)
        assert row.characters == 17 and row.audio_seconds is None and row.input_tokens is None
        assert row.cost == expected and row.unpriced is (expected is None), model


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
    assert lines[0].startswith("user,mode,service_tier,calls") and lines[1].startswith("alice,interactive,-,1,")


def test_usage_report_shows_dimensions_tiers_modes_and_unknown_costs_apart(post, upstream, capsys, shipped_prices):
    upstream.scenario = {"service_tier": "priority", "usage": {
        "input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 500,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1500},
        "output": [{"type": "web_search_call", "id": "ws", "status": "completed", "action": {"type": "search"}}]}
    post("/v1/responses", {"model": "gpt-4o-mini-2024-07-18", "input": "hi"})
    upstream.scenario = None
    post("/v1/responses", {"model": "house-model-with-a-long-name-2026-01-01", "input": "hi"})
    finished_calls(2)
    # A batch of gpt-4o-mini, as the poller rolls its results up: on a row of its own.
    from audit_app import rollups
    call = ApiCall.objects.first()
    rollups.add(started_at=call.started_at, user_id=call.user_id, key_id=call.key_id,
                model="gpt-4o-mini-2024-07-18", family="batches", calls=3, cost=Decimal("0.0003"))

    call_command("usage_report", "--by", "model", "--format", "json")
    report = json.loads(capsys.readouterr().out)
    rows = {(r["model"], r["mode"], r["service_tier"]): r for r in report["rows"]}
    priority = rows[("gpt-4o-mini-2024-07-18", "interactive", "priority")]
    # input_cost_per_token_priority 2.5e-07 x 1000 + output_cost_per_token_priority 1e-06 x 500
    # + search_context_cost_per_query.search_context_size_medium 0.025 = 0.00025 + 0.0005 + 0.025
    assert Decimal(priority["cost"]) == Decimal("0.02575") and Decimal(priority["tool_cost"]) == Decimal("0.025")
    assert priority["web_search_calls"] == 1 and priority["cost_complete"] is True
    assert Decimal(rows[("gpt-4o-mini-2024-07-18", "batch", "-")]["cost"]) == Decimal("0.0003")
    unpriced = rows[("house-model-with-a-long-name-2026-01-01", "interactive", "-")]
    assert unpriced["cost"] is None and unpriced["unpriced_calls"] == 1 and unpriced["cost_complete"] is False
    assert report["total"]["unpriced_calls"] == 1 and report["total"]["cost_complete"] is False

    call_command("usage_report", "--by", "model")
    table = capsys.readouterr().out
    line = next(l for l in table.splitlines() if l.startswith("house-model-with-a-long-name-2026-01-01 "))
    assert "unpriced" in line and "0.000000" not in line.split()[-3]
    call_command("usage_report", "--by", "model", "--format", "csv")
    lines = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    header = lines[0]
    house = next(l for l in lines if l[0].startswith("house-model"))
    assert house[header.index("cost")] == "" and house[header.index("unpriced_calls")] == "1"
