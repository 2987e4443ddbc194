"""What the relay refuses before anything goes upstream."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings

from .errors import BodyTooLarge, PolicyDenied, UnsupportedMediaType
from .paths import ApiPath

if TYPE_CHECKING:
    from audit_app.recorder import CallContext

# Body types the OpenAI API takes; anything else is a client mistake or a probe.
ALLOWED_BODY_TYPES = frozenset(
    {
        "application/json",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        # A WebRTC offer to POST /v1/realtime/calls.
        "application/sdp",
    }
)


def check_path(api_path: ApiPath) -> None:
    for prefix in settings.RELAY_BLOCKED_PATH_PREFIXES:
        if api_path.starts_with(prefix):
            raise PolicyDenied(
                f"The relay's policy blocks {prefix} (rule: RELAY_BLOCKED_PATH_PREFIXES).",
                code="blocked_path",
            )


# Rules that need the caller or the database (scopes, file access): each takes
# the path, the method and the call's context and raises a RelayError to refuse.
RequestRule = Callable[[ApiPath, str, "CallContext"], None]
REQUEST_RULES: list[RequestRule] = []


def check_request(api_path: ApiPath, method: str, ctx: "CallContext") -> None:
    for rule in REQUEST_RULES:
        rule(api_path, method, ctx)


def check_body(content_type: str, content_length: int | None, chunked: bool) -> None:
    limit = settings.RELAY_MAX_BODY_BYTES
    if content_length is not None and content_length > limit:
        raise BodyTooLarge(
            f"The request body is {content_length} bytes; the relay accepts at most {limit}."
        )
    if (content_length or chunked) and media_type(content_type) not in ALLOWED_BODY_TYPES:
        raise UnsupportedMediaType(
            f"Content type {media_type(content_type) or '(none)'!r} is not accepted; "
            f"use one of {', '.join(sorted(ALLOWED_BODY_TYPES))}."
        )


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()
