"""`POST /v1/proxy`: the JSON envelope Custom GPT Actions use to reach any API path.

`{"method": "GET", "path": "/v1/models", "query": {"limit": 5}, "body": {...}}`
becomes an ordinary request that goes through the same pipeline (auth,
policy, scopes, budgets, rate limits, audit) and is recorded as what it
really called. Paths are checked strictly: an envelope is a string a model
wrote, so anything that could point elsewhere is refused.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest

from .inspection import read_exactly
from .errors import PolicyDenied, RelayError

ENVELOPE_PATH = "/v1/proxy"
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH"})
# The relay's own endpoints: never reached through the envelope.
LOCAL_PATHS = ("/v1/proxy", "/v1/health", "/v1/actions")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\?#]|%(?:2e|2f|5c|00|0a|0d|23|3f)", re.IGNORECASE)
# Percent-escaped bytes past ASCII: whether they are UTF-8 is more than the Actions
# schema's pattern can say, so the envelope takes such characters as they are.
_ESCAPED_NON_ASCII = re.compile(r"%[89a-f][0-9a-f]", re.IGNORECASE)


class EnvelopeError(RelayError):
    default_code = "invalid_envelope"


@dataclass(frozen=True)
class InnerCall:
    method: str
    path: str
    query: str
    body: bytes | None


def unwrap(request: HttpRequest) -> InnerCall:
    raw = read_exactly(request, MAX_ENVELOPE_BYTES + 1)
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"The envelope is larger than {MAX_ENVELOPE_BYTES} bytes.", status=413)
    try:
        envelope = json.loads(raw)
    except RecursionError:
        raise EnvelopeError("The envelope is nested too deeply for the relay to read.") from None
    except ValueError:
        raise EnvelopeError("The envelope is not valid JSON.") from None
    if not isinstance(envelope, dict):
        raise EnvelopeError("The envelope must be a JSON object with method, path, query and body.")
    unknown = set(envelope) - {"method", "path", "query", "body"}
    if unknown:
        raise EnvelopeError(f"Unknown envelope fields: {', '.join(sorted(unknown))}.", param=sorted(unknown)[0])
    method = envelope.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise EnvelopeError(f"method must be one of {', '.join(sorted(METHODS))}.", param="method")
    path = check_path(envelope.get("path"))
    body = envelope.get("body")
    if isinstance(body, dict) and body.get("stream"):
        raise EnvelopeError("Streaming is not available through /v1/proxy; call the endpoint directly.",
                            param="body")
    if body is not None and not isinstance(body, dict):
        raise EnvelopeError("body must be a JSON object.", param="body")
    return InnerCall(method.upper(), path, encode_query(envelope.get("query")),
                     json.dumps(body).encode() if body is not None else None)


def check_path(path: Any) -> str:
    """A relative OpenAI API path under /v1, and nothing that could mean anything else."""
    if not isinstance(path, str) or not path:
        raise EnvelopeError("path must be a string such as /v1/models.", param="path")
    if "://" in path or path.startswith("//") or re.match(r"^[a-z][a-z0-9+.-]*:", path, re.IGNORECASE):
        raise EnvelopeError("path must be relative: no scheme or host.", param="path")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
        raise EnvelopeError("path must be valid Unicode text.", param="path") from None
    if _FORBIDDEN.search(path):
        raise EnvelopeError("path may not contain backslashes, control characters, '?', '#' or "
                            "encoded separators; put query parameters in 'query'.", param="path")
    if _ESCAPED_NON_ASCII.search(path):
        raise EnvelopeError("path may not percent-encode non-ASCII bytes; write such characters as they are.",
                            param="path")
    try:
        path.encode("utf-8")  # a lone surrogate ("\ud800") cannot be a path
        decoded = unquote(path, errors="strict")  # nor can bytes that are not UTF-8 (%FF)
    except UnicodeError:
        raise EnvelopeError("path must be valid UTF-8, also once percent-decoded.", param="path") from None
    if ".." in decoded.split("/") or "." in decoded.split("/"):
        raise EnvelopeError("path may not contain dot segments.", param="path")
    if not path.startswith("/v1/"):
        raise EnvelopeError("path must start with /v1/.", param="path")
    # Decoded and case-folded: /v1/%70roxy or /v1/Proxy must not reach the relay's own endpoints.
    local = decoded.lower().rstrip("/")
    if any(local == p.lower() or local.startswith(p.lower() + "/") for p in LOCAL_PATHS):
        raise PolicyDenied("The relay's own endpoints cannot be called through /v1/proxy.", code="invalid_envelope")
    return decoded


def encode_query(query: Any) -> str:
    if query in (None, "", {}):
        return ""
    if not isinstance(query, dict):
        raise EnvelopeError("query must be an object of parameter names to values.", param="query")
    pairs: list[tuple[str, str]] = []
    for name, value in query.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (dict, list)):
                raise EnvelopeError(f"query parameter {name!r} must be a string, number or list of them.",
                                    param="query")
            pairs.append((name, "true" if v is True else "false" if v is False else str(v)))
    return urlencode(pairs)


def inner_request(outer: HttpRequest, call: InnerCall) -> WSGIRequest:
    """The envelope's call as a request of its own, with the outer one's headers."""
    environ = {k: v for k, v in outer.META.items()
               if k not in ("CONTENT_LENGTH", "CONTENT_TYPE", "RAW_URI", "REQUEST_URI")}
    body = call.body or b""
    environ.update({
        "REQUEST_METHOD": call.method,
        # WSGI carries the path as UTF-8 bytes in a latin-1 str, which Django decodes
        # back: a non-ASCII path put in as it is gave a 500, or another path.
        "PATH_INFO": call.path.encode("utf-8", "surrogatepass").decode("latin-1"),
        "QUERY_STRING": call.query,
        "wsgi.input": io.BytesIO(body),
        "HTTP_ACCEPT": "application/json",
    })
    if call.body is not None:
        environ["CONTENT_TYPE"] = "application/json"
        environ["CONTENT_LENGTH"] = str(len(body))
    return WSGIRequest(environ)
