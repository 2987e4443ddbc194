"""Checks that run before the relay key is even looked up: keys in the URL,
and clients that keep failing to authenticate."""
from __future__ import annotations

import time
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from relay_project.redact import KEY_PARAMS

from .errors import RelayError


class KeyInQuery(RelayError):
    default_code = "key_in_query_string"


class TooManyFailedAuthentications(RelayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    # Not written to the audit: the point is that a flood of bad keys costs no rows.
    audited = True


def refuse_key_in_query(request: HttpRequest) -> None:
    """A key in the URL ends up in access logs and proxies' logs, and was forwarded
    upstream with the rest of the query: refuse it (the logs scrub it too,
    relay_project/gunicorn_logging.py)."""
    query = request.META.get("QUERY_STRING", "")
    if not query:
        return
    for name, _ in parse_qsl(query, keep_blank_values=True):
        if name.strip().lower() in KEY_PARAMS:
            raise KeyInQuery(
                f"Keys are not accepted in the query string ({name.strip()[:40]!r}); send the relay key as "
                "'Authorization: Bearer <key>'. Consider the key exposed if this URL was logged.",
                param=name.strip()[:40])


def _bucket(ip: str | None) -> str:
    return f"relay:authfail:{ip or '-'}:{int(time.time() // 60)}"


def check_failed_auth(ip: str | None) -> None:
    """Refuse a client address that failed to authenticate too often this minute."""
    limit = settings.RELAY_UNAUTHENTICATED_PER_MINUTE
    if limit and (cache.get(_bucket(ip)) or 0) >= limit:
        retry = 60 - int(time.time() % 60)
        raise TooManyFailedAuthentications(
            f"Too many requests without a valid relay key from this address "
            f"(limit: RELAY_UNAUTHENTICATED_PER_MINUTE={limit}). Retry in {retry}s.",
            headers={"Retry-After": str(retry)})


def failed_auth(ip: str | None) -> None:
    if not settings.RELAY_UNAUTHENTICATED_PER_MINUTE:
        return
    name = _bucket(ip)
    if not cache.add(name, 1, timeout=120):
        try:
            cache.incr(name)
        except ValueError:
            cache.add(name, 1, timeout=120)
