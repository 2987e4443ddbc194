"""Looking into a request body before it is forwarded, when something depends on it.

- JSON bodies up to RELAY_INSPECT_MAX_BYTES are read and must parse as an
  object: a malformed request is refused here and never reaches OpenAI.
- Keys limited to some models need the body's model before anything is sent:
  their bodies of any size are spooled (to disk past 1 MiB) while a sniffer
  picks out the fields, then forwarded from the spool.
Everything else streams straight through, never held.
"""
from __future__ import annotations

import io
import json
import tempfile
from typing import BinaryIO

from django.conf import settings

from audit_app.recorder import CallContext

from audit_app import budgets

from . import access
from .errors import BodyTooLarge, RelayError
from .paths import ApiPath
from .policy import media_type
from .sniff import JsonFieldSniffer, MultipartFieldSniffer, boundary_of

SPOOL_IN_MEMORY = 1024 * 1024
_FIELDS = frozenset({"model", "input_file_id", "endpoint"})


class InvalidBody(RelayError):
    default_code = "invalid_body"


def inspect_body(ctx: CallContext, api_path: ApiPath, method: str, content_type: str,
                 source: BinaryIO | None, length: int | None) -> tuple[BinaryIO | None, int | None]:
    """Refuse a body that is malformed or outside the key's scope; return what to forward."""
    kind = media_type(content_type)
    if kind == "multipart/form-data" and not boundary_of(content_type):
        raise InvalidBody("A multipart/form-data body needs a boundary in its Content-Type.")
    if source is None:
        return source, length
    if kind == "application/json" and length is not None and length <= settings.RELAY_INSPECT_MAX_BYTES:
        raw = source.read(length)
        fields = _json_object(raw)
        access.check_model_scope(ctx, api_path, method, fields)
        access.reserve_budget(ctx, api_path, method, fields, len(raw))
        return io.BytesIO(raw), len(raw)
    # A budget needs the model (and output limits) too, to reserve the call's cost.
    if not access.has_model_scope(ctx) and not budgets.applies(ctx.key, ctx.user):
        return source, length
    if kind == "application/json":
        sniffer: JsonFieldSniffer | MultipartFieldSniffer = JsonFieldSniffer(_FIELDS | budgets.ESTIMATE_FIELDS)
    elif kind == "multipart/form-data":
        sniffer = MultipartFieldSniffer(boundary_of(content_type) or "", budgets.ESTIMATE_FIELDS)
    else:
        access.reserve_budget(ctx, api_path, method, {}, length)  # refused: no model to price it by
        return source, length
    spool, total = _spool(source, sniffer)
    try:
        access.check_model_scope(ctx, api_path, method, sniffer.values)
        access.reserve_budget(ctx, api_path, method, sniffer.values, total)
    except RelayError:
        spool.close()
        raise
    return spool, total


def _json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidBody(
            f"We could not parse the JSON body of your request ({exc}). The OpenAI API expects a "
            "JSON payload, but what was sent was not valid JSON."
        ) from None
    if not isinstance(body, dict):
        raise InvalidBody(f"The JSON body must be an object, not {type(body).__name__}.")
    return body


def _spool(source: BinaryIO, sniffer: JsonFieldSniffer | MultipartFieldSniffer):
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    total = 0
    while chunk := source.read(64 * 1024):
        total += len(chunk)
        if total > settings.RELAY_MAX_BODY_BYTES:
            spool.close()
            raise BodyTooLarge(
                f"The request body exceeds the relay's limit of {settings.RELAY_MAX_BODY_BYTES} bytes.")
        sniffer.feed(chunk)
        spool.write(chunk)
    spool.seek(0)
    return spool, total
