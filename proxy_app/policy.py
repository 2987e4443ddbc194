"""What the relay refuses before anything goes upstream, whoever asks: blocked paths,
body types, and the content of personal (`user_data`) files. (The rules that depend on the caller live with what they guard:
access.py for scopes, budgets and rate limits; the relay view lists them all.)"""
from __future__ import annotations

import re

import requests
from django.conf import settings
from rest_framework.permissions import BasePermission

from audit_app import budgets, file_records, operations
from audit_app.models import FileOrigin, FileRecord
from audit_app.recorder import CallContext
from relay_project.lib import upstream

from .errors import BodyTooLarge, PolicyDenied, RelayError, UnsupportedMediaType, UpstreamUnreachable
from .paths import ApiPath, family_hint, model_field

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
        check_path(view.api_path, view.forwarded.method)
        return True


def _reading(path: str, method: str) -> tuple:
    """Everything the relay's rules read from a path: its family, what the operation
    costs, whether it names a model, whether a budget reserves for it."""
    return (family_hint(path), operations.kind_of(method, path), model_field(path, method),
            path in budgets.GENERATING_PATHS)


def check_path(api_path: ApiPath, method: str = "GET") -> None:
    path = api_path.path
    for prefix in settings.RELAY_BLOCKED_PATH_PREFIXES:
        if api_path.starts_with(prefix):
            raise PolicyDenied(
                f"The relay's policy blocks {prefix} (rule: RELAY_BLOCKED_PATH_PREFIXES).",
                code="blocked_path",
            )
    if path != (lowered := path.lower()) and _reading(path, method) != _reading(lowered, method):
        # `/v1/Chat/completions`: OpenAI's endpoints are lower case (ids need not be). Whether
        # upstream reads another spelling as the endpoint is not the relay's to guess, and
        # every rule keyed on the endpoint (scopes, budgets, billing) would pass it by.
        raise RelayError(f"Invalid URL ({method} {path}): OpenAI's endpoint names are lower case.",
                         code="unknown_url", status=404)


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


# --- the user_data rule -----------------------------------------------------------

_CONTENT = re.compile(r"^/v1/files/([A-Za-z0-9_.:-]+)/content$")


def purpose_of(file_id: str) -> str | None:
    """From the relay's record, or for a file it never saw, from upstream's metadata.

    None when upstream does not know the file (its content request will 404 too).
    When upstream cannot be asked, the relay refuses rather than guess: the rule
    protects personal files, so it fails closed.
    """
    known = FileRecord.objects.filter(file_id=file_id).values_list("purpose", flat=True).first()
    if known:
        return known
    try:
        resp = upstream.get(f"/files/{file_id}")
    except requests.RequestException:
        raise PurposeUnknown() from None
    if resp.status_code in (400, 404):
        return None
    try:
        obj = resp.json() if resp.status_code == 200 else None
    except ValueError:
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("purpose"), str):
        raise PurposeUnknown()
    file_records.record_file(obj, origin=FileOrigin.UPSTREAM_ONLY)
    return obj["purpose"]


class PurposeUnknown(UpstreamUnreachable):
    default_code = "file_purpose_unknown"
    default_detail = ("The relay could not look up this file's purpose upstream, so it cannot tell "
                      "whether its content may be downloaded. Try again later.")


class NoUserDataFiles(BasePermission):
    """The content of a file with purpose `user_data` (personal files) is never downloaded
    through the relay (403); when its purpose cannot be looked up, refused too (502)."""

    def has_permission(self, request, view) -> bool:
        refuse_user_data_content(view.api_path, view.forwarded.method, view.ctx)
        return True


def refuse_user_data_content(api_path: ApiPath, method: str, ctx: CallContext) -> None:
    match = _CONTENT.match(api_path.path)
    if method == "GET" and match and purpose_of(match.group(1)) == "user_data":
        raise PolicyDenied(
            "The content of files with purpose 'user_data' cannot be downloaded through the relay.",
            code="user_data_content",
        )
