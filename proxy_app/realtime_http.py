"""The Realtime API's HTTP side: WebRTC calls and ephemeral client secrets.

A browser or phone talks to OpenAI directly once it holds an ephemeral client
secret (`POST /v1/realtime/client_secrets`) or once its SDP offer has been
answered (`POST /v1/realtime/calls`). What the session then generates is billed
by OpenAI but never crosses the relay, so the relay cannot meter it: the call
that minted the secret or started the call is recorded with its caller, and
for a key limited to some models or by a budget the session configuration must
name a model the key may use before anything is forwarded (decisions.md).

- client_secrets: the JSON body's `session.model` (and its transcription model)
  must be named and allowed; with a budget it must also have a price.
- calls: a limited key may not start a call directly: an SDP offer carries no
  session configuration the relay could check. It mints a client secret through
  the relay instead, and the browser starts the call with that secret.
- every other POST under /v1/realtime (the beta `sessions` and
  `transcription_sessions`, `translations/client_secrets`, a SIP call's `accept`,
  and any endpoint added later) is refused for a limited key: each can mint a
  session or secret whose model the relay does not check. Only hanging up or
  rejecting a call, which generates nothing, passes.

"Limited" is one test everywhere (access.is_limited): a model scope, or a budget on
the key, its owner or its team.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone
from rest_framework.permissions import BasePermission

from audit_app import pricing
from audit_app.models import Billing
from audit_app.recorder import CallContext

from . import access
from .errors import PolicyDenied, RelayError
from .observers import Observer
from .paths import ApiPath

CLIENT_SECRETS = "/v1/realtime/client_secrets"
CALLS = "/v1/realtime/calls"
# What a limited key may POST under /v1/realtime besides client_secrets: ending a call.
_CALL_CONTROL = re.compile(r"^/v1/realtime/calls/[^/]+/(hangup|reject)$")


def _limited(ctx: CallContext) -> bool:
    return access.is_limited(ctx)


class RealtimeCallAllowed(BasePermission):
    """A key limited to some models or by a budget starts no Realtime session whose model
    the relay cannot check (403): no SDP offer, no POST under /v1/realtime but minting a
    client secret (with a body naming its session) or ending a call."""

    def has_permission(self, request, view) -> bool:
        check_realtime_call(view.api_path, view.forwarded.method, view.ctx)
        check_has_body(view.forwarded, view.api_path, view.ctx)
        return True


def check_realtime_call(api_path: ApiPath, method: str, ctx: CallContext) -> None:
    if method != "POST" or not api_path.path.startswith("/v1/realtime") or not _limited(ctx):
        return
    if api_path.path == CALLS:
        raise PolicyDenied(
            f"Relay key {ctx.key.prefix}… is limited to some models or by a budget, and a WebRTC call "
            "started with an SDP offer names no model the relay could check. Mint a client secret "
            f"through the relay ({CLIENT_SECRETS}, naming the session's model) and start the call with it.",
            code="outside_key_scope")
    if api_path.path != CLIENT_SECRETS and not _CALL_CONTROL.match(api_path.path):
        raise PolicyDenied(
            f"Relay key {ctx.key.prefix}… is limited to some models or by a budget, and "
            f"{api_path.path} can mint a session or secret whose model the relay does not check. "
            f"Mint a client secret through the relay ({CLIENT_SECRETS}, naming the session's model).",
            code="outside_key_scope")


def check_has_body(request, api_path: ApiPath, ctx: CallContext) -> None:
    """A limited key's client_secrets call must carry the session it mints (without a body,
    OpenAI would mint one for its default model), small enough to be read whole and
    checked (ClientSecretChecked): sent with its Content-Length, at most RELAY_INSPECT_MAX_BYTES."""
    if request.method != "POST" or api_path.path != CLIENT_SECRETS or not _limited(ctx):
        return
    meta = request.META
    length = (meta.get("CONTENT_LENGTH") or "").strip()
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        raise PolicyDenied(f"Relay key {ctx.key.prefix}… is limited to some models or by a budget: a "
                           "client_secrets body must be sent with its Content-Length so the relay can check it.",
                           code="outside_key_scope")
    if not length.strip("0"):
        raise PolicyDenied(
            f"Relay key {ctx.key.prefix}… is limited to some models or by a budget: the session "
            "must name its model (session.model) so the relay can check it.",
            code="outside_key_scope", param="session.model")
    limit = settings.RELAY_INSPECT_MAX_BYTES
    if length.isdigit() and int(length) > limit:
        raise PolicyDenied(f"A client_secrets body over {limit} bytes cannot be checked for this key.",
                           code="outside_key_scope")


def must_read_whole(api_path: ApiPath, method: str, ctx: CallContext) -> bool:
    """Whether the body policy reads this body as one JSON object, whatever its label:
    a limited key minting a client secret (checked by ClientSecretChecked)."""
    return method == "POST" and api_path.path == CLIENT_SECRETS and _limited(ctx)


class ClientSecretChecked(BasePermission):
    """A limited key's client secret names its session's model, one the key may use and,
    under a budget, one with a price (403); every `model` anywhere in the body is checked.

    Judges the JSON object BodyReadable read whole (must_read_whole), strictly: of two
    duplicate keys another reader could take the other, so a body with any is refused.
    """

    def has_permission(self, request, view) -> bool:
        if must_read_whole(view.api_path, view.forwarded.method, view.ctx):
            check_client_secret(view.body.document, view.body.duplicates, view.api_path, view.ctx)
        return True


def check_client_secret(body: dict | None, duplicates: bool, api_path: ApiPath, ctx: CallContext) -> None:
    from .websocket import _all_models, _session_models

    if body is None or duplicates:
        raise RelayError("The client_secrets body must be a JSON object the relay can read "
                         "(no duplicate keys).", code="invalid_body")
    session = body.get("session")
    try:
        models = _session_models(session)
    except RelayError as exc:
        raise RelayError(exc.message.replace("the relay cannot read it the way upstream would, so it "
                                             "was not forwarded", "the relay cannot check it"),
                         code="invalid_body", param=exc.param) from None
    if not isinstance(session, dict) or not isinstance(session.get("model"), str):
        raise PolicyDenied(
            f"Relay key {ctx.key.prefix}… is limited to some models or by a budget: the session "
            "must name its model (session.model) so the relay can check it.",
            code="outside_key_scope", param="session.model")
    # Every field named `model` anywhere in the body, not only the ones the relay knows of.
    for model in [*models, *_all_models(body)]:
        if not isinstance(model, str):
            raise PolicyDenied(
                f"Relay key {ctx.key.prefix}… is limited to some models or by a budget, and this "
                f"body names a model that is a {type(model).__name__}, not a string.",
                code="outside_key_scope", param="model")
        access.check_model_scope(ctx, api_path, "POST", {"model": model})
        if access.has_budget(ctx) and pricing.price_for(model, timezone.now()) is None:
            raise PolicyDenied(
                f"Model '{model}' has no price, and this key or its owner has a budget.",
                code="model_without_price", param="session.model")


class RealtimeCallBilling(Observer):
    """A WebRTC call OpenAI accepted is billed by OpenAI, with usage the relay never sees."""

    def __init__(self) -> None:
        self.status = 0

    def on_response_start(self, status: int, headers: Any) -> None:
        self.status = status

    def audit_fields(self) -> dict[str, Any]:
        return {"billing": Billing.UNKNOWN} if 200 <= self.status < 300 else {}


def realtime_observers(api_path: ApiPath, method: str, ctx: CallContext) -> list[Observer]:
    if method != "POST":
        return []
    if api_path.path == CALLS:
        return [RealtimeCallBilling()]
    return []


def location(value: str) -> str | None:
    """A realtime call's Location, relative to /v1 as the client sees the relay.

    OpenAI's own host never goes to the client: a client following it would send
    its relay key to OpenAI.
    """
    parts = urlsplit(value)
    path = parts.path
    if parts.netloc:
        base = urlsplit(settings.OPENAI_BASE_URL)
        if parts.netloc != base.netloc:
            return None
        if base.path and path.startswith(base.path.rstrip("/") + "/"):
            path = "/v1" + path[len(base.path.rstrip("/")):]
    return path if path.startswith(CALLS + "/") else None
