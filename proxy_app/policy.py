"""What the relay refuses before anything goes upstream, whoever asks: blocked paths
and body types. (The rules that depend on the caller live with what they guard:
access.py for scopes, budgets and rate limits; the relay view lists them all.)"""
from __future__ import annotations

from django.conf import settings
from rest_framework.permissions import BasePermission

from .errors import BodyTooLarge, PolicyDenied, UnsupportedMediaType
from .paths import ApiPath

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


class PathAllowed(BasePermission):
    """The call's path, inside the /v1/proxy envelope if it came in one, is valid (400)
    and outside RELAY_BLOCKED_PATH_PREFIXES (403).

    Reading `view.api_path` is what opens the envelope and parses the path
    (RelayView.forwarded, RelayView.api_path), once, after authentication.
    """

    def has_permission(self, request, view) -> bool:
        check_path(view.api_path)
        return True


def check_path(api_path: ApiPath) -> None:
    for prefix in settings.RELAY_BLOCKED_PATH_PREFIXES:
        if api_path.starts_with(prefix):
            raise PolicyDenied(
                f"The relay's policy blocks {prefix} (rule: RELAY_BLOCKED_PATH_PREFIXES).",
                code="blocked_path",
            )


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
