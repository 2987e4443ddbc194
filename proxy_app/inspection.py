"""Looking into a request body before it is forwarded, when something depends on it.

The view's `BodyReadable` permission inspects the body once per call; the result,
a `Body`, is what the later permissions (ModelInScope, CostReserved) judge, what
the pipeline forwards, and what the observers read their fields from: a body the
relay parsed is not parsed again (a small chat request used to be parsed three
times: here, by observers.RequestFields' sniffer, and by the include_usage rewrite).

- The framing first: Content-Length, size and content type (400/413/415).
- JSON bodies up to RELAY_INSPECT_MAX_BYTES are read and must parse as an
  object: a malformed request is refused here and never reaches OpenAI.
- Keys limited to some models need the body's model before anything is sent:
  their bodies of any size are spooled (to disk past 1 MiB) while a reader
  picks out the fields, then forwarded from the spool.
Everything else streams straight through, never held.

The rule for a key with a model scope: when the relay cannot read the body the
way upstream will, the request is refused and nothing is forwarded. So on an
endpoint that takes a model (proxy_app.paths.model_field) the body is read as
JSON whatever its label (upstream served JSON sent as octet-stream or
form-urlencoded), a multipart form is read by python-multipart, and the
request is refused unless exactly one readable string `model` comes out.
"""
from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from django.conf import settings
from django.http import HttpRequest
from rest_framework.permissions import BasePermission

from audit_app import budgets
from audit_app.recorder import CallContext, release_connection

from . import access, policy
from .errors import BodyTooLarge, RelayError
from .observers import REQUEST_FIELD_LIMITS, REQUEST_FIELDS
from .paths import ApiPath, model_field
from .policy import media_type
from .realtime_http import must_read_whole
from relay_project.lib.sniff import JsonFieldSniffer, MultipartFieldSniffer, boundary_of

SPOOL_IN_MEMORY = 1024 * 1024
_FIELDS = frozenset({"model", "input_file_id", "endpoint"})
_SPOOLED_FIELDS = _FIELDS | budgets.ESTIMATE_FIELDS | REQUEST_FIELDS
_BOM = b"\xef\xbb\xbf"


class InvalidBody(RelayError):
    default_code = "invalid_body"


# --- reading the client's body, with a stall timeout ------------------------------
#
# Every read of the client's body (here, in the pipeline, in the envelope) goes
# through `read`. A client that trickles its body in holds a greenlet, a socket and
# (before the timeout) a database connection; ten of them made every other call fail with 503
# after 60 s. Each read of the body now has RELAY_BODY_READ_TIMEOUT seconds to
# return something: a body that stalls longer is answered 408 and nothing of it
# is forwarded (or, mid-forward, the upstream request is abandoned).
#
# Under gunicorn's gevent workers the timeout is a gevent.Timeout around each
# read (the socket calls are cooperative); in the threaded development server it
# is not enforced.


class BodyTimeout(RelayError):
    status_code = 408
    default_code = "request_body_timeout"


def _gevent_timeout():
    try:
        from gevent import Timeout, monkey
    except ImportError:  # pragma: no cover - gevent is a runtime dependency
        return None
    return Timeout if monkey.is_module_patched("socket") else None


_TIMEOUT = None
_CHECKED = False


def read(source: BinaryIO, size: int) -> bytes:
    """`source.read(size)`, refused with a 408 when the client sends nothing for too long."""
    global _TIMEOUT, _CHECKED
    if not _CHECKED:
        _TIMEOUT, _CHECKED = _gevent_timeout(), True
    seconds = settings.RELAY_BODY_READ_TIMEOUT
    if _TIMEOUT is None or not seconds:
        return source.read(size)
    error = BodyTimeout(f"The request body stalled: nothing arrived for {seconds:g} s "
                        "(RELAY_BODY_READ_TIMEOUT). Nothing was forwarded.")
    with _TIMEOUT(seconds, error):
        return source.read(size)


def read_exactly(source: BinaryIO, length: int, step: int = 64 * 1024) -> bytes:
    """Up to `length` bytes, in steps that each get the stall timeout."""
    parts = []
    remaining = length
    while remaining > 0:
        chunk = read(source, min(step, remaining))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


@dataclass(slots=True)
class Body:
    """A request body as the policy read it: what to forward, and what it said.

    - `source`, `length`: what the pipeline forwards (the client's stream, or the
      relay's copy when `held`: read whole, or spooled);
    - `raw`, `document`: a JSON body read whole, and the object it parsed to
      (`duplicates`: some object in it repeats a key; json.loads kept the last);
    - `fields`: what the key's scopes and budget judge (the document, the fields a
      sniffer picked out of a spooled body, `sniffed`, or nothing);
    - `check_scope`, `reserve`: whether the model scope and the budget reservation
      look at this body at all, `takes_model` and `unreadable` what they need.
    """

    source: BinaryIO | None = None
    length: int | None = None
    content_type: str = ""
    held: bool = False
    raw: bytes | None = None
    document: dict | None = None
    duplicates: bool = False
    fields: dict = field(default_factory=dict)
    sniffed: bool = False
    check_scope: bool = False
    reserve: bool = False
    takes_model: str | None = None
    unreadable: str | None = None
    size: int | None = None

    def discard(self) -> None:
        """The call was refused after its body was read: let the relay's copy go (never the client's stream)."""
        if self.held and self.source is not None:
            self.source.close()


# A WebSocket upgrade (and any call the body rules do not look at): nothing to check.
NO_BODY = Body()


class BodyReadable(BasePermission):
    """The body's framing, size and type, then (when something depends on it) its JSON
    or form fields: 400 (malformed), 408 (stalled), 413 (too large), 415 (type).

    Reads the body once, here (`RelayView.body`); what it read is a `Body` that
    ModelInScope, CostReserved, the pipeline and the observers share.
    """

    def has_permission(self, request, view) -> bool:
        view.body  # noqa: B018  (inspected once, cached on the view)
        return True


def inspect(request: HttpRequest, api_path: ApiPath, ctx: CallContext) -> Body:
    """Refuse a body the relay cannot take; return what it read and what to forward."""
    source, length, chunked = _body_framing(request)
    content_type = request.META.get("CONTENT_TYPE", "")
    policy.check_body(content_type, length, chunked)
    if source is not None:
        # No database connection is held while a body streams in: a client may
        # take its time, and ten slow ones used to hold ten pooled connections.
        # Giving one back and taking it again costs ~0.15 ms on SQLite (measured
        # on the shared 2-core machine), nothing when none was open (a key from
        # the key cache, rate counters in Redis).
        release_connection()
    kind = media_type(content_type)
    if kind == "multipart/form-data" and not boundary_of(content_type):
        raise InvalidBody("A multipart/form-data body needs one boundary in its Content-Type.")
    scoped = access.has_model_scope(ctx)
    method = request.method
    takes_model = model_field(api_path.path, method) if scoped else None
    if source is None:
        return Body(None, length, content_type, check_scope=True, takes_model=takes_model)
    whole = must_read_whole(api_path, method, ctx)  # upstream reads it as JSON, whatever its label
    as_json = kind == "application/json" or ((takes_model is not None or whole) and kind != "multipart/form-data")
    if as_json and length is not None and length <= settings.RELAY_INSPECT_MAX_BYTES:
        raw = read_exactly(source, length)
        document, duplicates = _json_object(raw, strict=scoped or whole)
        return Body(io.BytesIO(raw), len(raw), content_type, held=True, raw=raw, document=document,
                    duplicates=duplicates, fields=document, check_scope=True, reserve=True,
                    takes_model=takes_model, size=len(raw))
    # A budget needs the model (and output limits) too, to reserve the call's cost.
    if not scoped and not budgets.applies(ctx.key, ctx.user):
        return Body(source, length, content_type)
    if not as_json and kind != "multipart/form-data":
        # Reserved with no fields: refused, there is no model to price it by.
        return Body(source, length, content_type, reserve=True, size=length)
    return spooled(source, content_type, as_json=as_json, takes_model=takes_model)


def spooled(source: BinaryIO, content_type: str, *, as_json: bool, takes_model: str | None = None) -> Body:
    """A body too large (or too open-ended) to parse whole, spooled while a reader picks
    out the fields the policy judges and those the audit row records
    (observers.REQUEST_FIELDS): nothing reads it again on its way upstream."""
    sniffer: JsonFieldSniffer | MultipartFieldSniffer
    if as_json:
        sniffer = JsonFieldSniffer(_SPOOLED_FIELDS, limits=REQUEST_FIELD_LIMITS)
    else:
        sniffer = MultipartFieldSniffer(boundary_of(content_type) or "", _SPOOLED_FIELDS)
    spool, total = _spool(source, sniffer)
    return Body(spool, total, content_type, held=True, fields=sniffer.values, sniffed=True, check_scope=True,
                reserve=True, takes_model=takes_model, unreadable=_unreadable(sniffer), size=total)


def _body_framing(request: HttpRequest) -> tuple[BinaryIO | None, int | None, bool]:
    meta = request.META
    chunked = "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower()
    raw_length = meta.get("CONTENT_LENGTH") or ""
    try:
        length = int(raw_length) if raw_length else None
    except ValueError:
        raise RelayError("Content-Length is not a number.", code="invalid_content_length") from None
    if length is not None and length < 0:
        raise RelayError("Content-Length is negative.", code="invalid_content_length")
    if chunked:
        # Django only reads up to Content-Length; a chunked body comes straight
        # from the server's (already de-chunked) input stream.
        return meta["wsgi.input"], None, True
    if length:
        return request, length, False
    return None, None, False


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


def _json_object(raw: bytes, *, strict: bool = False) -> tuple[dict, bool]:
    """The body as a JSON object, or a 400; and whether any object in it repeats a key.

    `strict` (keys with a model scope): UTF-8 without a byte-order mark, which
    `json.loads` on bytes would otherwise accept along with UTF-16 and UTF-32.
    Duplicated keys keep their last value, as upstream reads them; that there were
    any is noted, because the observers' field reader keeps another (see
    relay_project.lib.sniff.JsonFieldSniffer.take).
    """
    repeated: list[bool] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            repeated.append(True)
        return obj

    try:
        if strict:
            if raw.startswith(_BOM):
                raise ValueError("the body starts with a byte-order mark")
            text: str | bytes = raw.decode("utf-8")
        else:
            text = raw
        body = json.loads(text, object_pairs_hook=pairs_hook)
    except RecursionError:
        raise InvalidBody("The JSON body is nested too deeply for the relay to read.") from None
    except ValueError as exc:
        raise InvalidBody(
            f"We could not parse the JSON body of your request ({exc}). The OpenAI API expects a "
            "JSON payload, but what was sent was not valid JSON."
        ) from None
    if not isinstance(body, dict):
        raise InvalidBody(f"The JSON body must be an object, not {type(body).__name__}.")
    return body, bool(repeated)


def _spool(source: BinaryIO, sniffer: JsonFieldSniffer | MultipartFieldSniffer):
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    total = 0
    while True:
        try:
            chunk = read(source, 64 * 1024)
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
