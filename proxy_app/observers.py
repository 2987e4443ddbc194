"""Small observers plugged into the forwarding pipeline.

An observer sees the request body and the response as they stream past and
contributes fields to the audit row at the end. What is special about an
endpoint family lives here, not in a view of its own.
"""
from __future__ import annotations

import json
from typing import Any

from .paths import ApiPath
from .policy import media_type
from .sniff import JsonFieldSniffer, MultipartFieldSniffer, boundary_of

_REQUEST_FIELDS = frozenset({"model", "stream"})


class Observer:
    def on_request_chunk(self, chunk: bytes) -> None:
        pass

    def on_response_start(self, status: int, headers: Any) -> None:
        pass

    def on_response_chunk(self, chunk: bytes) -> None:
        pass

    def audit_fields(self) -> dict[str, Any]:
        return {}


class RequestFields(Observer):
    """`model` and `stream` from a JSON body or multipart form fields."""

    def __init__(self, content_type: str) -> None:
        kind = media_type(content_type)
        boundary = boundary_of(content_type) if kind == "multipart/form-data" else None
        self.sniffer: JsonFieldSniffer | MultipartFieldSniffer | None
        if kind == "application/json":
            self.sniffer = JsonFieldSniffer(_REQUEST_FIELDS)
        elif boundary:
            self.sniffer = MultipartFieldSniffer(boundary, _REQUEST_FIELDS)
        else:
            self.sniffer = None
        self.is_event_stream = False

    def on_request_chunk(self, chunk: bytes) -> None:
        if self.sniffer is not None:
            self.sniffer.feed(chunk)

    def on_response_start(self, status: int, headers: Any) -> None:
        self.is_event_stream = media_type(headers.get("content-type", "")) == "text/event-stream"

    def audit_fields(self) -> dict[str, Any]:
        values = self.sniffer.values if self.sniffer is not None else {}
        model = values.get("model")
        stream = values.get("stream") in (True, "true", "True")
        return {
            "model": model[:128] if isinstance(model, str) else "",
            "stream": stream or self.is_event_stream,
        }


class UpstreamError(Observer):
    """Keeps the head of an upstream error body, for the row's error summary."""

    LIMIT = 4096

    def __init__(self) -> None:
        self.status = 0
        self.head = bytearray()

    def on_response_start(self, status: int, headers: Any) -> None:
        self.status = status

    def on_response_chunk(self, chunk: bytes) -> None:
        if self.status >= 400 and len(self.head) < self.LIMIT:
            self.head += chunk[: self.LIMIT - len(self.head)]

    def audit_fields(self) -> dict[str, Any]:
        if self.status < 400:
            return {}
        try:
            message = json.loads(bytes(self.head))["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = bytes(self.head[:200]).decode("utf-8", "replace")
        return {"error": f"upstream {self.status}: {message}"}


def observers_for(api_path: ApiPath, content_type: str) -> list[Observer]:
    return [RequestFields(content_type), UpstreamError()]
