"""UsageDaily equals the sum of the raw calls, on a generated mixed workload through the relay.

A seeded generator picks ~40 calls of every kind the relay meets; each row is first
checked against its hand-computed usage and cost, then the rollups are checked
against the rows, bucket by bucket (date, user, key, model, family).

The fake upstream's usage is fixed: Responses and chat report 12 input tokens (4
cached) and 7 output tokens as JSON, 3 + 2 = 5 when streamed; embeddings 3 tokens
per input; images 50 in / 4160 out per image; transcriptions 42 s.
"""
from __future__ import annotations

import json
import random
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import requests
from django.utils import timezone

from tests.conftest import settle
from audit_app.models import ApiCall, Outcome, UsageDaily

JSON_TOKENS = (12, 4, 7, 0, 19)  # input, cached, output, reasoning, total
STREAMED_TOKENS = (12, 4, 5, 0, 17)
# USD, from the shipped prices per 1M: (12 - 4) x input + 4 x cached + output x out.
JSON_COST = {
    "gpt-4o": Decimal("0.000095"),        # 8 x 2.50 + 4 x 1.25 + 7 x 10.00 = 20 + 5 + 70
    "gpt-4o-mini": Decimal("0.0000057"),  # 8 x 0.15 + 4 x 0.075 + 7 x 0.60 = 1.2 + 0.3 + 4.2
    "o3": Decimal("0.000074"),            # 8 x 2.00 + 4 x 0.50 + 7 x 8.00 = 16 + 2 + 56
}
STREAMED_COST = {
    "gpt-4o": Decimal("0.000075"),        # 20 + 5 + 5 x 10.00
    "gpt-4o-mini": Decimal("0.0000045"),  # 1.2 + 0.3 + 5 x 0.60
    "o3": Decimal("0.000058"),            # 16 + 2 + 5 x 8.00
}
EMBEDDING_COST = Decimal("0.00000006")  # per input: 3 tokens x 0.02 per 1M (text-embedding-3-small)
IMAGE_COST = Decimal("0.16665")         # per image: 50 x 5.00 + 4160 x 40.00 per 1M (gpt-image-1)
TRANSCRIPTION_COST = Decimal("0.0042")  # 42 s x 0.0001 (whisper-1)
SPOKEN = "Grüße aus Zürich!"
SPEECH_COST = Decimal("0.000255")       # 17 characters x 0.000015 (tts-1)
MODELS = tuple(JSON_COST)
PLACES = Decimal("1e-10")  # the cost columns' scale; SQLite sums them as floats
COUNTERS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens",
            "images", "audio_seconds", "characters", "cost")


@dataclass(frozen=True)
class Expected:
    outcome: str
    model: str
    tokens: tuple | None = None
    cost: Decimal | None = None
    unpriced: bool = False
    images: int | None = None
    audio_seconds: Decimal | None = None
    characters: int | None = None


class Workload:
    """Makes one call of a kind with a key and says what its row must hold."""

    def __init__(self, relay_url: str, upstream, rng: random.Random) -> None:
        self.url, self.upstream, self.rng = relay_url, upstream, rng

    def _post(self, key: str, path: str, headers: dict | None = None, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}{path}", headers={"Authorization": f"Bearer {key}", **(headers or {})},
                             timeout=30, **kwargs)

    def responses_json(self, key: str) -> tuple[requests.Response, Expected]:
        model = self.rng.choice(MODELS)
        r = self._post(key, "/v1/responses", json={"model": model, "input": "hi"})
        return r, Expected(Outcome.OK, model, JSON_TOKENS, JSON_COST[model])

    def responses_stream(self, key: str) -> tuple[requests.Response, Expected]:
        model = self.rng.choice(MODELS)
        r = self._post(key, "/v1/responses", json={"model": model, "input": "hi", "stream": True})
        assert "event: response.completed" in r.text
        return r, Expected(Outcome.OK, model, STREAMED_TOKENS, STREAMED_COST[model])

    def chat_json(self, key: str) -> tuple[requests.Response, Expected]:
        model = self.rng.choice(MODELS)
        r = self._post(key, "/v1/chat/completions", json={"model": model, "messages": []})
        return r, Expected(Outcome.OK, model, JSON_TOKENS, JSON_COST[model])

    def _chat_stream(self, key: str, include_usage: bool | None) -> tuple[requests.Response, Expected]:
        model = self.rng.choice(MODELS)
        body = {"model": model, "messages": [], "stream": True}
        if include_usage is not None:
            body["stream_options"] = {"include_usage": include_usage}
        r = self._post(key, "/v1/chat/completions", json=body)
        assert (b'"usage": {' in r.content) is bool(include_usage)
        return r, Expected(Outcome.OK, model, STREAMED_TOKENS, STREAMED_COST[model])

    def chat_stream_with_usage(self, key: str):
        return self._chat_stream(key, True)

    def chat_stream_without_usage(self, key: str):
        return self._chat_stream(key, self.rng.choice([None, False]))

    def embeddings(self, key: str):
        k = self.rng.randint(1, 3)
        r = self._post(key, "/v1/embeddings", json={"model": "text-embedding-3-small", "input": ["a"] * k})
        return r, Expected(Outcome.OK, "text-embedding-3-small", (3 * k, None, 0, None, 3 * k), EMBEDDING_COST * k)

    def images(self, key: str):
        n = self.rng.randint(1, 2)
        r = self._post(key, "/v1/images/generations", json={"model": "gpt-image-1", "prompt": "a cat", "n": n})
        return r, Expected(Outcome.OK, "gpt-image-1", (50 * n, None, 4160 * n, None, 4210 * n), IMAGE_COST * n,
                           images=n)

    def transcription(self, key: str):
        r = self._post(key, "/v1/audio/transcriptions", data={"model": "whisper-1"},
                       files={"file": ("a.wav", b"RIFF" + b"\0" * 60, "audio/wav")})
        return r, Expected(Outcome.OK, "whisper-1", cost=TRANSCRIPTION_COST, audio_seconds=Decimal(42))

    def speech(self, key: str):
        r = self._post(key, "/v1/audio/speech", json={"model": "tts-1", "input": SPOKEN, "voice": "alloy"})
        return r, Expected(Outcome.OK, "tts-1", cost=SPEECH_COST, characters=17)

    def unknown_model(self, key: str):
        r = self._post(key, "/v1/responses", json={"model": "mystery-model", "input": "hi"})
        return r, Expected(Outcome.OK, "mystery-model", JSON_TOKENS, None, unpriced=True)

    def upstream_error(self, key: str):
        self.upstream.inject("/v1/chat/completions", status=400, body={"error": {
            "message": "Unsupported parameter.", "type": "invalid_request_error", "param": None, "code": None}})
        r = self._post(key, "/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
        assert r.status_code == 400
        return r, Expected(Outcome.UPSTREAM_ERROR, "gpt-4o")

    def models(self, key: str):
        r = requests.get(f"{self.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        return r, Expected(Outcome.OK, "")

    def client_closes_early(self, key: str):
        """Reads the head of a stream that would take a second, then hangs up."""
        self.upstream.sse_event_count, self.upstream.sse_delay_between = 20, 0.05
        host, port = self.url.removeprefix("http://").split(":")
        body = json.dumps({"model": "gpt-4o-mini", "input": "x", "stream": True}).encode()
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                         + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            received = b""
            while b"data:" not in received:
                received += sock.recv(65536)
        head = received.split(b"\r\n\r\n", 1)[0].decode()
        request_id = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                          if line.lower().startswith("x-relay-request-id:"))
        # Upstream keeps its pace until the relay has seen the client go.
        deadline = time.monotonic() + 10
        while ApiCall.objects.filter(relay_request_id=request_id, outcome=Outcome.PENDING).exists() \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        self.upstream.sse_event_count, self.upstream.sse_delay_between = 3, 0.0
        return {"x-relay-request-id": request_id}, Expected(Outcome.CLIENT_CLOSED, "gpt-4o-mini")

    def invalid_json(self, key: str):
        r = self._post(key, "/v1/chat/completions", data=b'{"model": "gpt-4o", ',
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        return r, Expected(Outcome.REJECTED, "")

    def blocked_path(self, key: str):
        r = self._post(key, "/v1/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": "file-x"})
        assert r.status_code == 403
        return r, Expected(Outcome.REJECTED, "")


KINDS = ("responses_json", "responses_stream", "chat_json", "chat_stream_with_usage", "chat_stream_without_usage",
         "embeddings", "images", "transcription", "speech", "unknown_model", "upstream_error", "models",
         "client_closes_early", "invalid_json", "blocked_path")


def run_workload(relay_url: str, upstream, keys: list[str], calls: int, seed: int) -> dict[str, Expected]:
    rng = random.Random(seed)
    plan = list(KINDS) + rng.choices(KINDS, k=calls - len(KINDS))  # every kind at least once
    rng.shuffle(plan)
    workload = Workload(relay_url, upstream, rng)
    expected: dict[str, Expected] = {}
    for kind in plan:
        response, exp = getattr(workload, kind)(rng.choice(keys))
        headers = response if isinstance(response, dict) else response.headers
        expected[headers["x-relay-request-id"]] = exp
    return expected


def bucket_of(call: ApiCall) -> tuple:
    return (timezone.localtime(call.started_at).date(), call.user_id, call.key_id, call.model, call.family)


def raw_buckets(calls: list[ApiCall]) -> dict[tuple, dict]:
    """The rollups as they must be, summed in Python from the raw rows (exact Decimals)."""
    buckets: dict[tuple, dict] = defaultdict(lambda: dict.fromkeys(("calls", "unpriced_calls", *COUNTERS), 0))
    for call in calls:
        bucket = buckets[bucket_of(call)]
        bucket["calls"] += 1
        bucket["unpriced_calls"] += int(call.unpriced)
        for name in COUNTERS:
            bucket[name] += getattr(call, name) or 0
    return {key: _exact(b) for key, b in buckets.items()}


def rollup_buckets() -> dict[tuple, dict]:
    return {
        (d.date, d.user_id, d.key_id, d.model, d.family):
            _exact({name: getattr(d, name) for name in ("calls", "unpriced_calls", *COUNTERS)})
        for d in UsageDaily.objects.all()
    }


def _exact(bucket: dict) -> dict:
    return {**bucket, "cost": Decimal(bucket["cost"]).quantize(PLACES),
            "audio_seconds": Decimal(bucket["audio_seconds"]).quantize(Decimal("0.001"))}


def test_rollups_equal_the_sum_of_raw_calls_on_a_generated_workload(relay_url, issue_key, upstream):
    keys = [issue_key("alice")[1], issue_key("alice")[1], issue_key("bob")[1]]
    expected = run_workload(relay_url, upstream, keys, calls=40, seed=20261125)
    requests.get(f"{relay_url}/v1/models", timeout=10)  # no key: nobody's usage, in no rollup
    settle()

    calls = {c.relay_request_id: c for c in ApiCall.objects.all()}
    assert len(calls) == len(expected) + 1
    for request_id, exp in expected.items():
        row = calls[request_id]
        got = Expected(row.outcome, row.model, None if row.total_tokens is None else (
            row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens, row.total_tokens),
            row.cost, row.unpriced, row.images, row.audio_seconds, row.characters)
        assert got == exp, request_id
        assert row.key_id is not None
    assert sum(e.unpriced for e in expected.values()) >= 1 and sum(e.cost or 0 for e in expected.values()) > 0

    keyed = [c for c in calls.values() if c.key_id is not None]
    # Every finished call with a key is in the rollups: rejected and failed ones too.
    assert {c.outcome for c in keyed} >= {Outcome.REJECTED, Outcome.UPSTREAM_ERROR, Outcome.CLIENT_CLOSED}
    assert rollup_buckets() == raw_buckets(keyed)
    assert sum(d.calls for d in UsageDaily.objects.all()) == len(expected)
