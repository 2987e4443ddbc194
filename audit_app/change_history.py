"""The change history: who changed which key, limit, team or price, from what to what (AdminAction rows).

Model signals see every change, whatever made it (an admin form, an admin
action, a management command); the actor comes from a context variable that
the admin middleware and the commands set. Secret fields are never recorded.
"""
from __future__ import annotations

import contextvars
import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from django.db.models import Model
from django.db.models.signals import post_delete, post_save, pre_save

from .models import AdminAction

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar("relay_admin_actor", default=None)
SECRET_FIELDS = frozenset({"key_hash", "password", "row_mac"})


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def current_actor() -> str:
    actor = _actor.get()
    if actor:
        return actor
    try:
        return f"system:{getpass.getuser()}"
    except (KeyError, OSError):
        return "system"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def snapshot(obj: Model) -> dict[str, Any]:
    return {f.attname: _plain(getattr(obj, f.attname)) for f in obj._meta.concrete_fields
            if f.attname not in SECRET_FIELDS}


def record(action: str, obj: Model | None, changes: dict[str, Any], *, object_type: str = "",
           object_id: str = "", object_repr: str = "") -> None:
    AdminAction.objects.create(
        actor=current_actor()[:150], action=action,
        object_type=object_type or obj._meta.label, object_id=object_id or str(obj.pk),
        object_repr=(object_repr or str(obj))[:200], changes=changes,
    )


def _before(sender, instance: Model, **kwargs) -> None:
    if instance.pk is not None:
        old = sender.objects.filter(pk=instance.pk).first()
        instance._relay_before = snapshot(old) if old is not None else None


def _after(sender, instance: Model, created: bool, **kwargs) -> None:
    after = snapshot(instance)
    before = None if created else getattr(instance, "_relay_before", None)
    if before is None:
        record("created", instance, {k: [None, v] for k, v in after.items() if v not in (None, "", [], {})})
        return
    changes = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}
    if not changes or set(changes) <= {"last_used_at"}:
        return  # routine bookkeeping, not an admin's change
    action = "revoked" if set(changes) == {"revoked_at"} and changes["revoked_at"][0] is None else "changed"
    record(action, instance, changes)


def _deleted(sender, instance: Model, **kwargs) -> None:
    record("deleted", instance, {k: [v, None] for k, v in snapshot(instance).items()})


def watch(*models: type[Model]) -> None:
    for model in models:
        uid = f"relay-admin-log-{model._meta.label}"
        pre_save.connect(_before, sender=model, dispatch_uid=uid + "-pre")
        post_save.connect(_after, sender=model, dispatch_uid=uid + "-post")
        post_delete.connect(_deleted, sender=model, dispatch_uid=uid + "-del")


class AdminActorMiddleware:
    """Admin requests act as the logged-in admin."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if request.path.startswith("/admin/") and user is not None and user.is_authenticated:
            with acting_as(f"admin:{user.get_username()}"):
                return self.get_response(request)
        return self.get_response(request)
