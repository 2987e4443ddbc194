"""Which headers cross the relay, in each direction.

Allowlists, not blocklists: a header nobody thought about (a cookie, a proxy's
auth, an upstream debug header) stays on its side. Every header name OpenAI's
spec or docs use is either allowed here or named in a WITHHELD table with the
reason (tests/test_header_allowlists.py walks the vendored list of names, so a
new one is a conscious decision). docs/fidelity.md has the full table.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.conf import settings

from relay_project.lib.upstream import upstream_credentials

# Client -> upstream. Authorization, X-Relay-Key and Cookie are deliberately absent.
REQUEST_ALLOWED = frozenset(
    {
        "accept",
        "content-type",
        "openai-beta",
        "idempotency-key",
        "user-agent",
        "x-request-id",
        "x-client-request-id",
        # W3C trace context: a staff tool's trace continues upstream.
        "traceparent",
        "tracestate",
        # Ranged and conditional reads (a resumed video or file download).
        # Forwarded on GET and HEAD only: see READ_ONLY.
        "range",
        "if-range",
        "if-none-match",
        "if-modified-since",
    }
)
REQUEST_ALLOWED_PREFIXES = ("x-stainless-",)

# Headers that may make upstream answer with part of a body (206) or none (304).
# RFC 9110 defines them for GET and HEAD (a server ignores Range and
# If-Modified-Since on other methods), and only reads are free: a generating
# call's response must arrive whole, because its usage is read from it. So on
# any other method the relay drops them rather than let upstream decide.
READ_ONLY = frozenset({"range", "if-range", "if-none-match", "if-modified-since"})
READ_METHODS = frozenset({"GET", "HEAD"})

# Named by OpenAI's spec or docs, and deliberately not taken from the client.
REQUEST_WITHHELD = {
    "authorization": "the client's relay key; replaced by the team's upstream key",
    "openai-organization": "set from OPENAI_ORGANIZATION: the team's key decides where usage lands",
    "openai-project": "set from OPENAI_PROJECT, for the same reason",
    "content-length": "set from the body the relay actually sends (chunked when unknown)",
    "accept-encoding": "always identity upstream: compressed responses would hide usage from the relay",
}

# Upstream -> client.
RESPONSE_ALLOWED = frozenset(
    {
        "content-type",
        "content-disposition",
        "content-encoding",
        "content-length",
        "x-request-id",
        "retry-after",
        "retry-after-ms",
        # The SDKs retry on it (or not) before looking at the status.
        "x-should-retry",
        # Ranged and conditional reads: what a client needs to resume or revalidate.
        "content-range",
        "accept-ranges",
        "etag",
        "last-modified",
        # RFC 9745 / RFC 8594: an endpoint's retirement, which a staff tool should hear of.
        "deprecation",
        "sunset",
        # Where a created object lives (POST /v1/realtime/calls answers 201 with it);
        # an absolute upstream URL is made relative to the relay (see _relay_location).
        "location",
    }
)
RESPONSE_ALLOWED_PREFIXES = ("openai-", "x-ratelimit-")

# Named by OpenAI's spec or docs, and deliberately not passed to the client.
RESPONSE_WITHHELD = {
    "transfer-encoding": "hop-by-hop: the relay's own server frames the response it sends",
}


def request_headers_from_meta(meta: Mapping[str, str], project: str = "") -> dict[str, str]:
    """Allowed client headers, read from the WSGI environ, plus the upstream credentials
    (with the caller's team's OpenAI project, where it has one)."""
    out: dict[str, str] = {}
    read = meta.get("REQUEST_METHOD", "GET").upper() in READ_METHODS
    for key, value in meta.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").lower()
        else:
            continue
        if value and (name in REQUEST_ALLOWED or name.startswith(REQUEST_ALLOWED_PREFIXES)):
            if name in READ_ONLY and not read:
                continue
            out[name] = value
    out.update(upstream_credentials(project))
    return out


def response_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Allowed upstream response headers, in upstream's order."""
    out = []
    for name, value in upstream:
        lower = name.lower()
        if lower in RESPONSE_ALLOWED or lower.startswith(RESPONSE_ALLOWED_PREFIXES):
            if lower == "location":
                value = _relay_location(value)
            out.append((name, value))
    return out


def _relay_location(value: str) -> str:
    """A Location under upstream's base URL, as the same path on the relay.

    Relay paths mirror upstream's (`/v1/...`), so the relative form works
    behind any public address; an absolute upstream URL would send the client
    to OpenAI without the relay (and without a key that works there).
    Relative values and other hosts pass unchanged.
    """
    base = settings.OPENAI_BASE_URL.rstrip("/")
    if value == base or value.startswith(base + "/") or value.startswith(base + "?"):
        return "/v1" + value[len(base):]
    return value
