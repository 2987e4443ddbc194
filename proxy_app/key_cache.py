"""Authenticated relay keys remembered for a few seconds in each worker process.

Looking a key up (with its owner and the owner's limits) was the relay's most
expensive step per call after the audit writes: a query, and on SQLite often
the request's first, so it also paid for opening the connection. A key seen
moments ago is reused instead, for at most RELAY_KEY_CACHE_SECONDS.

What that costs: a change made in another process (revoking a key, disabling
its owner, changing scopes or limits) reaches this process within the TTL.
Changes saved in this process (the admin, `RelayKey.revoke()`) drop the
entries at once, through the signals below. Expiry needs no help: it is
checked against the clock on every call.

Only keys that exist are remembered, so random keys cannot fill the cache;
it is also capped in size.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from .models import RelayKey

# Far more keys than a team has; past it the cache starts over.
MAX_ENTRIES = 10_000

# key hash -> (monotonic deadline, key with owner and owner's limits)
_entries: dict[str, tuple[float, "RelayKey"]] = {}


def get(key_hash: str) -> "RelayKey | None":
    entry = _entries.get(key_hash)
    if entry is None:
        return None
    if entry[0] <= time.monotonic():
        _entries.pop(key_hash, None)
        return None
    return entry[1]


def put(key_hash: str, key: "RelayKey") -> None:
    ttl = settings.RELAY_KEY_CACHE_SECONDS
    if ttl <= 0:
        return
    if len(_entries) >= MAX_ENTRIES:
        _entries.clear()
    _entries[key_hash] = (time.monotonic() + ttl, key)


def forget(key_hash: str) -> None:
    _entries.pop(key_hash, None)


def clear(**kwargs: object) -> None:
    """Forget every key (a signal receiver too: users and limits are shared by many keys)."""
    _entries.clear()


def forget_key(sender: type, instance: "RelayKey", **kwargs: object) -> None:
    """`post_save`/`post_delete` receiver for RelayKey."""
    forget(instance.key_hash)
