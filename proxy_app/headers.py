"""Which headers cross the relay, in each direction.

Allowlists, not blocklists: a header nobody thought about (a cookie, a proxy's
auth, an upstream debug header) stays on its side.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.conf import settings

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
    }
)
REQUEST_ALLOWED_PREFIXES = ("x-stainless-",)

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
    }
)
RESPONSE_ALLOWED_PREFIXES = ("openai-", "x-ratelimit-")


def request_headers_from_meta(meta: Mapping[str, str], project: str = "") -> dict[str, str]:
    """Allowed client headers, read from the WSGI environ, plus the upstream credentials
    (with the caller's team's OpenAI project, where it has one)."""
    out: dict[str, str] = {}
    for key, value in meta.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").lower()
        else:
            continue
        if value and (name in REQUEST_ALLOWED or name.startswith(REQUEST_ALLOWED_PREFIXES)):
            out[name] = value
    out.update(upstream_credentials(project))
    return out


def team_projects_allowed() -> bool:
    """A project-scoped key (sk-proj-…) is refused by OpenAI with any other project's id,
    so per-team project ids are only sent with a user or service-account key."""
    return not settings.OPENAI_API_KEY.startswith("sk-proj-")


def upstream_credentials(project: str = "") -> dict[str, str]:
    """What every request to upstream carries, relayed or the relay's own (polling, lookups).

    `project`: the caller's team's OpenAI project, which takes the place of OPENAI_PROJECT.
    """
    out = {
        # Upstream compression would hide usage from the observers, and the
        # client<->relay hop is where compression belongs anyway.
        "accept-encoding": "identity",
        "authorization": f"Bearer {settings.OPENAI_API_KEY}",
    }
    if settings.OPENAI_ORGANIZATION:
        out["openai-organization"] = settings.OPENAI_ORGANIZATION
    if project and team_projects_allowed():
        out["openai-project"] = project
    elif settings.OPENAI_PROJECT:
        out["openai-project"] = settings.OPENAI_PROJECT
    return out


def response_headers(upstream: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Allowed upstream response headers, in upstream's order."""
    out = []
    for name, value in upstream:
        lower = name.lower()
        if lower in RESPONSE_ALLOWED or lower.startswith(RESPONSE_ALLOWED_PREFIXES):
            out.append((name, value))
    return out
