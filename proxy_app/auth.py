"""Who may come into /v1: the relay key, and what is refused before it is even looked up.

- RelayKeyAuthentication (DRF): the key from `Authorization: Bearer` or `X-Relay-Key`;
  revoked and expired keys are named in the audit row so a leaked key's use shows.
- refuse_key_in_query: a key in the URL would be written to every access log on the way.
- failed_auth: past RELAY_UNAUTHENTICATED_PER_MINUTE failures from one address a
  minute, a 401 becomes a 429 with no audit row, so a key-guessing flood cannot fill
  the audit trail.
"""
from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from relay_project.redact import KEY_PARAMS

from .errors import RelayError
from .models import RelayKey


# ============================================================================
# Relay-key authentication for DRF: the one way into /v1.
# ============================================================================


def presented_key(request) -> str | None:
    """The key as the SDKs send it (`Authorization: Bearer`) or as `X-Relay-Key`."""
    meta = request.META
    header = meta.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = meta.get("HTTP_X_RELAY_KEY", "").strip()
    return value or None


class RelayKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request):
        plaintext = presented_key(request)
        if plaintext is None:
            return None
        key = RelayKey.lookup(plaintext)
        # Never echo the presented key back: it may be someone's real secret.
        if key is None:
            raise exceptions.AuthenticationFailed("Incorrect relay key provided.")
        now = timezone.now()
        if key.is_revoked:
            raise _refused(key, f"Relay key {key.prefix}… has been revoked.")
        if key.is_expired(now):
            raise _refused(key, f"Relay key {key.prefix}… has expired.")
        if not key.owner.is_active:
            raise _refused(key, f"The owner of relay key {key.prefix}… is disabled.")
        key.touch(now)
        return key.owner, key

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) when the key is missing or wrong.
        return 'Bearer realm="team-relay"'


def _refused(key: RelayKey, message: str) -> exceptions.AuthenticationFailed:
    """The refusal, carrying the key it refused: the audit row records the key and
    its owner (proxy_app.views.RelayView.handle_exception)."""
    exc = exceptions.AuthenticationFailed(message)
    exc.relay_key = key  # type: ignore[attr-defined]
    return exc


class HasRelayKey(BasePermission):
    message = (
        "You didn't provide a relay key. Send it as 'Authorization: Bearer <key>' "
        "or 'X-Relay-Key: <key>'."
    )

    def has_permission(self, request: Request, view) -> bool:
        return isinstance(request.auth, RelayKey)


# ============================================================================
# Checks that run before the relay key is even looked up: keys in the URL,
# and clients that keep failing to authenticate.
# ============================================================================


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
