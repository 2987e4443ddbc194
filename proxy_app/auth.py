"""Relay-key authentication for DRF: the one way into /v1."""
from __future__ import annotations

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from .models import RelayKey


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
