"""Files, uploads and batches, as the pipeline relays them.

Each observer keeps the (small) JSON object upstream answered with and, once
the response has been relayed in full, records what it says: the file a
user uploaded, the batch they started, a file deleted. A recording failure
is logged, never turned into an error for a response already sent.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

import requests
from rest_framework.permissions import BasePermission

from audit_app import batch_records, file_records
from audit_app.models import FileOrigin, FileRecord
from audit_app.recorder import CallContext

from relay_project.lib import upstream
from .errors import PolicyDenied, UpstreamUnreachable
from .observers import Observer
from .paths import ApiPath
from .policy import media_type

log = logging.getLogger(__name__)
_LIMIT = 1024 * 1024  # file, upload and batch objects are a few hundred bytes; lists a few MB at most
_ID = r"([A-Za-z0-9_.:-]+)"


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
            if len(self.body) + len(chunk) > _LIMIT:
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


_ROUTES: list[tuple[str, re.Pattern[str], Any]] = [
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


def file_observers(api_path: ApiPath, method: str, ctx: CallContext) -> list[Observer]:
    return [make(ctx) for m, pattern, make in _ROUTES if m == method and pattern.match(api_path.path)]


# --- the user_data rule -----------------------------------------------------------

_CONTENT = re.compile(rf"^/v1/files/{_ID}/content$")


def purpose_of(file_id: str) -> str | None:
    """From the relay's record, or for a file it never saw, from upstream's metadata.

    None when upstream does not know the file (its content request will 404 too).
    When upstream cannot be asked, the relay refuses rather than guess: the rule
    protects personal files, so it fails closed.
    """
    known = FileRecord.objects.filter(file_id=file_id).values_list("purpose", flat=True).first()
    if known:
        return known
    try:
        resp = upstream.get(f"/files/{file_id}")
    except requests.RequestException:
        raise PurposeUnknown() from None
    if resp.status_code in (400, 404):
        return None
    try:
        obj = resp.json() if resp.status_code == 200 else None
    except ValueError:
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("purpose"), str):
        raise PurposeUnknown()
    file_records.record_file(obj, origin=FileOrigin.UPSTREAM_ONLY)
    return obj["purpose"]


class PurposeUnknown(UpstreamUnreachable):
    default_code = "file_purpose_unknown"
    default_detail = ("The relay could not look up this file's purpose upstream, so it cannot tell "
                      "whether its content may be downloaded. Try again later.")


class NoUserDataFiles(BasePermission):
    """The content of a file with purpose `user_data` (personal files) is never downloaded
    through the relay (403); when its purpose cannot be looked up, refused too (502)."""

    def has_permission(self, request, view) -> bool:
        refuse_user_data_content(view.api_path, view.forwarded.method, view.ctx)
        return True


def refuse_user_data_content(api_path: ApiPath, method: str, ctx: CallContext) -> None:
    match = _CONTENT.match(api_path.path)
    if method == "GET" and match and purpose_of(match.group(1)) == "user_data":
        raise PolicyDenied(
            "The content of files with purpose 'user_data' cannot be downloaded through the relay.",
            code="user_data_content",
        )
