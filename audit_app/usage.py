"""Usage as OpenAI reports it, in every shape, reduced to one record."""
from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any


@dataclass
class Usage:
    """None means "not reported"; the audit keeps that distinct from 0."""

    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    output_tokens: int | None = None  # reasoning tokens are part of these
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    # Priced at the image-input rate where a model has one (gpt-image edits).
    image_input_tokens: int | None = None
    images: int | None = None
    audio_seconds: Decimal | None = None
    characters: int | None = None
    # Seconds of generated video (video jobs), priced per second; kept on AsyncJob.
    video_seconds: Decimal | None = None

    # Stored on ApiCall; image_input_tokens only feeds the cost, video_seconds lives on AsyncJob.
    STORED = (
        "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens",
        "images", "audio_seconds", "characters",
    )

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def as_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STORED}

    def merge(self, other: "Usage | None") -> "Usage":
        """Fill what this record lacks from another (for example characters from the request)."""
        if other is not None:
            for f in fields(self):
                if getattr(self, f.name) is None:
                    setattr(self, f.name, getattr(other, f.name))
        return self

    @classmethod
    def from_api(cls, usage: Any) -> "Usage | None":
        """From a `usage` object of any endpoint: Responses, chat, completions,
        embeddings, images, transcriptions (tokens or duration)."""
        if not isinstance(usage, dict):
            return None
        out = cls()
        if usage.get("type") == "duration" and _num(usage.get("seconds")) is not None:
            out.audio_seconds = Decimal(str(usage["seconds"])).quantize(Decimal("0.001"))
            return out
        out.input_tokens = _int(usage.get("input_tokens", usage.get("prompt_tokens")))
        out.output_tokens = _int(usage.get("output_tokens", usage.get("completion_tokens")))
        in_details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
        out_details = usage.get("output_tokens_details") or usage.get("completion_tokens_details") or {}
        if isinstance(in_details, dict):
            out.cached_input_tokens = _int(in_details.get("cached_tokens"))
            out.image_input_tokens = _int(in_details.get("image_tokens"))
        if isinstance(out_details, dict):
            out.reasoning_tokens = _int(out_details.get("reasoning_tokens"))
        out.total_tokens = _int(usage.get("total_tokens"))
        if out.total_tokens is None and out.input_tokens is not None:
            out.total_tokens = out.input_tokens + (out.output_tokens or 0)
        if out.input_tokens is not None and out.output_tokens is None and "total_tokens" in usage:
            # Embeddings report prompt and total only: nothing was generated.
            out.output_tokens = 0
        return None if out.is_empty else out


def _num(value: Any) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    v = _num(value)
    return int(v) if v is not None else None
