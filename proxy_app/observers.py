"""Small observers plugged into the forwarding pipeline.

An observer sees the request body and the response as they stream past and
contributes fields to the audit row at the end. What is special about an
endpoint family lives here, not in a view of its own. Hooks, in call order:

- `rewrite_request(source, length)`: the rare observer that must change the
  request (bounded in size) returns a new body source and length;
- `on_request_chunk(chunk)`: each chunk of the request body on its way up;
- `on_response_start(status, headers)`;
- `transform(chunk) -> bytes` / `flush() -> bytes`: only for observers with
  `transforms = True`; may hold back or change bytes going to the client;
- `on_response_chunk(chunk)`: each chunk from upstream, as received;
- `audit_fields()`: what it learned, for the audit row. The key `usage`
  carries a `Usage`, `response_model` the model upstream says it used;
- `on_complete(call_id)`: the response was relayed in full; record what the
  family keeps beyond the call row (files, batches). Must not raise.
- `on_abandoned(call_id)`: instead, when the response ended early (the client
  left, upstream broke): for what upstream goes on with regardless (a background
  Response). Must not raise.

The common observers come first; then what each family adds (files, uploads and
batches; background responses and videos), which the pipeline's FAMILY_OBSERVERS
lists.
"""
from __future__ import annotations

import io
import json
import logging
import re
from typing import TYPE_CHECKING, Any, BinaryIO

from django.conf import settings

from audit_app import batch_records, budgets, file_records, jobs
from audit_app.models import AsyncJob, FileOrigin
from audit_app.recorder import CallContext, release_connection
from audit_app.usage import OutputItemCounter, Usage, image_variant

from audit_app.operations import generates
from .paths import ApiPath
from .policy import media_type
from relay_project.lib.sniff import JsonFieldSniffer, MultipartFieldSniffer, boundary_of
from .sse import ChatUsageStripper, SseUsageScanner

if TYPE_CHECKING:
    from .inspection import Body

log = logging.getLogger(__name__)
_ID = r"([A-Za-z0-9_.:-]+)"
_REQUEST_FIELDS = frozenset({"model", "stream", "n"})
# What per-image prices (dall-e) depend on.
_IMAGE_FIELDS = frozenset({"size", "quality"})
# Families whose output tokens are not text when upstream does not break them down.
_OUTPUT_MODALITY = {"images": "image"}
# Their forms (a file and its purpose; an upload's part) carry none of those fields,
# and can be 512 MB: looking for part delimiters in them was a fifth of the relay's
# CPU during an upload.
_FORMS_WITHOUT_FIELDS = frozenset({"files", "uploads"})
# The text a speech request turns into audio: what tts models bill by.
_SPEECH_INPUT_LIMIT = 64 * 1024
# What RequestFields reads: the policy's reader of a spooled body picks these out too,
# so that such a body is scanned once (proxy_app.inspection).
REQUEST_FIELDS = _REQUEST_FIELDS | _IMAGE_FIELDS | {"input"}
REQUEST_FIELD_LIMITS = {"input": _SPEECH_INPUT_LIMIT}


class Observer:
    transforms = False

    def rewrite_request(self, source: BinaryIO, length: int | None) -> tuple[BinaryIO, int | None]:
        return source, length

    def on_request_chunk(self, chunk: bytes) -> None:
        pass

    def on_response_start(self, status: int, headers: Any) -> None:
        pass

    def transform(self, chunk: bytes) -> bytes:
        return chunk

    def flush(self) -> bytes:
        return b""

    def on_response_chunk(self, chunk: bytes) -> None:
        pass

    def audit_fields(self) -> dict[str, Any]:
        return {}

    def on_complete(self, call_id: int) -> None:
        pass

    def on_abandoned(self, call_id: int) -> None:
        pass


class RequestFields(Observer):
    """`model`, `stream` and billing hints from a JSON body or multipart form fields.

    A body the policy read is not read again: a JSON body it parsed whole
    (inspection.Body.document) is read from that object, one it spooled from the
    fields its reader picked out on the way in (`Body.sniffed`, REQUEST_FIELDS among
    them). Only a body nobody read (a key without limits: a large one, a form) is
    sniffed as it streams up.
    """

    def __init__(self, api_path: ApiPath, body: "Body", generating: bool = True) -> None:
        content_type = body.content_type
        kind = media_type(content_type)
        self.speech = generating and api_path.path == "/v1/audio/speech"
        self.images = generating and api_path.family == "images"
        self.sniffer: JsonFieldSniffer | MultipartFieldSniffer | None = None
        self._taken: dict[str, Any] = {}
        wanted = _REQUEST_FIELDS | _IMAGE_FIELDS if self.images else _REQUEST_FIELDS
        if kind == "application/json":
            wanted = wanted | {"input"} if self.speech else wanted
            self.sniffer = JsonFieldSniffer(wanted, limits=REQUEST_FIELD_LIMITS)
        elif kind == "multipart/form-data" and api_path.family not in _FORMS_WITHOUT_FIELDS \
                and (boundary := boundary_of(content_type)):
            self.sniffer = MultipartFieldSniffer(boundary, wanted)
        if self.sniffer is not None:
            if kind == "application/json" and body.document is not None:
                self.sniffer.take(body.document, body.raw, duplicates=body.duplicates)
            elif body.sniffed:
                self.sniffer = None  # the policy's reader has them all
                self._taken = {k: v for k, v in body.fields.items() if k in wanted}
        # Sniffed on the way up only when the policy did not read the body already.
        self.sniffing = self.sniffer is not None and not (kind == "application/json" and body.document is not None)
        self.is_event_stream = False
        self.status = 0

    def on_request_chunk(self, chunk: bytes) -> None:
        if self.sniffing:
            self.sniffer.feed(chunk)

    @property
    def values(self) -> dict[str, Any]:
        # Read only at the end: reading a sniffer's values ends its small-body fast path.
        return self.sniffer.values if self.sniffer is not None else self._taken

    def on_response_start(self, status: int, headers: Any) -> None:
        self.status = status
        self.is_event_stream = media_type(headers.get("content-type", "")) == "text/event-stream"

    def audit_fields(self) -> dict[str, Any]:
        values = self.values
        model = values.get("model")
        fields: dict[str, Any] = {
            "model": model[:128] if isinstance(model, str) else "",
            "stream": values.get("stream") in (True, "true", "True") or self.is_event_stream,
        }
        if self.status < 400:
            hint = Usage()
            if self.speech and isinstance(values.get("input"), str):
                hint.characters = len(values["input"])
            if self.images:
                n = values.get("n")
                hint.images = int(n) if isinstance(n, int) or (isinstance(n, str) and n.isdigit()) else 1
                hint.image_variant = image_variant(values.get("size"), values.get("quality"))
            if not hint.is_empty:
                fields["usage_hint"] = hint
        return fields


class ResponseUsage(Observer):
    """Usage from a JSON response body (top-level `usage`) or an SSE stream, with what
    else is billed: the service tier, tool calls in a Response's output.

    `output` is the modality of the endpoint's output tokens (see Usage.from_api).
    """

    def __init__(self, output: str = "text") -> None:
        self.output = output
        self.json: JsonFieldSniffer | None = None
        self.items: OutputItemCounter | None = None
        self.sse: SseUsageScanner | None = None

    def on_response_start(self, status: int, headers: Any) -> None:
        kind = media_type(headers.get("content-type", ""))
        if kind == "text/event-stream":
            self.sse = SseUsageScanner()
        elif kind == "application/json":
            self.json = JsonFieldSniffer(frozenset({"model"}), frozenset({"usage"}))
            self.items = OutputItemCounter()

    def on_response_chunk(self, chunk: bytes) -> None:
        if self.sse is not None:
            self.sse.feed(chunk)
        elif self.json is not None:
            self.json.feed(chunk)
            self.items.feed(chunk)

    def audit_fields(self) -> dict[str, Any]:
        if self.sse is not None:
            usage, model = self.sse.usage, self.sse.model
            response = getattr(self.sse, "response", None)
        elif self.json is not None:
            usage, model = self.json.values.get("usage"), self.json.values.get("model")
            response = None
        else:
            return {}
        fields: dict[str, Any] = {}
        if (parsed := Usage.from_api(usage, response=response, output=self.output)) is not None:
            if self.items is not None:
                self.items.apply(parsed)
            fields["usage"] = parsed
        if isinstance(model, str):
            fields["response_model"] = model
        return fields


class ChatStreamUsage(Observer):
    """Streamed chat and completions report usage only when asked to.

    When the client did not ask (`stream_options.include_usage`), the relay
    asks for it and strips what that adds, so the client's bytes are what it
    would have got directly. Bodies up to RELAY_REWRITE_MAX_BYTES with a known
    length are read and rewritten at once; longer or chunked ones go through
    `IncludeUsageSplice`, which streams them and appends the option at the end,
    holding back only the closing brace. Either works from the object the policy
    parsed (inspection.Body.document) when it parsed the body, rather than
    parsing or scanning it again.
    """

    transforms = True

    def __init__(self, body: "Body | None" = None) -> None:
        self.body = body
        self.stripper: ChatUsageStripper | None = None
        self.splice: IncludeUsageSplice | None = None

    def rewrite_request(self, source: BinaryIO, length: int | None) -> tuple[BinaryIO, int | None]:
        body = self.body
        # The parsed object describes these bytes only if nothing has replaced them since.
        parsed = body is not None and body.document is not None and source is body.source
        if length is None or length > settings.RELAY_REWRITE_MAX_BYTES:
            decided = None
            if parsed and not body.duplicates:
                document = body.document
                decided = document.get("stream") is True and "stream_options" not in document
            self.splice = IncludeUsageSplice(source, length, needed=decided)
            return self.splice, None  # its length is known only at its end: sent chunked
        if parsed:
            raw = body.raw
            rewritten = _with_include_usage(raw, body.document)
        else:
            raw = source.read(length)
            rewritten = _with_include_usage(raw)
        if rewritten is not None:
            raw = rewritten
            self.stripper = ChatUsageStripper()
        return io.BytesIO(raw), len(raw)

    def on_response_start(self, status: int, headers: Any) -> None:
        # The whole request has been sent by now: the splice knows what it did.
        if self.splice is not None and self.splice.spliced:
            self.stripper = ChatUsageStripper()
        if status >= 400 or media_type(headers.get("content-type", "")) != "text/event-stream":
            self.stripper = None

    def transform(self, chunk: bytes) -> bytes:
        return self.stripper.transform(chunk) if self.stripper else chunk

    def flush(self) -> bytes:
        return self.stripper.flush() if self.stripper else b""

    def audit_fields(self) -> dict[str, Any]:
        if self.stripper is None or (usage := Usage.from_api(
                self.stripper.usage, response=getattr(self.stripper, "response", None))) is None:
            return {}
        fields: dict[str, Any] = {"usage": usage}
        if self.stripper.model:
            fields["response_model"] = self.stripper.model
        return fields


_SPLICE = b',"stream_options":{"include_usage":true}'
_TAIL = re.compile(rb"\}[ \t\r\n]*$")
_HOLD_LIMIT = 64 * 1024


class _KeysSniffer(JsonFieldSniffer):
    """Also remembers every top-level key of a body it scans, whatever its value's size:
    a `stream_options` too large to keep must still count as there."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys: set[str] = set()

    def _end_string(self) -> None:
        was_key = self._depth == 1 and self._buf_is_key
        super()._end_string()
        if was_key and isinstance(self._key, str):
            self.keys.add(self._key)


class IncludeUsageSplice:
    """A request body, streamed, with `"stream_options":{"include_usage":true}` added
    before its closing brace when (and only when) it turns out to need it.

    Appending at the end rather than splicing after the opening brace is what makes
    this safe without holding the body: by the last byte the sniffer has seen every
    top-level key, so the option is added only to a JSON object with `"stream": true`
    and no `stream_options` of its own. A key added up front could be a duplicate of
    one further on, which upstream's parser would read its own way (most keep the
    last), and would turn a non-streamed request into a 400. Anything in doubt
    (not an object, unreadable, trailing bytes past 64 KiB) is sent unchanged and
    the call ends up `unknown`, never $0.

    Held at any time: the closing brace and the blanks after it.

    `needed`: whether the option is to be added, when the caller already knows from
    the parsed body (an object without duplicated keys); the body is then not scanned.
    """

    def __init__(self, source: BinaryIO, length: int | None, needed: bool | None = None) -> None:
        self.source = source
        self.remaining = length
        self.needed = needed
        self.sniffer = _KeysSniffer(frozenset({"stream", "stream_options"}), frozenset({"stream_options"})) \
            if needed is None else None
        self.held = b""
        self.spliced = False
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else 1024 * 1024
        while not self.ended:
            want = size if self.remaining is None else min(size, self.remaining)
            chunk = self.source.read(want) if want else b""
            if not chunk:
                self.ended = True
                return self._end()
            if self.remaining is not None:
                self.remaining -= len(chunk)
            if self.sniffer is not None:
                self.sniffer.feed(chunk)
            data = self.held + chunk
            # The closing brace and the blanks after it, if the data ends so (looked for in
            # the last 64 KiB only: what is held stays bounded).
            m = _TAIL.search(data, max(0, len(data) - _HOLD_LIMIT))
            self.held = data[m.start():] if m else b""
            out = data[:m.start()] if m else data
            if out:
                return out
        return b""

    def _end(self) -> bytes:
        held, self.held = self.held, b""
        if held.startswith(b"}") and self._needed():
            self.spliced = True
            return _SPLICE + held
        return held

    def _needed(self) -> bool:
        if self.needed is not None:
            return self.needed
        values = self.sniffer.values
        complete = self.sniffer.is_object and self.sniffer._depth == 0 and not self.sniffer._in_string
        return bool(complete and values.get("stream") is True
                    and "stream_options" not in values and "stream_options" not in self.sniffer.keys)


def _with_include_usage(raw: bytes, body: Any = None) -> bytes | None:
    """The body with include_usage turned on, or None if it needs no change.

    `body`: `raw` already parsed (json.loads' reading), when the policy parsed it.
    """
    if body is None:
        try:
            body = json.loads(raw)
        except ValueError:
            return None  # upstream will say what is wrong with it
    if not isinstance(body, dict) or body.get("stream") is not True:
        return None
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    if options is None:
        # Splice rather than re-serialise: every other byte stays the client's.
        start = raw.index(b"{") + 1
        return raw[:start] + b'"stream_options":{"include_usage":true},' + raw[start:]
    if not isinstance(options, dict):
        return None
    body = {**body, "stream_options": {**options, "include_usage": True}}  # the parsed object stays as read
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class UpstreamError(Observer):
    """Keeps the head of an upstream error body, for the row's error summary."""

    LIMIT = 4096

    def __init__(self) -> None:
        self.status = 0
        self.head = bytearray()

    def on_response_start(self, status: int, headers: Any) -> None:
        self.status = status

    def on_response_chunk(self, chunk: bytes) -> None:
        if self.status >= 400 and len(self.head) < self.LIMIT:
            self.head += chunk[: self.LIMIT - len(self.head)]

    def audit_fields(self) -> dict[str, Any]:
        if self.status < 400:
            return {}
        try:
            message = json.loads(bytes(self.head))["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = bytes(self.head[:200]).decode("utf-8", "replace")
        return {"error": f"upstream {self.status}: {message}"}


def observers_for(api_path: ApiPath, method: str, body: "Body") -> list[Observer]:
    """The observers every call gets; the families' own follow (pipeline.FAMILY_OBSERVERS)."""
    generating = generates(method, api_path.path)
    observers: list[Observer] = [RequestFields(api_path, body, generating)]
    # Off only to measure what scanning costs (bench/scan_overhead.py). Only a call
    # that generates has usage of its own: a read's `usage` is an echo (operations.py).
    if settings.RELAY_SCAN_RESPONSES and generating:
        if method == "POST" and api_path.path in ("/v1/chat/completions", "/v1/completions") \
                and media_type(body.content_type) == "application/json":
            observers.append(ChatStreamUsage(body))
        observers.append(ResponseUsage(output=_OUTPUT_MODALITY.get(api_path.family, "text")
                                       if api_path.path != "/v1/audio/speech" else "audio"))
    observers.append(UpstreamError())
    return observers


# --- files, uploads and batches -----------------------------------------------------
#
# Each observer keeps the (small) JSON object upstream answered with and, once
# the response has been relayed in full, records what it says: the file a
# user uploaded, the batch they started, a file deleted. A recording failure
# is logged, never turned into an error for a response already sent.

_OBJECT_LIMIT = 1024 * 1024  # file, upload and batch objects are a few hundred bytes; lists a few MB at most


class JsonObjectObserver(Observer):
    """Keeps a successful JSON response body (bounded) for `record`."""

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.ok = False
        self.body = bytearray()

    def on_response_start(self, status: int, headers: Any) -> None:
        # 200/201 only: a 206 is part of an object and a 304 has none (ranged and
        # conditional reads pass through since the fidelity work).
        self.ok = status in (200, 201) and media_type(headers.get("content-type", "")) == "application/json"

    def on_response_chunk(self, chunk: bytes) -> None:
        if self.ok:
            if len(self.body) + len(chunk) > _OBJECT_LIMIT:
                self.ok, self.body = False, bytearray()
            else:
                self.body += chunk

    def on_complete(self, call_id: int) -> None:
        if not self.ok:
            return
        try:
            obj = json.loads(self.body)
            if isinstance(obj, dict):
                self.record(obj, call_id)
        except Exception:  # a malformed object, a refused write: the call row must still close
            log.exception("could not record %s %s", self.ctx.method, self.ctx.path)

    def record(self, obj: dict[str, Any], call_id: int) -> None:
        raise NotImplementedError


class FileCreated(JsonObjectObserver):
    def record(self, obj, call_id):
        file_records.record_file(obj, origin=FileOrigin.FILES_API, user=self.ctx.user, key=self.ctx.key,
                                 call_id=call_id)


class FileDeleted(JsonObjectObserver):
    def record(self, obj, call_id):
        if obj.get("deleted") is True and isinstance(obj.get("id"), str):
            file_records.mark_deleted(obj["id"])


class UploadChanged(JsonObjectObserver):
    def record(self, obj, call_id):
        file_records.record_upload(obj, user=self.ctx.user, key=self.ctx.key)


class UploadPartAdded(JsonObjectObserver):
    def record(self, obj, call_id):
        if isinstance(obj.get("upload_id"), str):
            file_records.count_part(obj["upload_id"])


class BatchSeen(JsonObjectObserver):
    """A batch created (owned by the caller) or retrieved, listed, cancelled (refreshed)."""

    def __init__(self, ctx: CallContext, created: bool) -> None:
        super().__init__(ctx)
        self.created = created

    def record(self, obj, call_id):
        owner = {"user": self.ctx.user, "key": self.ctx.key} if self.created else {}
        items = obj.get("data") if obj.get("object") == "list" else [obj]
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                batch_records.record_batch(item, **owner)


_FILE_ROUTES: list[tuple[str, re.Pattern[str], Any]] = [
    ("POST", re.compile(r"^/v1/files$"), FileCreated),
    ("DELETE", re.compile(rf"^/v1/files/{_ID}$"), FileDeleted),
    ("POST", re.compile(r"^/v1/uploads$"), UploadChanged),
    ("POST", re.compile(rf"^/v1/uploads/{_ID}/(complete|cancel)$"), UploadChanged),
    ("POST", re.compile(rf"^/v1/uploads/{_ID}/parts$"), UploadPartAdded),
    ("POST", re.compile(r"^/v1/batches$"), lambda ctx: BatchSeen(ctx, created=True)),
    ("GET", re.compile(r"^/v1/batches$"), lambda ctx: BatchSeen(ctx, created=False)),
    ("GET", re.compile(rf"^/v1/batches/{_ID}$"), lambda ctx: BatchSeen(ctx, created=False)),
    ("POST", re.compile(rf"^/v1/batches/{_ID}/cancel$"), lambda ctx: BatchSeen(ctx, created=False)),
]


# --- background responses and videos (see audit_app.jobs) -----------------------------
#
# - `POST /v1/responses` whose answer says `"background": true` starts a job
#   owned by the caller and their key; the create call itself is then free, and
#   its usage (a background stream carries it too) is the job's, counted once.
# - Reads of a response or a video (GET, a resumed stream, a cancel) bill the
#   job if they are the first to see it finished.
# - `POST /v1/videos` (and remixes) start video jobs.

_LINE_LIMIT = 8 * 1024 * 1024  # a finished Response echoes its output in one event
# The lifecycle events that carry the whole Response object.
_LIFECYCLE = re.compile(rb'"type"\s*:\s*"response\.(created|queued|in_progress|completed|incomplete|failed|cancelled)"')
_JOB_FIELDS = frozenset({"id", "object", "status", "model", "background"})
# Unescaped quotes cannot occur inside a JSON string, so a body without these bytes
# has no `"background": true` anywhere: no need to parse it (56 us of a Responses call).
_MAYBE_BACKGROUND = re.compile(rb'"background"\s*:\s*true')


class ResponseEvents:
    """The Response objects of a stream's lifecycle events, without keeping the stream.

    `gate`: stop looking once the first object says it is not a background one (a
    plain streamed Response, the common case, then costs one parse).
    """

    def __init__(self, gate: bool) -> None:
        self.gate = gate
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.done = False
        self._line = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        start = 0
        while not self.done:
            end = chunk.find(b"\n", start)
            if end < 0:
                if len(self._line) < _LINE_LIMIT:
                    self._line += chunk[start:]
                return
            if self._line:
                self._line += chunk[start:end]
                line, self._line = bytes(self._line), bytearray()
            else:
                line = chunk[start:end]
            start = end + 1
            if line.startswith(b"data:") and _LIFECYCLE.search(line, 0, 200):
                self._consider(line[5:])

    def _consider(self, data: bytes) -> None:
        try:
            obj = json.loads(data)
        except ValueError:
            return
        response = obj.get("response") if isinstance(obj, dict) else None
        if not isinstance(response, dict):
            return
        if self.first is None:
            self.first = response
            if self.gate and response.get("background") is not True:
                self.done = True
        self.last = response


class ResponseJob(Observer):
    """A Response created, retrieved, streamed again or cancelled.

    A background Response streamed as it is created becomes a job the moment its
    `response.created` event passes, not when the stream ends: the stream may last
    minutes, and a worker killed meanwhile must not leave upstream's work unbilled
    (reconcile_calls then finds the job and leaves the call free).
    """

    def __init__(self, ctx: CallContext, creating: bool) -> None:
        self.ctx = ctx
        self.creating = creating
        self.json: JsonFieldSniffer | None = None
        self.events: ResponseEvents | None = None
        self.ok = False
        self.maybe_background = False
        self.job: Any = None
        self._tail = b""

    def on_response_start(self, status: int, headers: Any) -> None:
        self.ok = status < 400
        kind = media_type(headers.get("content-type", ""))
        if not self.ok:
            return
        if kind == "text/event-stream":
            self.events = ResponseEvents(gate=self.creating)
        elif kind == "application/json":
            self.json = JsonFieldSniffer(_JOB_FIELDS, frozenset({"usage"}))

    def on_response_chunk(self, chunk: bytes) -> None:
        if self.events is not None:
            seen_first = self.events.first is not None
            self.events.feed(chunk)
            if not seen_first and self.events.first is not None and self._background():
                self._record_job(self.ctx.call_id)
                release_connection()  # the stream goes on: no DB connection held while it does
        elif self.json is not None:
            if self.creating and not self.maybe_background:
                self.maybe_background = _MAYBE_BACKGROUND.search(self._tail + chunk) is not None
                self._tail = chunk[-32:]
            self.json.feed(chunk)
            # A creation that is not a background one has nothing more for us.
            if self.creating and self.json._small is None and self.json._values.get("background") is False:
                self.json = None

    def _objects(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if self.events is not None:
            return self.events.first, self.events.last
        if self.json is not None:
            obj = dict(self.json.values)
            return obj, obj
        return None, None

    def _background(self) -> bool:
        if not self.creating or (self.json is not None and not self.maybe_background):
            return False
        first, _ = self._objects()
        return first is not None and first.get("background") is True

    def _record_job(self, call_id: int | None) -> None:
        """Record the job the call created; the call's budget reservation passes to it,
        held until the job is billed (and let go at once: counted twice for the rest of a
        long stream, it would refuse calls that fit)."""
        first, _ = self._objects()
        hold = self.ctx.reservation.amount if self.ctx.reservation is not None else None
        try:
            self.job = jobs.record_job({"object": "response", **first}, user=self.ctx.user,
                                       key=self.ctx.key, call_id=call_id, budget_hold=hold)
            if self.job is not None:
                budgets.settle(self.ctx.reservation)
        except Exception:  # a refused write, a cache away: the stream goes on, the row must still close
            log.exception("could not record response job from %s %s", self.ctx.method, self.ctx.path)
            if self.job is None:  # written before what failed? then it is billed: the call is not
                try:
                    self.job = AsyncJob.objects.filter(job_id=str(first.get("id"))[:128]).first()
                except Exception:
                    pass

    def audit_fields(self) -> dict[str, Any]:
        # Asked as the row closes, before on_complete: a job not recorded yet (a JSON
        # answer, or a write refused at response.created) is recorded now.
        if self._background() and self.job is None:
            self._record_job(self.ctx.call_id)
        if self.job is not None:
            # A job: the call is free, its usage is the job's (billed once, in audit_app.jobs).
            return {"billed": False, "usage": None}
        return {}  # a background job that could not be recorded: the call is billed, usage unknown

    def on_complete(self, call_id: int) -> None:
        if not self.ok:
            return
        first, last = self._objects()
        if last is None or last.get("object", "response") != "response":
            return
        last = {"object": "response", **last}
        try:
            if self.job is not None:
                if last is not first:
                    jobs.seen(last, job=self.job)
            elif not self.creating:
                jobs.seen(last)
        except Exception:  # a refused write: the call row must still close
            log.exception("could not record response job from %s %s", self.ctx.method, self.ctx.path)

    def on_abandoned(self, call_id: int) -> None:
        # A background stream the client left (or upstream cut) after `response.created`:
        # the job runs on upstream and is billed when it ends (recorded all the same, by
        # audit_fields); what was seen of it counts.
        if self.creating:
            self.on_complete(call_id)


class VideoSeen(JsonObjectObserver):
    def __init__(self, ctx: CallContext, creating: bool) -> None:
        super().__init__(ctx)
        self.creating = creating

    def record(self, obj, call_id):
        if self.creating:
            # The call's budget reservation (a new video's) passes to the job, held until billed.
            hold = self.ctx.reservation.amount if self.ctx.reservation is not None else None
            jobs.record_job(obj, user=self.ctx.user, key=self.ctx.key, call_id=call_id, budget_hold=hold)
            return
        items = obj.get("data") if obj.get("object") == "list" else [obj]
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("object") == "video":
                jobs.seen(item)

    def on_abandoned(self, call_id: int) -> None:
        # The client left as the answer arrived: the video is made all the same, so it is
        # recorded (and held, and billed) if upstream's whole answer was read.
        if self.creating:
            self.on_complete(call_id)


_JOB_ROUTES: list[tuple[str, re.Pattern[str], Any]] = [
    ("POST", re.compile(r"^/v1/responses$"), lambda ctx: ResponseJob(ctx, creating=True)),
    ("GET", re.compile(rf"^/v1/responses/{_ID}$"), lambda ctx: ResponseJob(ctx, creating=False)),
    ("POST", re.compile(rf"^/v1/responses/{_ID}/cancel$"), lambda ctx: ResponseJob(ctx, creating=False)),
    ("POST", re.compile(r"^/v1/videos$"), lambda ctx: VideoSeen(ctx, creating=True)),
    ("POST", re.compile(rf"^/v1/videos/{_ID}/remix$"), lambda ctx: VideoSeen(ctx, creating=True)),
    ("POST", re.compile(r"^/v1/videos/(edits|extensions)$"), lambda ctx: VideoSeen(ctx, creating=True)),
    ("GET", re.compile(r"^/v1/videos$"), lambda ctx: VideoSeen(ctx, creating=False)),
    ("GET", re.compile(rf"^/v1/videos/{_ID}$"), lambda ctx: VideoSeen(ctx, creating=False)),
]


def family_observers(api_path: ApiPath, method: str, ctx: CallContext) -> list[Observer]:
    """The file, batch and job observers whose routes match the call, in the tables' order."""
    return [make(ctx) for routes in (_FILE_ROUTES, _JOB_ROUTES)
            for m, pattern, make in routes if m == method and pattern.match(api_path.path)]
