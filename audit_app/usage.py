"""Usage as OpenAI reports it, in every shape, reduced to one record.

Every dimension OpenAI bills separately has a field of its own, stored on the
call (and on a batch result), so that pricing is a function of the stored row
alone: live calls, batch results, the poller and `reprice` all price the same
record the same way (audit_app.pricing.cost_of).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

# Output items of a Response that OpenAI bills per call (tool fees), and the Usage
# field that counts each. Code interpreter is billed per container session: counted
# as distinct container ids.
TOOL_ITEMS = {
    "web_search_call": "web_search_calls",
    "file_search_call": "file_search_calls",
    "image_generation_call": "image_generation_calls",
}
CONTAINER_ITEM = "code_interpreter_call"


@dataclass
class Usage:
    """None means "not reported"; the audit keeps that distinct from 0.

    Token fields are totals of their kind: `input_tokens` counts every input token,
    `cached_input_tokens` every cached one (of any modality), `audio_input_tokens`
    every audio input token (cached or not); `cached_audio_input_tokens` is the
    cached part of those. Text tokens are what remains. Output likewise.
    """

    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    output_tokens: int | None = None  # reasoning tokens are part of these
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    # Input tokens written to the prompt cache (billed at a write rate by some models).
    cache_write_tokens: int | None = None
    # The response's `prompt_cache_retention`: "24h" writes bill at the map's `_above_12hr` rate.
    cache_retention: str | None = None
    audio_input_tokens: int | None = None
    cached_audio_input_tokens: int | None = None
    image_input_tokens: int | None = None
    cached_image_input_tokens: int | None = None
    audio_output_tokens: int | None = None
    image_output_tokens: int | None = None
    # The tier upstream says served the call (the response's `service_tier`).
    service_tier: str | None = None
    images: int | None = None
    # "hd/1024-x-1792", "1024-x-1024": what per-image prices (dall-e) are keyed by.
    image_variant: str | None = None
    audio_seconds: Decimal | None = None
    characters: int | None = None
    # Seconds of generated video (video jobs), priced per second; kept on AsyncJob.
    video_seconds: Decimal | None = None
    web_search_calls: int | None = None
    # "low" | "medium" | "high": web search's per-call fee depends on it.
    search_context_size: str | None = None
    file_search_calls: int | None = None
    code_interpreter_sessions: int | None = None
    image_generation_calls: int | None = None

    # Stored on ApiCall (and BatchResult, which lacks the unit columns); video_seconds lives on AsyncJob.
    STORED = (
        "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens",
        "cache_write_tokens", "cache_retention", "audio_input_tokens", "cached_audio_input_tokens", "image_input_tokens",
        "cached_image_input_tokens", "audio_output_tokens", "image_output_tokens", "service_tier",
        "images", "image_variant", "audio_seconds", "characters", "web_search_calls",
        "search_context_size", "file_search_calls", "code_interpreter_sessions", "image_generation_calls",
    )
    # What describes the usage rather than measures it: alone, it is no usage.
    _QUALIFIERS = ("service_tier", "image_variant", "search_context_size", "cache_retention")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self) if f.name not in self._QUALIFIERS)

    @property
    def has_tokens(self) -> bool:
        return self.input_tokens is not None or self.output_tokens is not None

    def as_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STORED}

    @classmethod
    def from_row(cls, row: Any) -> "Usage":
        """The usage stored on an ApiCall or BatchResult: what every re-pricing reads."""
        return cls(**{name: getattr(row, name, None) for name in cls.STORED})

    def merge(self, other: "Usage | None") -> "Usage":
        """Fill what this record lacks from another (for example characters from the request)."""
        if other is not None:
            for f in fields(self):
                if getattr(self, f.name) is None:
                    setattr(self, f.name, getattr(other, f.name))
        return self

    @classmethod
    def from_api(cls, usage: Any, *, response: Any = None, output: str = "text") -> "Usage | None":
        """From a `usage` object of any endpoint: Responses, chat, completions,
        embeddings, images, speech, transcriptions (tokens or duration).

        `response` is the object the usage came in (its `service_tier`, its output
        items and tools); `output` the modality the endpoint's output tokens are
        when upstream does not break them down: "image" for the Images API (its
        spec: "the number of image tokens in the output image"), "audio" for speech.
        """
        if not isinstance(usage, dict):
            return None
        out = cls()
        if usage.get("type") == "duration" and _num(usage.get("seconds")) is not None:
            out.audio_seconds = Decimal(str(usage["seconds"])).quantize(Decimal("0.001"))
            return out
        out.input_tokens = _int(usage.get("input_tokens", usage.get("prompt_tokens")))
        out.output_tokens = _int(usage.get("output_tokens", usage.get("completion_tokens")))
        in_details = (usage.get("input_tokens_details") or usage.get("prompt_tokens_details")
                      or usage.get("input_token_details") or {})
        out_details = (usage.get("output_tokens_details") or usage.get("completion_tokens_details")
                       or usage.get("output_token_details") or {})
        if isinstance(in_details, dict):
            out.cached_input_tokens = _int(in_details.get("cached_tokens"))
            out.cache_write_tokens = _positive(in_details.get("cache_write_tokens"))
            out.image_input_tokens = _positive(in_details.get("image_tokens"))
            out.audio_input_tokens = _positive(in_details.get("audio_tokens"))
            cached = in_details.get("cached_tokens_details")
            if isinstance(cached, dict):  # the Realtime shape
                out.cached_audio_input_tokens = _positive(cached.get("audio_tokens"))
                out.cached_image_input_tokens = _positive(cached.get("image_tokens"))
        if isinstance(out_details, dict):
            out.reasoning_tokens = _int(out_details.get("reasoning_tokens"))
            out.audio_output_tokens = _positive(out_details.get("audio_tokens"))
            out.image_output_tokens = _positive(out_details.get("image_tokens"))
        broken_down = isinstance(out_details, dict) and any(
            k in out_details for k in ("text_tokens", "audio_tokens", "image_tokens"))
        if out.output_tokens and not broken_down:
            if output == "image":
                out.image_output_tokens = out.output_tokens
            elif output == "audio":
                out.audio_output_tokens = out.output_tokens
        out.total_tokens = _int(usage.get("total_tokens"))
        if out.total_tokens is None and out.input_tokens is not None:
            out.total_tokens = out.input_tokens + (out.output_tokens or 0)
        if out.input_tokens is not None and out.output_tokens is None and "total_tokens" in usage:
            # Embeddings report prompt and total only: nothing was generated.
            out.output_tokens = 0
        if isinstance(response, dict):
            out.add_response(response)
        return None if out.is_empty else out

    def add_response(self, response: dict[str, Any]) -> "Usage":
        """The service tier, tool calls and search context size of a Response (or chat completion)."""
        tier = response.get("service_tier")
        if isinstance(tier, str) and tier:
            self.service_tier = tier[:16]
        retention = response.get("prompt_cache_retention")
        if isinstance(retention, str) and retention:
            self.cache_retention = retention[:16]
        items = response.get("output")
        if isinstance(items, list):
            containers: set[str] = set()
            for item in items:
                if not isinstance(item, dict):
                    continue
                kind = item.get("type")
                if kind in TOOL_ITEMS:
                    name = TOOL_ITEMS[kind]
                    setattr(self, name, (getattr(self, name) or 0) + 1)
                elif kind == CONTAINER_ITEM:
                    containers.add(str(item.get("container_id") or item.get("id")))
            if containers:
                self.code_interpreter_sessions = len(containers)
        tools = response.get("tools")
        if self.web_search_calls and isinstance(tools, list):
            for tool in tools:
                if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search") \
                        and isinstance(tool.get("search_context_size"), str):
                    self.search_context_size = tool["search_context_size"][:8]
        return self


class OutputItemCounter:
    """Tool-call items of a JSON Response, counted as its bytes pass, without keeping them.

    A key `"type"` directly after `{` or `,` can only be JSON structure: inside a
    string its quote would be escaped. The last 256 bytes of each chunk are kept
    for a match split between chunks; a match is counted once, in the feed where it ends.
    """

    _ITEM = re.compile(rb'[{,]\s*"type"\s*:\s*"(web_search_call|file_search_call|image_generation_call|'
                       rb'code_interpreter_call)"')
    _CONTAINER = re.compile(rb'[{,]\s*"container_id"\s*:\s*"([^"\\]{1,128})"')
    _TIER = re.compile(rb'[{,]\s*"service_tier"\s*:\s*"([a-z_]{1,16})"')
    _SIZE = re.compile(rb'[{,]\s*"search_context_size"\s*:\s*"([a-z]{1,8})"')
    _RETENTION = re.compile(rb'[{,]\s*"prompt_cache_retention"\s*:\s*"([a-z0-9_]{1,16})"')
    _KEEP = 128  # longer than any match

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.containers: set[bytes] = set()
        self.tiers: list[bytes] = []
        self.size: bytes | None = None
        self.retention: bytes | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        old = len(self._tail)  # a match ending inside the old tail was counted last time
        for m in self._ITEM.finditer(data):
            if m.end() > old:
                kind = m.group(1).decode()
                self.counts[kind] = self.counts.get(kind, 0) + 1
        for m in self._CONTAINER.finditer(data):
            self.containers.add(m.group(1))
        for m in self._TIER.finditer(data):
            if m.end() > old:
                self.tiers.append(m.group(1))
        for m in self._SIZE.finditer(data):
            self.size = m.group(1)
        for m in self._RETENTION.finditer(data):
            self.retention = m.group(1)
        self._tail = data[-self._KEEP:]

    def apply(self, usage: Usage) -> Usage:
        for kind, name in TOOL_ITEMS.items():
            if self.counts.get(kind):
                setattr(usage, name, self.counts[kind])
        if self.containers:
            usage.code_interpreter_sessions = len(self.containers)
        if self.tiers and usage.service_tier is None:
            # A Response has one top-level service_tier, written after its output.
            usage.service_tier = self.tiers[-1].decode()
        if self.retention is not None and usage.cache_retention is None:
            usage.cache_retention = self.retention.decode()
        if self.size is not None and usage.web_search_calls:
            usage.search_context_size = self.size.decode()
        return usage


def image_variant(size: Any, quality: Any) -> str | None:
    """"hd/1024-x-1792" from a request's size and quality (dall-e's price keys);
    1024x1024 when the request names no size, as the API defaults."""
    size = size if isinstance(size, str) and re.fullmatch(r"\d{2,5}x\d{2,5}", size) else "1024x1024"
    size = size.replace("x", "-x-")
    if isinstance(quality, str) and re.fullmatch(r"[a-z]{1,10}", quality) and quality != "auto":
        return f"{quality}/{size}"
    return size


def _num(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    v = _num(value)
    return int(v) if v is not None else None


def _positive(value: Any) -> int | None:
    """A breakdown count: 0 is kept as "none of this kind" only when it is nonzero elsewhere."""
    v = _int(value)
    return v if v else None
