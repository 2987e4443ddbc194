"""Errors the relay itself produces, always in OpenAI's shape.

`{"error": {"message", "type", "param", "code"}}` is what every OpenAI SDK
knows how to surface, so a relay error reads like an API error to staff tools.
"""
from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError
from django.http import JsonResponse
from rest_framework import exceptions
from rest_framework.negotiation import BaseContentNegotiation

log = logging.getLogger(__name__)


class RelayError(exceptions.APIException):
    """An error answered by the relay, never forwarded upstream."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = None
    default_detail = "Bad request."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.default_detail)
        self.message = message or self.default_detail
        self.code = code if code is not None else self.default_code
        self.param = param
        self.headers = headers or {}
        if status is not None:
            self.status_code = status


class PolicyDenied(RelayError):
    status_code = 403
    default_code = "blocked_by_relay_policy"


class BodyTooLarge(RelayError):
    status_code = 413
    default_code = "request_too_large"


class UnsupportedMediaType(RelayError):
    status_code = 415
    default_code = "unsupported_media_type"


class UpstreamUnreachable(RelayError):
    status_code = 502
    error_type = "server_error"
    default_code = "upstream_unreachable"
    default_detail = "The relay could not reach the OpenAI API."


class UpstreamTimeout(RelayError):
    status_code = 504
    error_type = "server_error"
    default_code = "upstream_timeout"
    default_detail = "The OpenAI API did not answer in time."


class AuditUnavailable(RelayError):
    status_code = 503
    error_type = "server_error"
    default_code = "audit_unavailable"
    default_detail = (
        "The relay's audit database is unavailable, so the request was not forwarded. "
        "Try again shortly."
    )


# DRF's own exceptions, mapped to OpenAI's types and codes.
_DRF_TYPES: dict[type[exceptions.APIException], tuple[str, str | None]] = {
    exceptions.NotAuthenticated: ("invalid_request_error", "missing_api_key"),
    exceptions.AuthenticationFailed: ("invalid_request_error", "invalid_api_key"),
    exceptions.PermissionDenied: ("invalid_request_error", "permission_denied"),
    exceptions.NotFound: ("invalid_request_error", "unknown_url"),
    exceptions.MethodNotAllowed: ("invalid_request_error", "method_not_allowed"),
    exceptions.ParseError: ("invalid_request_error", "invalid_body"),
    exceptions.UnsupportedMediaType: ("invalid_request_error", "unsupported_media_type"),
    exceptions.Throttled: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, **fields: Any) -> JsonResponse:
    return JsonResponse(error_body(message, **fields), status=status)


def describe(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, OpenAI-shaped body and extra headers for any exception."""
    if isinstance(exc, RelayError):
        body = error_body(exc.message, type=exc.error_type, param=exc.param, code=exc.code)
        return exc.status_code, body, dict(exc.headers)
    if isinstance(exc, exceptions.APIException):
        etype, code = next(
            (v for k, v in _DRF_TYPES.items() if isinstance(exc, k)),
            ("invalid_request_error", None),
        )
        headers: dict[str, str] = {}
        wait = getattr(exc, "wait", None)
        if wait is not None:
            headers["Retry-After"] = str(int(wait) + 1)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return exc.status_code, error_body(str(detail), type=etype, code=code), headers
    if isinstance(exc, DatabaseError):
        return describe(AuditUnavailable())
    log.exception("Unhandled error in the relay", exc_info=exc)
    return 500, error_body("The relay failed to handle this request.", type="server_error",
                           code="relay_error"), {}


def render_exception(exc: Exception) -> JsonResponse:
    status, body, headers = describe(exc)
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="team-relay"')
    response = JsonResponse(body, status=status)
    response.relay_error = body["error"]["message"]  # type: ignore[attr-defined]
    for name, value in headers.items():
        response[name] = value
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> JsonResponse:
    """DRF's EXCEPTION_HANDLER: every error, including unexpected ones, in OpenAI's shape."""
    return render_exception(exc)


class FirstRendererNegotiation(BaseContentNegotiation):
    """The relay answers whatever the client accepts (SSE, audio, JSON): never 406."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
