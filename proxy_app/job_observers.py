"""Background Responses and videos, as the pipeline relays them (see audit_app.jobs).

- `POST /v1/responses` whose answer says `"background": true` starts a job
  owned by the caller and their key; the create call itself is then free, and
  its usage (a background stream carries it too) is the job's, counted once.
- Reads of a response or a video (GET, a resumed stream, a cancel) bill the
  job if they are the first to see it finished.
- `POST /v1/videos` (and remixes) start video jobs.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

from audit_app import jobs
from audit_app.recorder import CallContext

from .file_observers import JsonObjectObserver
from .observers import Observer
from .paths import ApiPath
from .policy import media_type
from relay_project.lib.sniff import JsonFieldSniffer

log = logging.getLogger(__name__)
_ID = r"([A-Za-z0-9_.:-]+)"
_LINE_LIMIT = 8 * 1024 * 1024  # a finished Response echoes its output in one event
# The lifecycle events that carry the whole Response object.
_LIFECYCLE = re.compile(rb'"type"\s*:\s*"response\.(created|queued|in_progress|completed|incomplete|failed|cancelled)"')
_FIELDS = frozenset({"id", "object", "status", "model", "background"})
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
    """A Response created, retrieved, streamed again or cancelled."""

    def __init__(self, ctx: CallContext, creating: bool) -> None:
        self.ctx = ctx
        self.creating = creating
        self.json: JsonFieldSniffer | None = None
        self.events: ResponseEvents | None = None
        self.ok = False
        self.maybe_background = False
        self._tail = b""

    def on_response_start(self, status: int, headers: Any) -> None:
        self.ok = status < 400
        kind = media_type(headers.get("content-type", ""))
        if not self.ok:
            return
        if kind == "text/event-stream":
            self.events = ResponseEvents(gate=self.creating)
        elif kind == "application/json":
            self.json = JsonFieldSniffer(_FIELDS, frozenset({"usage"}))

    def on_response_chunk(self, chunk: bytes) -> None:
        if self.events is not None:
            self.events.feed(chunk)
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
        return self.creating and first is not None and first.get("background") is True

    def audit_fields(self) -> dict[str, Any]:
        if self._background():
            # A job: the call is free, its usage is the job's (billed once, in audit_app.jobs).
            return {"billed": False, "usage": None}
        return {}

    def on_complete(self, call_id: int) -> None:
        if not self.ok:
            return
        first, last = self._objects()
        if last is None or last.get("object", "response") != "response":
            return
        last = {"object": "response", **last}
        try:
            if self._background():
                job = jobs.record_job({"object": "response", **first}, user=self.ctx.user,
                                      key=self.ctx.key, call_id=call_id)
                if job is not None and last is not first:
                    jobs.seen(last, job=job)
            elif not self.creating:
                jobs.seen(last)
        except Exception:  # a refused write: the call row must still close
            log.exception("could not record response job from %s %s", self.ctx.method, self.ctx.path)


class VideoSeen(JsonObjectObserver):
    def __init__(self, ctx: CallContext, creating: bool) -> None:
        super().__init__(ctx)
        self.creating = creating

    def record(self, obj, call_id):
        if self.creating:
            jobs.record_job(obj, user=self.ctx.user, key=self.ctx.key, call_id=call_id)
            return
        items = obj.get("data") if obj.get("object") == "list" else [obj]
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("object") == "video":
                jobs.seen(item)


_ROUTES: list[tuple[str, re.Pattern[str], Any]] = [
    ("POST", re.compile(r"^/v1/responses$"), lambda ctx: ResponseJob(ctx, creating=True)),
    ("GET", re.compile(rf"^/v1/responses/{_ID}$"), lambda ctx: ResponseJob(ctx, creating=False)),
    ("POST", re.compile(rf"^/v1/responses/{_ID}/cancel$"), lambda ctx: ResponseJob(ctx, creating=False)),
    ("POST", re.compile(r"^/v1/videos$"), lambda ctx: VideoSeen(ctx, creating=True)),
    ("POST", re.compile(rf"^/v1/videos/{_ID}/remix$"), lambda ctx: VideoSeen(ctx, creating=True)),
    ("GET", re.compile(r"^/v1/videos$"), lambda ctx: VideoSeen(ctx, creating=False)),
    ("GET", re.compile(rf"^/v1/videos/{_ID}$"), lambda ctx: VideoSeen(ctx, creating=False)),
]


def job_observers(api_path: ApiPath, method: str, ctx: CallContext) -> list[Observer]:
    return [make(ctx) for m, pattern, make in _ROUTES if m == method and pattern.match(api_path.path)]
