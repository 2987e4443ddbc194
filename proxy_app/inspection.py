"""Looking into a request body before it is forwarded, when something depends on it.

- JSON bodies up to RELAY_INSPECT_MAX_BYTES are read and must parse as an
  object: a malformed request is refused here and never reaches OpenAI.
- Keys limited to some models need the body's model before anything is sent:
  their bodies of any size are spooled (to disk past 1 MiB) while a reader
  picks out the fields, then forwarded from the spool.
Everything else streams straight through, never held.

The rule for a key with a model scope: when the relay cannot read the body the
way upstream will, the request is refused and nothing is forwarded. So on an
endpoint that takes a model (proxy_app.model_endpoints) the body is read as
JSON whatever its label (upstream served JSON sent as octet-stream or
form-urlencoded), a multipart form is read by python-multipart, and the
request is refused unless exactly one readable string `model` comes out.
"""
from __future__ import annotations

import io
import json
import tempfile
from typing import BinaryIO

from django.conf import settings

from audit_app.recorder import CallContext

from audit_app import budgets

from . import access, bodyread
from .errors import BodyTooLarge, RelayError
from .model_endpoints import model_field
from .paths import ApiPath
from .policy import media_type
from relay_project.lib.sniff import JsonFieldSniffer, MultipartFieldSniffer, boundary_of

SPOOL_IN_MEMORY = 1024 * 1024
_FIELDS = frozenset({"model", "input_file_id", "endpoint"})
_BOM = b"\xef\xbb\xbf"


class InvalidBody(RelayError):
    default_code = "invalid_body"


def inspect_body(ctx: CallContext, api_path: ApiPath, method: str, content_type: str,
                 source: BinaryIO | None, length: int | None) -> tuple[BinaryIO | None, int | None]:
    """Refuse a body that is malformed or outside the key's scope; return what to forward."""
    kind = media_type(content_type)
    if kind == "multipart/form-data" and not boundary_of(content_type):
        raise InvalidBody("A multipart/form-data body needs one boundary in its Content-Type.")
    scoped = access.has_model_scope(ctx)
    takes_model = model_field(api_path.path, method) if scoped else None
    if source is None:
        access.check_model_scope(ctx, api_path, method, {}, takes_model=takes_model)
        return source, length
    as_json = kind == "application/json" or (takes_model is not None and kind != "multipart/form-data")
    if as_json and length is not None and length <= settings.RELAY_INSPECT_MAX_BYTES:
        raw = bodyread.read_exactly(source, length)
        fields = _json_object(raw, strict=scoped)
        access.check_model_scope(ctx, api_path, method, fields, takes_model=takes_model)
        access.reserve_budget(ctx, api_path, method, fields, len(raw))
        return io.BytesIO(raw), len(raw)
    # A budget needs the model (and output limits) too, to reserve the call's cost.
    if not scoped and not budgets.applies(ctx.key, ctx.user):
        return source, length
    if as_json:
        sniffer: JsonFieldSniffer | MultipartFieldSniffer = JsonFieldSniffer(_FIELDS | budgets.ESTIMATE_FIELDS)
    elif kind == "multipart/form-data":
        sniffer = MultipartFieldSniffer(boundary_of(content_type) or "", budgets.ESTIMATE_FIELDS)
    else:
        access.reserve_budget(ctx, api_path, method, {}, length)  # refused: no model to price it by
        return source, length
    spool, total = _spool(source, sniffer)
    try:
        access.check_model_scope(ctx, api_path, method, sniffer.values, takes_model=takes_model,
                                 unreadable=_unreadable(sniffer))
        access.reserve_budget(ctx, api_path, method, sniffer.values, total)
    except RelayError:
        spool.close()
        raise
    return spool, total


def _unreadable(sniffer: JsonFieldSniffer | MultipartFieldSniffer) -> str | None:
    """Why the relay's reading of a streamed body may not be upstream's, if it may not."""
    if isinstance(sniffer, MultipartFieldSniffer):
        if sniffer.problems:
            return "; ".join(sniffer.problems)
        if not sniffer.complete:
            return "the multipart body ends before its closing delimiter"
        return None
    if sniffer.is_object is not True:
        return "the body is not a JSON object (a byte-order mark, or not JSON)"
    if "model" in sniffer.seen and not isinstance(sniffer.values.get("model"), str):
        return "its model is not a string of at most 512 bytes"
    return None


def _json_object(raw: bytes, *, strict: bool = False) -> dict:
    """The body as a JSON object, or a 400.

    `strict` (keys with a model scope): UTF-8 without a byte-order mark, which
    `json.loads` on bytes would otherwise accept along with UTF-16 and UTF-32.
    Duplicated keys keep their last value, as upstream reads them.
    """
    try:
        if strict:
            if raw.startswith(_BOM):
                raise ValueError("the body starts with a byte-order mark")
            text: str | bytes = raw.decode("utf-8")
        else:
            text = raw
        body = json.loads(text)
    except RecursionError:
        raise InvalidBody("The JSON body is nested too deeply for the relay to read.") from None
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
    while True:
        try:
            chunk = bodyread.read(source, 64 * 1024)
        except BaseException:
            spool.close()
            raise
        if not chunk:
            break
        total += len(chunk)
        if total > settings.RELAY_MAX_BODY_BYTES:
            spool.close()
            raise BodyTooLarge(
                f"The request body exceeds the relay's limit of {settings.RELAY_MAX_BODY_BYTES} bytes.")
        sniffer.feed(chunk)
        spool.write(chunk)
    spool.seek(0)
    return spool, total
