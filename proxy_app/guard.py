"""Checks that run before the relay key is even looked up: keys in the URL,
and clients that keep failing to authenticate."""
from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from relay_project.redact import KEY_PARAMS

from .errors import RelayError

log = logging.getLogger(__name__)


class KeyInQuery(RelayError):
    default_code = "key_in_query_string"


class TooManyFailedAuthentications(RelayError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    # Not written to the audit (RelayView.handle_exception): the point is that a flood
    # of bad keys costs no rows.

    @classmethod
    def now(cls) -> "TooManyFailedAuthentications":
        limit = settings.RELAY_UNAUTHENTICATED_PER_MINUTE
        retry = 60 - int(time.time() % 60)
        return cls(f"Too many requests without a valid relay key from this address "
                   f"(limit: RELAY_UNAUTHENTICATED_PER_MINUTE={limit} a minute). Retry in {retry}s.",
                   headers={"Retry-After": str(retry)})


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


def failed_auth(ip: str | None) -> bool:
    """Count a failed authentication from `ip`; True when it is past this minute's limit.

    Counted only when authentication fails, so a valid call pays nothing for it.
    Past the limit the answer is a 429 with no audit row: an unthrottled flood of
    bad keys used to write a row each.
    """
    limit = settings.RELAY_UNAUTHENTICATED_PER_MINUTE
    if not limit:
        return False
    name = _bucket(ip)
    try:
        if cache.add(name, 1, timeout=120):
            count = 1
        else:
            try:
                count = cache.incr(name)
            except ValueError:  # expired between add and incr
                cache.add(name, 1, timeout=120)
                count = 1
    except Exception:  # the cache is down: the 401 stands, only the flood guard is lost
        log.warning("relay: cannot count failed authentications", exc_info=True)
        return False
    return count > limit
