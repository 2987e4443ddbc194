"""The forwarding pipeline that serves every relayed /v1 path.

authenticate -> policy -> open the audit row -> forward -> pass the response
through while observers watch it -> close the audit row.

Authentication and the whole request policy (the body's checks and the rate
limit too) run in the DRF view, proxy_app.views.RelayView; this module does the
rest, with the call's audit owner (proxy_app.call_audit.CallAudit) opening and
closing its row. Bodies move in chunks both ways: nothing here holds a whole
body (beyond the small one the policy may have read: inspection.Body).
"""
from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import requests
import urllib3
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse

from audit_app.models import Outcome
from audit_app.recorder import CallContext, release_connection

from . import headers as header_rules
from audit_app import operations
from relay_project.lib import upstream

from . import observers, realtime_http, telemetry
from .call_audit import CallAudit
from .errors import BodyTooLarge, RelayError, UpstreamTimeout, UpstreamUnreachable
from .inspection import Body, BodyTimeout, read as read_body
from .observers import Observer, observers_for
from .paths import ApiPath
from .realtime_http import location as realtime_location

log = logging.getLogger(__name__)

# Bytes per read of a response. Every chunk costs two syscalls and a pass through
# the observers; at 64 KiB a 512 MiB transfer ran at a third of the speed.
CHUNK = 256 * 1024
# Request bodies of known length are read in larger steps: gunicorn's reader
# receives up to 1 MiB at once and copies whatever it holds beyond each read back
# into its buffer, so 256 KiB reads from a 1 MiB buffer copied each byte several
# times (two thirds of the relay's CPU during an upload). A chunked body keeps
# CHUNK: each read waits until it is full, and such a body may trickle in.
REQUEST_CHUNK = 1024 * 1024
# Responses at most this large (with a known length) keep their DB connection;
# anything longer or open-ended gives it back while it streams.
_SHORT_RESPONSE = 256 * 1024
_SSE_ERROR = (
    b'event: error\ndata: {"error": {"message": "The OpenAI API closed the stream early.", '
    b'"type": "server_error", "param": null, "code": "upstream_disconnected"}}\n\n'
)


class RequestBody:
    """The client's body as an iterable for `requests`, read and observed chunk by chunk.

    `__len__` gives requests the client's Content-Length, so upstream gets the
    same framing; 0 (unknown) makes requests send it chunked.
    """

    def __init__(self, source: BinaryIO, length: int | None, observers: list[Observer]) -> None:
        self.source = source
        self.length = length
        self.observers = observers
        self.bytes_read = 0
        self.error: RelayError | None = None
        self.read_size = REQUEST_CHUNK if length else CHUNK

    def __len__(self) -> int:
        return self.length or 0

    def __bool__(self) -> bool:
        return True  # a body of unknown length is still a body

    def __iter__(self) -> Iterator[bytes]:
        limit = settings.RELAY_MAX_BODY_BYTES
        while True:
            try:
                chunk = read_body(self.source, self.read_size)
            except BodyTimeout as exc:
                self.error = exc
                raise exc from None
            except Exception as exc:  # the server's own parse errors, a client gone mid-body
                self.error = RelayError(f"The request body could not be read: {exc}", code="invalid_body")
                raise self.error from None
            if not chunk:
                return
            self.bytes_read += len(chunk)
            if self.bytes_read > limit:
                # A chunked body has no Content-Length to refuse up front.
                self.error = BodyTooLarge(f"The request body exceeds the relay's limit of {limit} bytes.")
                raise self.error
            for observer in self.observers:
                observer.on_request_chunk(chunk)
            yield chunk


class RelayedBody:
    """Upstream's response body on its way to the client.

    Django calls `close()` when the response is done, normally or not; that is
    where the call's audit owner finishes the row and the upstream connection is let go.
    """

    def __init__(self, audit: CallAudit, resp: requests.Response,
                 body: RequestBody | None, observers: list[Observer]) -> None:
        self.audit = audit
        self.call_id = audit.call_id
        self.ctx = audit.ctx
        self.resp = resp
        self.body = body
        self.observers = observers
        self.is_sse = resp.headers.get("content-type", "").startswith("text/event-stream")
        self.bytes_out = 0
        self.finished = False
        self.broken: str | None = None
        self.closed = False
        self._gen = self._relay()
        telemetry.OPEN_STREAMS.inc()

    def __iter__(self) -> Iterator[bytes]:
        return self._gen

    def _relay(self) -> Iterator[bytes]:
        raw = self.resp.raw
        transformers = [o for o in self.observers if o.transforms]
        try:
            while True:
                chunk = raw.read1(CHUNK, decode_content=False)
                if not chunk:
                    break
                for observer in self.observers:
                    observer.on_response_chunk(chunk)
                for transformer in transformers:
                    chunk = transformer.transform(chunk)
                if chunk:  # an empty write would end a chunked response early
                    if not self.bytes_out:  # the call's time to first byte (ApiCall.ttfb_ms)
                        self.ctx.first_byte_at = time.monotonic()
                    self.bytes_out += len(chunk)
                    yield chunk
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self.broken = f"upstream broke off the response: {type(exc).__name__}"
            if self.is_sse:
                yield _SSE_ERROR
            # Dropping the client connection, not ending cleanly, is what tells
            # the client its response is incomplete. ECONNRESET is what the
            # server quietly treats as a dropped peer.
            raise ConnectionResetError(errno.ECONNRESET, "upstream closed the response early") from None
        for transformer in transformers:
            if rest := transformer.flush():
                self.bytes_out += len(rest)
                yield rest
        if self.ctx.first_byte_at is None:  # an empty body: the headers were the first bytes
            self.ctx.first_byte_at = time.monotonic()
        self.finished = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        telemetry.OPEN_STREAMS.dec()
        self._gen.close()
        # Closing an unfinished response drops its socket at once rather than
        # reading the rest: a client that left should stop upstream work too.
        self.resp.close()
        status = self.resp.status_code
        if self.broken:
            outcome, error = Outcome.FAILED, self.broken
        elif not self.finished:
            outcome, error = Outcome.CLIENT_CLOSED, "client closed the connection before the response ended"
        else:
            outcome = Outcome.OK if status < 400 else Outcome.UPSTREAM_ERROR
            error = ""
        fields = collect_fields(self.observers)
        billed = fields.pop("billed", None)
        if billed is None:
            # Billed by OpenAI: a generating operation it accepted, even when the stream
            # was cut or the client left (generation went on upstream).
            billed = operations.billed_on_call(self.ctx.method, self.ctx.path) and status < 400
        for observer in self.observers:
            try:
                if self.finished:
                    observer.on_complete(self.call_id)
                else:
                    observer.on_abandoned(self.call_id)
            except Exception:  # an observer's bug must never cost the call its audit row
                log.exception("observer %s failed on call %s", type(observer).__name__, self.call_id)
        upstream_request_id = self.resp.headers.get("x-request-id", "")[:128]
        bytes_in = self.body.bytes_read if self.body else 0
        self.audit.finish(
            outcome=outcome, status=status, upstream_status=status,
            upstream_request_id=upstream_request_id, bytes_in=bytes_in, bytes_out=self.bytes_out,
            billed=billed, **fields, **({"error": error} if error else {}),
            telemetry_fields={"model": fields.get("model"), "upstream_request_id": upstream_request_id,
                              "error": error or fields.get("error")},
        )


def forward(request: HttpRequest, api_path: ApiPath, audit: CallAudit, inspected: Body) -> StreamingHttpResponse:
    """Open the row, send the call upstream and start relaying its answer.

    Every rule has passed by now (RelayView's permissions and throttle); `inspected`
    is the body as the policy read it, forwarded from there (its copy when it was
    read, else the client's stream) and read by the observers.
    """
    ctx = audit.ctx
    observers = _observers(api_path, request.method, inspected, ctx)
    source, length = inspected.source, inspected.length
    audit.open()  # 503 when the row cannot be written: nothing goes upstream unaudited
    body = None
    if source is not None and not inspected.held:
        release_connection()  # again, while the client's body streams upstream; close_call takes one back
    try:
        if source is not None:
            for observer in observers:
                source, length = observer.rewrite_request(source, length)
            body = RequestBody(source, length, observers)
        telemetry.forwarding(ctx)
        resp = _send(request, api_path, body, ctx.key.openai_project if ctx.key is not None else "")
    except Exception as exc:
        relay_exc = body.error if body is not None and body.error else _map_send_error(exc)
        error = relay_exc.message if isinstance(relay_exc, RelayError) else type(exc).__name__
        # Sent but never answered: upstream may have generated (and billed) all the same.
        billed = operations.billed_on_call(ctx.method, ctx.path) and isinstance(exc, requests.exceptions.ReadTimeout)
        audit.fail(
            status=getattr(relay_exc, "status_code", 500), error=error,
            bytes_in=body.bytes_read if body else 0, billed=billed,
            **{k: v for k, v in collect_fields(observers).items() if k not in ("error", "billed")},
        )
        raise relay_exc from None  # the view's reject() finds the row closed: nothing written twice
    telemetry.upstream_answered(ctx)

    for observer in observers:
        observer.on_response_start(resp.status_code, resp.headers)
    relayed = RelayedBody(audit, resp, body, observers)
    response = StreamingHttpResponse(relayed, status=resp.status_code)
    # Django sets a default content type; upstream's (or none) is what counts.
    del response["Content-Type"]
    for name, value in header_rules.response_headers(resp.raw.headers.items()):
        response[name] = value
    response["x-relay-request-id"] = ctx.request_id
    if api_path.path == "/v1/realtime/calls" and (where := realtime_location(resp.headers.get("location", ""))):
        response["Location"] = where  # the new call's URL: how the client hangs it up
    if relayed.is_sse:
        response["X-Accel-Buffering"] = "no"  # tell nginx & co. not to buffer the stream
        if any(o.transforms for o in observers) and response.has_header("Content-Length"):
            del response["Content-Length"]  # bytes may be taken out on the way: upstream's length would lie
    content_length = resp.headers.get("content-length", "")
    if relayed.is_sse or not content_length.isdigit() or int(content_length) > _SHORT_RESPONSE:
        release_connection()
    return response


# What each endpoint family adds to every call's observers, after the common ones
# (observers.observers_for), in this order. Each picks its own paths.
FAMILY_OBSERVERS = (observers.family_observers, realtime_http.realtime_observers)


def _observers(api_path: ApiPath, method: str, inspected: Body, ctx: CallContext) -> list[Observer]:
    observers = observers_for(api_path, method, inspected)
    for family in FAMILY_OBSERVERS:
        observers += family(api_path, method, ctx)
    return observers


def _send(request: HttpRequest, api_path: ApiPath, body: RequestBody | None, project: str) -> requests.Response:
    # Prepared and sent without Session.prepare_request/Session.send: the session
    # has no headers, auth, cookies or hooks to merge in (upstream.session() clears
    # them and its jar refuses every cookie), and that merging and cookie
    # extraction cost about a twentieth of the relay's CPU per call. The adapter
    # still maps errors to requests' exceptions.
    prepared = requests.PreparedRequest()
    prepared.prepare_method(request.method)
    prepared.prepare_url(upstream.url_for(api_path.upstream_suffix, ""), None)
    prepared.prepare_headers(header_rules.request_headers_from_meta(request.META, project))
    prepared.prepare_body(body, None)
    # The client's query string goes upstream byte for byte: requests would
    # re-quote it (and reorder nothing, but normalise escapes) if given to it.
    query = request.META.get("QUERY_STRING", "")
    if query:
        prepared.url = f"{prepared.url}?{query}"
    adapter = upstream.session().get_adapter(prepared.url)
    return adapter.send(prepared, stream=True, timeout=upstream.timeouts())


def _map_send_error(exc: Exception) -> Exception:
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout)):
        return UpstreamTimeout()
    if isinstance(exc, requests.exceptions.ConnectionError):
        return UpstreamUnreachable()
    if isinstance(exc, RelayError):
        return exc
    log.exception("relay: unexpected error sending upstream", exc_info=exc)
    return RelayError("The relay failed to forward this request.", status=502,
                      code="relay_forward_failed")


def collect_fields(observers: list[Observer]) -> dict[str, Any]:
    """What the observers learned, merged in order (later ones win)."""
    fields: dict[str, Any] = {}
    for observer in observers:
        fields.update(observer.audit_fields())
    return fields
