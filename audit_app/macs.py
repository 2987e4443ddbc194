"""The keyed hashes of the audit trail: one canonical text per row, and its HMAC.

Kept apart from audit_app.ledger (which needs the models) so that the models
themselves, and migrations, can MAC a record as they save it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone as dt_timezone
from decimal import Decimal
from typing import Any, Iterable

from django.conf import settings
from django.db import models
from django.utils import timezone

# Written outside the app's own save() path as bookkeeping, never audited content:
# poll_batches stamps these with a bulk UPDATE on every poll.
UNSEALED_FIELDS: dict[str, frozenset[str]] = {
    "audit_app.BatchRecord": frozenset({"last_polled_at", "last_poll_error", "claimed_until"}),
    "audit_app.AsyncJob": frozenset({"last_polled_at", "last_poll_error", "claimed_until"}),
}
# Columns added after records were first MACed: in the canonical text only when set, so
# a record written before the column existed still verifies, and one written after binds it
# (as ledger.LATE_FIELDS does for calls).
LATE_RECORD_FIELDS: dict[str, frozenset[str]] = {
    "audit_app.AsyncJob": frozenset({"budget_hold"}),
}
# Not content: the id is bound by the ledger entry, updated_at moves on every save.
_NEVER = frozenset({"id", "updated_at", "row_mac"})


def chain_key() -> bytes:
    secret = getattr(settings, "AUDIT_CHAIN_KEY", "") or settings.SECRET_KEY
    return hashlib.sha256(b"team-relay audit chain\0" + secret.encode()).digest()


_AS_IS = frozenset({str, int, bool, type(None)})


def norm(value: Any) -> Any:
    """One text form per value, whatever the database gave back."""
    if type(value) in _AS_IS:  # most columns; checked first because every call MACs ~30 of them twice
        return value
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.astimezone(dt_timezone.utc).isoformat(timespec="microseconds")
    if isinstance(value, float):
        return repr(round(value, 3))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def canonical(values: dict[str, Any], names: Iterable[str]) -> bytes:
    return json.dumps([[n, norm(values.get(n))] for n in names], separators=(",", ":"),
                      default=str).encode()


def mac(data: bytes) -> str:
    return hmac.new(chain_key(), data, hashlib.sha256).hexdigest()


# --- file, batch and prune records ------------------------------------------------------


def record_fields(model: type[models.Model]) -> tuple[models.Field, ...]:
    skip = _NEVER | UNSEALED_FIELDS.get(model._meta.label, frozenset())
    # By name: field order differs between a model and its migration-state twin.
    return tuple(sorted((f for f in model._meta.concrete_fields if f.attname not in skip), key=lambda f: f.attname))


def _record_canonical(obj: models.Model) -> bytes:
    late = LATE_RECORD_FIELDS.get(obj._meta.label, frozenset())
    values = {}
    for f in record_fields(type(obj)):
        # As the database will give it back: a date string assigned before save is a datetime after.
        value = f.to_python(getattr(obj, f.attname))
        if isinstance(value, datetime) and timezone.is_naive(value):
            value = timezone.make_aware(value)
        if value is None and f.attname in late:
            continue
        values[f.attname] = value
    return canonical(values, list(values))


def record_mac(obj: models.Model) -> str:
    """The MAC the app writes on a file, batch or prune record each time it saves it."""
    return mac(b"record\0" + obj._meta.label.encode() + b"\0" + _record_canonical(obj))


def record_content_hash(obj: models.Model) -> str:
    return hashlib.sha256(_record_canonical(obj)).hexdigest()


def record_mac_ok(obj: models.Model) -> bool:
    return hmac.compare_digest(getattr(obj, "row_mac", "") or "", record_mac(obj))
