"""Every billed dimension priced by its own rate, through the relay with the openai SDK.

One row per case of issue 13's table and per dimension. Each row's expected dollars
are written out from the vendored price file (audit_app/data/openai-model-prices.json,
USD per token unless named otherwise); the field of the map that prices each part is
named in the comment. Where the map has no rate for a dimension the call used, the
call is unpriced: cost None, never a guess and never another dimension's rate.

The fake upstream reports the case's usage shape (tests/fake_openai.py `scenario`),
with the field names of OpenAI's spec.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal
from typing import Any, Callable

import openai

from audit_app.models import Billing, ModelPrice
from tests.conftest import finished_calls

RESPONSES_USAGE = {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 200},
                   "output_tokens": 500, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1500}
CHAT_USAGE = {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 200},
              "completion_tokens": 500, "completion_tokens_details": {"reasoning_tokens": 0},
              "total_tokens": 1500}


def responses(sdk: openai.OpenAI, model: str, stream: bool, **extra: Any) -> None:
    if stream:
        for _ in sdk.responses.create(model=model, input="hi", stream=True, **extra):
            pass
    else:
        sdk.responses.create(model=model, input="hi", **extra)


def chat(sdk: openai.OpenAI, model: str, stream: bool, **extra: Any) -> None:
    messages = [{"role": "user", "content": "hi"}]
    if stream:
        for _ in sdk.chat.completions.create(model=model, messages=messages, stream=True, **extra):
            pass
    else:
        sdk.chat.completions.create(model=model, messages=messages, **extra)


def speech(sdk: openai.OpenAI, model: str, stream: bool, **extra: Any) -> None:
    with sdk.audio.speech.with_streaming_response.create(
            model=model, voice="alloy", input="Hello there", stream_format="sse" if stream else "audio") as r:
        r.read()


def images(sdk: openai.OpenAI, model: str, stream: bool, **extra: Any) -> None:
    sdk.images.generate(model=model, prompt="a cat", **extra)


def transcription(sdk: openai.OpenAI, model: str, stream: bool, **extra: Any) -> None:
    sdk.audio.transcriptions.create(model=model, file=("a.wav", b"RIFF" + b"\0" * 60, "audio/wav"))


@dataclass
class Case:
    name: str
    call: Callable[..., None]
    model: str
    scenario: dict[str, Any]
    cost: Decimal | None  # None: unpriced
    streams: tuple[bool, ...] = (False, True)
    extra: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, Any] = field(default_factory=dict)  # columns the row must hold


CASES = [
    Case("service_tier flex (o4-mini)", responses, "o4-mini",
         {"usage": RESPONSES_USAGE, "service_tier": "flex"},
         # input_cost_per_token_flex 5.5e-07 x 800 + cache_read_input_token_cost_flex 1.38e-07 x 200
         # + output_cost_per_token_flex 2.2e-06 x 500 = 0.00044 + 0.0000276 + 0.0011
         Decimal("0.0015676"), stored={"service_tier": "flex"}),
    Case("service_tier priority (gpt-4o)", chat, "gpt-4o",
         {"usage": CHAT_USAGE, "service_tier": "priority"},
         # input_cost_per_token_priority 4.25e-06 x 800 + cache_read_input_token_cost_priority
         # 2.125e-06 x 200 + output_cost_per_token_priority 1.7e-05 x 500 = 0.0034 + 0.000425 + 0.0085
         Decimal("0.012325"), stored={"service_tier": "priority"}),
    Case("service_tier default is the standard rate (gpt-4o)", chat, "gpt-4o",
         {"usage": CHAT_USAGE, "service_tier": "default"},
         # 2.5e-06 x 800 + 1.25e-06 x 200 + 1e-05 x 500 = 0.002 + 0.00025 + 0.005
         Decimal("0.00725")),
    Case("a tier without a rate is unpriced (gpt-4o flex)", chat, "gpt-4o",
         {"usage": CHAT_USAGE, "service_tier": "flex"}, None),
    Case("audio tokens in and out (gpt-4o-audio-preview)", chat, "gpt-4o-audio-preview",
         {"model": "gpt-4o-audio-preview-2024-12-17", "usage": {
             "prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 600},
             "completion_tokens": 500, "completion_tokens_details": {"audio_tokens": 400, "text_tokens": 100},
             "total_tokens": 1500}},
         # input_cost_per_token 2.5e-06 x 400 + input_cost_per_audio_token 4e-05 x 600
         # + output_cost_per_token 1e-05 x 100 + output_cost_per_audio_token 8e-05 x 400
         # = 0.001 + 0.024 + 0.001 + 0.032
         Decimal("0.058"), stored={"audio_input_tokens": 600, "audio_output_tokens": 400}),
    Case("gpt-4o-mini-tts streamed: output tokens are audio", speech, "gpt-4o-mini-tts",
         {"usage": {"input_tokens": 10, "output_tokens": 200, "total_tokens": 210}},
         # input_cost_per_token 6e-07 x 10 + output_cost_per_audio_token 1.2e-05 x 200 = 0.000006 + 0.0024
         Decimal("0.002406"), streams=(True,), stored={"audio_output_tokens": 200}),
    Case("gpt-4o-mini-tts as audio bytes reports no usage: unpriced", speech, "gpt-4o-mini-tts", {},
         None, streams=(False,)),  # the map has no input_cost_per_character for it
    Case("gpt-image-1.5 image output tokens", images, "gpt-image-1.5",
         {"usage": {"input_tokens": 50, "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                    "output_tokens": 4160, "total_tokens": 4210}},
         # input_cost_per_token 5e-06 x 50 + output_cost_per_image_token 3.2e-05 x 4160 = 0.00025 + 0.13312
         Decimal("0.13337"), streams=(False,), stored={"image_output_tokens": 4160}),
    Case("gpt-image-1 image input tokens (an edit)", images, "gpt-image-1",
         {"usage": {"input_tokens": 1050, "input_tokens_details": {"text_tokens": 50, "image_tokens": 1000},
                    "output_tokens": 1000, "total_tokens": 2050}},
         # input_cost_per_token 5e-06 x 50 + input_cost_per_image_token 1e-05 x 1000
         # + output_cost_per_image_token 4e-05 x 1000 = 0.00025 + 0.01 + 0.04
         Decimal("0.05025"), streams=(False,), stored={"image_input_tokens": 1000}),
    Case("web search calls in a Responses output (gpt-4o-mini)", responses, "gpt-4o-mini",
         {"usage": {**RESPONSES_USAGE, "input_tokens_details": {"cached_tokens": 0}},
          "output": [{"type": "web_search_call", "id": "ws_1", "status": "completed",
                      "action": {"type": "search", "query": "q"}},
                     {"type": "web_search_call", "id": "ws_2", "status": "completed",
                      "action": {"type": "search", "query": "q2"}}],
          "tools": [{"type": "web_search", "search_context_size": "high"}]},
         # input_cost_per_token 1.5e-07 x 1000 + output_cost_per_token 6e-07 x 500
         # + search_context_cost_per_query.search_context_size_high 0.025 x 2 = 0.00015 + 0.0003 + 0.05
         Decimal("0.05045"), stored={"web_search_calls": 2, "search_context_size": "high",
                                     "tool_cost": Decimal("0.05")}),
    Case("a chat search model: every request is one web search (gpt-4o-search-preview)", chat,
         "gpt-4o-search-preview", {"usage": {**CHAT_USAGE, "prompt_tokens_details": {"cached_tokens": 0}}},
         # input_cost_per_token 2.5e-06 x 1000 + output_cost_per_token 1e-05 x 500
         # + search_context_cost_per_query.search_context_size_medium 0.025 = 0.0025 + 0.005 + 0.025
         Decimal("0.0325"), stored={"web_search_calls": 1, "tool_cost": Decimal("0.025")}),
    Case("code interpreter sessions (gpt-4.1)", responses, "gpt-4.1",
         {"usage": {**RESPONSES_USAGE, "input_tokens_details": {"cached_tokens": 0}},
          "output": [{"type": "code_interpreter_call", "id": "ci_1", "status": "completed",
                      "container_id": "cntr_a", "code": "1+1", "outputs": None},
                     {"type": "code_interpreter_call", "id": "ci_2", "status": "completed",
                      "container_id": "cntr_a", "code": "2+2", "outputs": None},
                     {"type": "code_interpreter_call", "id": "ci_3", "status": "completed",
                      "container_id": "cntr_b", "code": "3+3", "outputs": None}]},
         # input_cost_per_token 2e-06 x 1000 + output_cost_per_token 8e-06 x 500
         # + openai/container code_interpreter_cost_per_session 0.03 x 2 containers = 0.002 + 0.004 + 0.06
         Decimal("0.066"), stored={"code_interpreter_sessions": 2, "tool_cost": Decimal("0.06")}),
    Case("file search calls: the map has no per-call rate, unpriced", responses, "gpt-4.1",
         {"usage": RESPONSES_USAGE,
          "output": [{"type": "file_search_call", "id": "fs_1", "status": "completed", "queries": ["q"]}]},
         None, stored={"file_search_calls": 1}),
    Case("fine-tuned model at its base's fine-tuned rates", chat, "ft:gpt-4o-mini-2024-07-18:acme::abc123",
         {"usage": CHAT_USAGE},
         # ft:gpt-4o-mini-2024-07-18: input_cost_per_token 3e-07 x 800 + cache_read_input_token_cost
         # 1.5e-07 x 200 + output_cost_per_token 1.2e-06 x 500 = 0.00024 + 0.00003 + 0.0006
         Decimal("0.00087"), stored={"priced_model": "ft:gpt-4o-mini-2024-07-18:acme::abc123"}),
    Case("long context above 272k tokens (gpt-5.4)", responses, "gpt-5.4",
         {"usage": {"input_tokens": 300000, "input_tokens_details": {"cached_tokens": 100000},
                    "output_tokens": 1000, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 301000}},
         # input_cost_per_token_above_272k_tokens 5e-06 x 200000 + cache_read_input_token_cost_above_272k_tokens
         # 5e-07 x 100000 + output_cost_per_token_above_272k_tokens 2.25e-05 x 1000 = 1.0 + 0.05 + 0.0225
         Decimal("1.0725"), streams=(False,)),
    Case("cache writes where billed (gpt-5.6)", responses, "gpt-5.6",
         {"usage": {"input_tokens": 10000, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 4000},
                    "output_tokens": 100, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 10100}},
         # input_cost_per_token 4e-06 x 6000 + cache_creation_input_token_cost 5e-06 x 4000
         # + output_cost_per_token 2e-05 x 100 = 0.024 + 0.02 + 0.002
         Decimal("0.046"), streams=(False,), stored={"cache_write_tokens": 4000}),
    Case("cache writes with 24h retention (gpt-5.6)", responses, "gpt-5.6",
         {"prompt_cache_retention": "24h",
          "usage": {"input_tokens": 10000, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 4000},
                    "output_tokens": 100, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 10100}},
         # input_cost_per_token 4e-06 x 6000 + cache_creation_input_token_cost_above_12hr 1e-05 x 4000
         # + output_cost_per_token 2e-05 x 100 = 0.024 + 0.04 + 0.002
         Decimal("0.066"), stored={"cache_retention": "24h"}),
    Case("audio input tokens of a transcription (gpt-4o-mini-transcribe)", transcription,
         "gpt-4o-mini-transcribe",
         {"usage": {"type": "tokens", "input_tokens": 100, "input_token_details": {"text_tokens": 20, "audio_tokens": 80},
                    "output_tokens": 50, "total_tokens": 150}},
         # input_cost_per_token 1.25e-06 x 20 + input_cost_per_audio_token 1.25e-06 x 80
         # + output_cost_per_token 5e-06 x 50 = 0.000025 + 0.0001 + 0.00025
         Decimal("0.000375"), streams=(False,), stored={"audio_input_tokens": 80}),
    Case("dall-e-3: the shipped map has no per-image price, unpriced", images, "dall-e-3", {}, None,
         streams=(False,), extra={"size": "1024x1792", "quality": "hd", "n": 1},
         stored={"images": 1, "image_variant": "hd/1024-x-1792"}),
]


def test_every_dimension_is_priced_by_its_own_rate(sdk, upstream):
    failures = []
    done = 0
    for case in CASES:
        for stream in case.streams:
            upstream.scenario = case.scenario
            case.call(sdk, case.model, stream, **case.extra)
            done += 1
            row = finished_calls(done)[-1]
            label = f"{case.name} ({'streamed' if stream else 'not streamed'})"
            if row.cost != case.cost:
                failures.append(f"{label}: cost {row.cost}, expected {case.cost}")
            expected_billing = Billing.PRICED if case.cost is not None else Billing.UNPRICED
            if row.billing != expected_billing or row.unpriced != (case.cost is None):
                failures.append(f"{label}: billing {row.billing}")
            for name, value in case.stored.items():
                if getattr(row, name) != value:
                    failures.append(f"{label}: {name} = {getattr(row, name)!r}, expected {value!r}")
    assert not failures, "\n".join(failures)


def test_dall_e_is_priced_per_image_by_size_and_quality_once_a_price_exists(sdk, upstream):
    # OpenAI's list price, entered by an admin under the price map's own key names.
    ModelPrice.objects.create(model="dall-e-3", effective_from=datetime(2024, 1, 1, tzinfo=dt_timezone.utc),
                              rates={"input_cost_per_image/hd/1024-x-1792": "0.12",
                                     "input_cost_per_image/standard/1024-x-1024": "0.04"})
    sdk.images.generate(model="dall-e-3", prompt="a cat", size="1024x1792", quality="hd", n=2)
    sdk.images.generate(model="dall-e-3", prompt="a cat")  # defaults: standard, 1024x1024
    hd, standard = finished_calls(2)
    assert (hd.cost, hd.images, hd.image_variant) == (Decimal("0.24"), 2, "hd/1024-x-1792")  # 2 x 0.12
    assert (standard.cost, standard.image_variant) == (Decimal("0.04"), "1024-x-1024")  # 1 x 0.04
