"""A fake OpenAI API: a real threaded HTTP server on 127.0.0.1 for the tests and benchmarks.

Only the standard library. Bodies are read and hashed in chunks (tests push
512 MiB through it) and large downloads are generated on the fly. Faults are
injected per path prefix: a status and body, a hang, or a connection dropped
mid-stream. Run standalone for benchmarks: `python tests/fake_openai.py --port 9999`.

File downloads honour one byte range (`Range`, `If-Range`) and revalidation
(`If-None-Match`, `If-Modified-Since`) as RFC 9110 says, with a strong ETag
and a Last-Modified per file, so tests can check what the relay passes on.

Usage numbers are fixed, so that tests can work out costs by hand:
Responses and chat report 12 input tokens (4 cached), N output tokens where N
is the number of streamed deltas + 2 (JSON: 7), reasoning 0; embeddings 3
tokens per input; images 50 input / 4160 output tokens per image.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import secrets
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 * 1024
KEEP_BODY = 1024 * 1024
PATTERN = bytes(range(256)) * 256  # 64 KiB of deterministic download bytes
IN_TOKENS, CACHED_TOKENS, JSON_OUT_TOKENS = 12, 4, 7
VIDEO_BYTES = 3 * 1024 * 1024 + 5
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body_sha256: str = ""
    body_length: int = 0
    body: bytes | None = None
    content_type: str = ""

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Fault:
    prefix: str
    method: str | None
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float | None = None
    drop_after_events: int | None = None
    times: int = 1
    # A download that sends this many bytes, then stalls for `hang` seconds and drops.
    stall_after_bytes: int | None = None


def now() -> int:
    return int(time.time())


def usage_responses(output_tokens: int) -> dict:
    return {"input_tokens": IN_TOKENS, "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": IN_TOKENS + output_tokens}


def usage_chat(output_tokens: int) -> dict:
    return {"prompt_tokens": IN_TOKENS, "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
            "completion_tokens": output_tokens, "completion_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": IN_TOKENS + output_tokens}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog: socketserver passes it to listen() inside the constructor,
    # so it must be set on the class. At the default of 5, the load test's burst of
    # new relay connections overflowed it, and connections the kernel could not
    # queue failed a second later as 502s.
    request_queue_size = 1024


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sse_delay_first = 0.0
        self.sse_delay_between = 0.0
        # Set, it ends every SSE pause at once: a test that paced a stream lets it finish.
        self.unpaced = threading.Event()
        self.sse_event_count = 3
        # How a streamed Response ends: "completed", "incomplete" or "failed" (all carry usage).
        self.responses_end = "completed"
        # A fixed chat completion id, so that tests can compare two streams byte for byte.
        self.chat_stream_id: str | None = None
        # The last SSE bodies generated, whole, oldest first (bounded: benchmarks stream for long).
        self.sse_sent: deque[bytes] = deque(maxlen=16)
        self.requests: list[RecordedRequest] = []
        self.files: dict[str, dict] = {}
        self.file_projects: dict[str, str] = {}  # file id -> the OpenAI-Project it was uploaded in
        self.file_content: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.uploads: dict[str, dict] = {}
        # Stored Responses (store defaults to true, as upstream), chat completions and videos.
        self.responses: dict[str, dict] = {}
        self.chat_completions: dict[str, dict] = {}
        self.videos: dict[str, dict] = {}
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.streams_cut_short = 0  # SSE responses whose client went away mid-stream
        self.stalled_downloads = 0
        self.latency = 0.0  # seconds added before every answer
        # Headers added to every answer (Deprecation, Sunset, Location, ...).
        self.extra_headers: dict[str, str] = {}
        # What the next generating answers report instead of the fixed usage (the pricing
        # tests' shapes): {"usage": {...}, "model": str, "service_tier": str,
        # "output": [items], "tools": [tools]}; used by Responses, chat, speech and images,
        # streamed or not.
        self.scenario: dict[str, Any] | None = None
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = _Server((host, port), handler)
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeUpstream":
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.files.clear()
            self.file_projects.clear()
            self.file_content.clear()
            self.batches.clear()
            self.uploads.clear()
            self.responses.clear()
            self.chat_completions.clear()
            self.videos.clear()
            self.streams_cut_short = 0
            self.stalled_downloads = 0
            self.sse_sent.clear()
        self.sse_delay_first = self.sse_delay_between = self.latency = 0.0
        self.unpaced.clear()
        self.extra_headers = {}
        self.sse_event_count = 3
        self.responses_end = "completed"
        self.chat_stream_id = None
        self.scenario = None

    def inject(self, path_prefix: str, *, method: str | None = None, status: int | None = None,
               body: Any = None, headers: dict[str, str] | None = None, hang: float | None = None,
               drop_after_events: int | None = None, times: int = 1,
               stall_after_bytes: int | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(path_prefix, method, status, body, headers or {}, hang,
                                     drop_after_events, times, stall_after_bytes))

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.prefix) and fault.method in (None, method):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    @staticmethod
    def unused_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    # --- files and batches ---------------------------------------------------

    def add_file(self, *, filename: str, purpose: str, content: bytes | None = None,
                 size: int | None = None) -> dict:
        file_id = "file-" + secrets.token_hex(12)
        size = len(content) if content is not None else (size or 0)
        obj = {"id": file_id, "object": "file", "bytes": size, "created_at": now(),
               "filename": filename, "purpose": purpose, "status": "processed",
               "expires_at": None, "status_details": None}
        with self.lock:
            self.files[file_id] = obj
            if content is not None:
                self.file_content[file_id] = content
        return obj

    def advance_batch(self, batch_id: str, status: str, *, completed: int | None = None,
                      failed: int | None = None, output_lines: list[dict] | None = None,
                      error_lines: list[dict] | None = None) -> dict:
        batch = self.batches[batch_id]
        batch["status"] = status
        stamp = {"in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
                 "failed": "failed_at", "expired": "expired_at", "cancelling": "cancelling_at",
                 "cancelled": "cancelled_at"}.get(status)
        if stamp:
            batch[stamp] = now()
        counts = batch["request_counts"]
        if completed is not None:
            counts["completed"] = completed
        if failed is not None:
            counts["failed"] = failed
        counts["total"] = max(counts["total"], counts["completed"] + counts["failed"])
        if output_lines:
            # Finished batches report their usage, as upstream's do: a read that priced it
            # would count the batch again.
            usages = [line["response"]["body"].get("usage") or {} for line in output_lines]
            batch["usage"] = {"input_tokens": sum(u.get("prompt_tokens", 0) for u in usages),
                              "output_tokens": sum(u.get("completion_tokens", 0) for u in usages),
                              "total_tokens": sum(u.get("total_tokens", 0) for u in usages),
                              "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens_details": {"reasoning_tokens": 0}}
        for lines, key in ((output_lines, "output_file_id"), (error_lines, "error_file_id")):
            if lines is not None:
                content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
                batch[key] = self.add_file(filename=f"{batch_id}_{key}.jsonl", purpose="batch_output",
                                           content=content)["id"]
        return batch

    def advance_response(self, response_id: str, status: str, *, output_tokens: int | None = None) -> dict:
        """Move a background Response on: queued -> in_progress -> completed / incomplete /
        failed / cancelled. Its usage appears when it ends (usage_responses(output_tokens),
        default JSON_OUT_TOKENS); a failed or cancelled one may pass output_tokens=None."""
        with self.lock:
            obj = self.responses[response_id]
            obj["status"] = status
            if status in ("completed", "incomplete", "failed", "cancelled"):
                ended_with_usage = status in ("completed", "incomplete") or output_tokens is not None
                tokens = output_tokens if output_tokens is not None else JSON_OUT_TOKENS
                obj["usage"] = usage_responses(tokens) if ended_with_usage else None
                if status in ("completed", "incomplete"):
                    obj["output"] = [_message("Hello from the background.")]
            return obj

    def advance_video(self, video_id: str, status: str) -> dict:
        with self.lock:
            obj = self.videos[video_id]
            obj["status"] = status
            obj["progress"] = 100 if status == "completed" else obj["progress"]
            if status == "completed":
                obj["completed_at"] = now()
            return obj

    @staticmethod
    def make_batch_output_line(custom_id: str, model: str, prompt_tokens: int, completion_tokens: int,
                               cached_tokens: int = 0) -> dict:
        return {
            "id": "batch_req_" + secrets.token_hex(8), "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": "req_" + secrets.token_hex(8), "body": {
                "id": "chatcmpl-" + secrets.token_hex(6), "object": "chat.completion", "created": now(),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens,
                          "prompt_tokens_details": {"cached_tokens": cached_tokens}}}},
            "error": None,
        }

    @staticmethod
    def make_batch_error_line(custom_id: str, code: str = "invalid_request", message: str = "bad") -> dict:
        return {"id": "batch_req_" + secrets.token_hex(8), "custom_id": custom_id,
                "response": {"status_code": 400, "request_id": "req_x", "body": {
                    "error": {"message": message, "type": "invalid_request_error", "param": None,
                              "code": code}}},
                "error": None}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeUpstream

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    # --- plumbing --------------------------------------------------------------

    def _read_body(self, sink=None) -> RecordedRequest:
        digest, total, kept = hashlib.sha256(), 0, bytearray()

        def take(data: bytes) -> None:
            nonlocal total
            digest.update(data)
            total += len(data)
            if len(kept) <= KEEP_BODY:
                kept.extend(data)
            if sink is not None:
                sink(data)

        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                line = self.rfile.readline()
                if not line:
                    raise ConnectionError("body ended early")  # an aborted request is not recorded
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(CHUNK, remaining))
                    if not data:
                        raise ConnectionError("body ended early")
                    take(data)
                    remaining -= len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(CHUNK, remaining))
                if not data:
                    raise ConnectionError("body ended early")
                take(data)
                remaining -= len(data)
        req = RecordedRequest(
            method=self.command, path=self.path, headers=list(self.headers.items()),
            body_sha256=digest.hexdigest(), body_length=total,
            body=bytes(kept) if total <= KEEP_BODY else None,
            content_type=self.headers.get("Content-Type", ""),
        )
        with self.fake.lock:
            self.fake.requests.append(req)
        return req

    def _common_headers(self) -> None:
        self.send_header("x-request-id", "req_" + secrets.token_hex(8))
        self.send_header("openai-processing-ms", "3")
        self.send_header("openai-version", "2020-10-01")
        self.send_header("x-ratelimit-limit-requests", "10000")
        self.send_header("x-ratelimit-remaining-requests", "9999")
        self.send_header("x-upstream-secret-header", "leak")
        self.send_header("set-cookie", "upstream=1; Path=/")
        for name, value in self.fake.extra_headers.items():
            self.send_header(name, value)

    def send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        self._common_headers()
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status: int, message: str, code: str | None = None) -> None:
        self.send_json({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                  "code": code}}, status)

    def _not_modified(self, etag: str, last_modified: float) -> bool:
        """RFC 9110 13.2.2: If-None-Match decides when present, else If-Modified-Since."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
            return "*" in tags or etag in tags
        since = self.headers.get("If-Modified-Since")
        if since:
            try:
                return parsedate_to_datetime(since).timestamp() >= int(last_modified)
            except (TypeError, ValueError):
                return False
        return False

    def _byte_range(self, total: int, etag: str, last_modified: str) -> tuple[int, int] | None | bool:
        """(first, last) of the one range asked for, None for the whole body, False if unsatisfiable."""
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if not wanted or (if_range is not None and if_range not in (etag, last_modified)):
            return None
        match = _RANGE.match(wanted.strip())
        if not match or match.group(1) == match.group(2) == "":
            return None  # several ranges or another unit: answering in full is allowed
        first, last = match.group(1), match.group(2)
        if first == "":
            length = int(last)
            return (max(total - length, 0), total - 1) if length and total else False
        start = int(first)
        end = min(int(last), total - 1) if last else total - 1
        return (start, end) if start < total and start <= end else False

    def send_bytes(self, total: int, content_type: str, content: bytes | None = None,
                   validator: str | None = None) -> None:
        """A download; with a `validator` (a file's id), also ranges and revalidation."""
        start, end, status = 0, total - 1, 200
        extra: dict[str, str] = {}
        if validator is not None:
            modified = 1700000000.0
            etag = f'"{hashlib.sha256(validator.encode()).hexdigest()[:16]}-{total}"'
            last_modified = formatdate(modified, usegmt=True)
            extra = {"Accept-Ranges": "bytes", "ETag": etag, "Last-Modified": last_modified}
            if self.command in ("GET", "HEAD") and self._not_modified(etag, modified):
                self.send_response(304)
                self._common_headers()
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                return
            span = self._byte_range(total, etag, last_modified) if self.command == "GET" else None
            if span is False:
                self.send_response(416)
                self._common_headers()
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Type", "application/json")
                data = json.dumps({"error": {"message": "Range Not Satisfiable", "type": "invalid_request_error",
                                             "param": None, "code": "range_not_satisfiable"}}).encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if span:
                start, end, status = span[0], span[1], 206
                extra["Content-Range"] = f"bytes {start}-{end}/{total}"
        length = end - start + 1
        self.send_response(status)
        self._common_headers()
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if status == 206:
            if content is not None:
                self.wfile.write(content[start:end + 1])
                return
            pos = start
            while pos <= end:  # PATTERN's byte at offset i is i % 256
                piece = PATTERN[pos % 256: pos % 256 + min(len(PATTERN) - 256, end + 1 - pos)]
                self.wfile.write(piece)
                pos += len(piece)
            return
        if content is not None and getattr(self, "stall", None) is not None:
            self.wfile.write(content[: self.stall.stall_after_bytes])
            self.wfile.flush()
            with self.fake.lock:
                self.fake.stalled_downloads += 1
            time.sleep(self.stall.hang or 0)
            self.close_connection = True
            return
        if content is not None:
            self.wfile.write(content)
            return
        sent = 0
        while sent < total:
            piece = PATTERN[: min(len(PATTERN), total - sent)]
            self.wfile.write(piece)
            sent += len(piece)

    def send_sse(self, events: list[bytes], drop_after: int | None = None) -> None:
        self.send_response(200)
        self._common_headers()
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        with self.fake.lock:
            self.fake.sse_sent.append(b"".join(events))
        try:
            for i, event in enumerate(events):
                if drop_after is not None and i == drop_after:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                pause = self.fake.sse_delay_first if i == 0 else self.fake.sse_delay_between
                if pause:
                    self.fake.unpaced.wait(pause)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            with self.fake.lock:
                self.fake.streams_cut_short += 1
            self.close_connection = True

    # --- dispatch ----------------------------------------------------------------

    def handle_any(self) -> None:
        path = urlsplit(self.path).path
        fault = self.fake.take_fault(self.command, path)
        sink = None
        if self.command == "POST" and path == "/v1/files":
            sink = _MultipartFile(self.headers.get("Content-Type", ""))
        try:
            req = self._read_body(sink)
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        self.stall = fault if fault is not None and fault.stall_after_bytes is not None else None
        if fault is not None and self.stall is None:
            if fault.hang:
                time.sleep(fault.hang)
            if fault.status is not None:
                return self.send_json(fault.body if fault.body is not None else {}, fault.status, fault.headers)
            if fault.drop_after_events is None and fault.hang:
                self.close_connection = True
                return
        drop = fault.drop_after_events if fault else None
        if self.fake.latency:
            time.sleep(self.fake.latency)
        try:
            self.route(req, path, sink, drop)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_OPTIONS = handle_any

    def route(self, req: RecordedRequest, path: str, upload: "_MultipartFile | None", drop: int | None) -> None:
        query = parse_qs(urlsplit(self.path).query)
        body = req.json() if req.content_type.startswith("application/json") and req.body else {}
        if req.content_type.startswith("multipart/form-data") and req.body and not path.endswith("/files"):
            # The small text fields of a form (videos are created from one).
            body = {k.decode(): v.decode() for k, v in re.findall(
                rb'name="([^"]+)"\r\n\r\n([^\r]{0,200})\r\n', req.body)}
        parts = path.strip("/").split("/")[1:]  # after "v1"
        m = self.command
        if len(parts) == 3 and parts[0] == "videos" and parts[2] == "content" and m == "GET":
            # The fake keeps no video bytes: any id's content is VIDEO_BYTES generated bytes.
            return self.send_bytes(VIDEO_BYTES, "video/mp4", validator=parts[1])
        if parts == ["models"] and m == "GET":
            return self.send_json({"object": "list", "data": [
                {"id": name, "object": "model", "created": 1700000000, "owned_by": "openai"}
                for name in ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")]})
        if len(parts) == 2 and parts[0] == "models" and m == "GET":
            return self.send_json({"id": parts[1], "object": "model", "created": 1700000000, "owned_by": "openai"})
        if parts == ["responses"] and m == "POST":
            return self.api_responses(body, drop)
        if parts and parts[0] == "responses":
            return self.api_stored_response(parts, m, query, drop)
        if parts == ["chat", "completions"] and m == "POST":
            return self.api_chat(body, drop)
        if len(parts) == 3 and parts[:2] == ["chat", "completions"] and m == "GET":
            stored = self.fake.chat_completions.get(parts[2])
            return self.send_json(stored) if stored else self.send_error_json(404, "No such completion")
        if parts and parts[0] == "videos":
            return self.api_videos(parts, m, body)
        if parts == ["completions"] and m == "POST":
            return self.api_completions(body, drop)
        if parts == ["embeddings"] and m == "POST":
            return self.api_embeddings(body)
        if parts == ["images", "generations"] and m == "POST":
            n = int(body.get("n") or 1)
            answer = {"created": now(), "data": [{"b64_json": base64.b64encode(b"png").decode()}] * n,
                      "usage": {"input_tokens": 50 * n, "input_tokens_details": {
                          "text_tokens": 50 * n, "image_tokens": 0},
                          "output_tokens": 4160 * n, "total_tokens": 4210 * n}}
            if str(body.get("model", "")).startswith("dall-e"):
                del answer["usage"]  # dall-e reports no usage: it is billed per image
            return self.send_json(self._scenario(answer))
        if parts == ["audio", "speech"] and m == "POST":
            if body.get("stream_format") == "sse":
                usage = (self.fake.scenario or {}).get("usage") or {
                    "input_tokens": 10, "output_tokens": 200, "total_tokens": 210}
                return self.send_sse([
                    b'data: {"type": "speech.audio.delta", "audio": "SUQz"}\n\n',
                    b"data: " + json.dumps({"type": "speech.audio.done", "usage": usage}).encode() + b"\n\n",
                ], drop)
            return self.send_bytes(4096, "audio/mpeg", b"ID3" + b"\0" * 4093)
        if parts in (["audio", "transcriptions"], ["audio", "translations"]) and m == "POST":
            if req.body and b'name="response_format"\r\n\r\ntext\r\n' in req.body:
                return self.send_bytes(6, "text/plain; charset=utf-8", b"hello\n")  # no usage at all
            return self.send_json(self._scenario({"text": "hello", "usage": {"type": "duration", "seconds": 42}}))
        if parts == ["realtime", "client_secrets"] and m == "POST":
            session = body.get("session") or {}
            return self.send_json({"value": "ek_" + secrets.token_hex(8), "expires_at": now() + 600,
                                   "session": {"type": "realtime", "model": session.get("model", "gpt-realtime")}})
        if parts == ["realtime", "calls"] and m == "POST":  # a WebRTC offer, answered
            answer = b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            self.send_response(201)
            self._common_headers()
            self.send_header("Location", f"/v1/realtime/calls/rtc_{secrets.token_hex(8)}")
            self.send_header("Content-Type", "application/sdp")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return None
        if parts and parts[0] == "files":
            return self.api_files(parts, m, query, upload)
        if parts and parts[0] == "uploads":
            return self.api_uploads(parts, m, body)
        if parts and parts[0] == "batches":
            return self.api_batches(parts, m, body, query)
        return self.send_error_json(404, f"Invalid URL ({m} {path})", "unknown_url")

    # --- generation ----------------------------------------------------------------

    def _scenario(self, obj: dict, usage_key: str = "usage") -> dict:
        """The answer with the scenario's usage, model, tier, output items and tools."""
        sc = self.fake.scenario
        if not sc:
            return obj
        obj = dict(obj)
        for name in ("model", "service_tier", "tools", "prompt_cache_retention"):
            if name in sc:
                obj[name] = sc[name]
        if "output" in sc and isinstance(obj.get("output"), list):
            obj["output"] = [*sc["output"], *obj["output"]]
        if "usage" in sc and obj.get(usage_key) is not None:
            obj[usage_key] = sc["usage"]
        return obj

    def api_responses(self, body: dict, drop: int | None) -> None:
        model = body.get("model", "gpt-4o")
        rid = "resp_" + secrets.token_hex(8)
        n = self.fake.sse_event_count
        base = {"id": rid, "object": "response", "created_at": now(), "model": model,
                "status": "in_progress", "background": bool(body.get("background")), "output": [],
                "usage": None}
        if body.get("background"):
            # Stored and left queued: tests move it on with advance_response().
            queued = {**base, "status": "queued"}
            with self.fake.lock:
                self.fake.responses[rid] = queued
            if not body.get("stream"):
                return self.send_json(queued)
            return self.send_sse([_event("response.created", {"response": queued}, 0),
                                  _event("response.queued", {"response": queued}, 1)], drop)
        if not body.get("stream"):
            done = {**base, "status": "completed", "output": [_message("Hello from the fake.")],
                    "usage": usage_responses(JSON_OUT_TOKENS)}
            done = self._scenario(done)
            if body.get("store", True):
                with self.fake.lock:
                    self.fake.responses[rid] = done
            return self.send_json(done)
        events = [_event("response.created", {"response": base}, 0),
                  _event("response.in_progress", {"response": base}, 1)]
        for i in range(n):
            events.append(_event("response.output_text.delta", {
                "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": f"w{i} "}, 2 + i))
        text = "".join(f"w{i} " for i in range(n))
        end = self.fake.responses_end
        done = {**base, "status": end, "output": [_message(text)], "usage": usage_responses(n + 2)}
        if end == "incomplete":
            done["incomplete_details"] = {"reason": "max_output_tokens"}
        elif end == "failed":
            done["error"] = {"code": "server_error", "message": "The model failed mid-response."}
        events.append(_event("response.output_text.done", {"item_id": "msg_1", "output_index": 0,
                                                           "content_index": 0, "text": text}, n + 2))
        done = self._scenario(done)
        for i, item in enumerate((self.fake.scenario or {}).get("output", [])):
            # As upstream streams them: each item done before the response is.
            events.append(_event("response.output_item.done", {"output_index": i, "item": item}, n + 2))
        events.append(_event(f"response.{end}", {"response": done}, n + 3))
        if body.get("store", True):
            with self.fake.lock:
                self.fake.responses[rid] = done
        self.send_sse(events, drop)

    def api_stored_response(self, parts: list[str], m: str, query: dict, drop: int | None) -> None:
        obj = self.fake.responses.get(parts[1]) if len(parts) > 1 else None
        if obj is None:
            return self.send_error_json(404, "No such response", None)
        if len(parts) == 3 and parts[2] == "cancel" and m == "POST":
            if not obj.get("background"):
                return self.send_error_json(400, "Only background responses can be cancelled.")
            if obj["status"] in ("queued", "in_progress"):
                # Work done before the cancel is billed: in_progress ones report what they used.
                self.fake.advance_response(obj["id"], "cancelled",
                                           output_tokens=3 if obj["status"] == "in_progress" else None)
            return self.send_json(obj)
        if len(parts) == 2 and m == "GET":
            if query.get("stream", [""])[0] == "true":
                if not obj.get("background"):
                    return self.send_error_json(400, "Only background responses can be streamed again.")
                events = [_event("response.created", {"response": {**obj, "status": "queued", "usage": None}}, 0)]
                if obj["status"] in ("completed", "incomplete", "failed", "cancelled"):
                    events.append(_event(f"response.{obj['status']}", {"response": obj}, 1))
                return self.send_sse(events, drop)
            return self.send_json(obj)
        if len(parts) == 2 and m == "DELETE":
            self.fake.responses.pop(parts[1], None)
            return self.send_json({"id": parts[1], "object": "response", "deleted": True})
        return self.send_error_json(404, "Invalid URL", "unknown_url")

    def api_videos(self, parts: list[str], m: str, body: dict) -> None:
        fake = self.fake
        if (parts == ["videos"] or (len(parts) == 3 and parts[2] == "remix")) and m == "POST":
            source = fake.videos.get(parts[1]) if len(parts) == 3 else None
            vid = "video_" + secrets.token_hex(10)
            obj = {"id": vid, "object": "video", "model": body.get("model") or (source or {}).get("model", "sora-2"),
                   "status": "queued", "progress": 0, "created_at": now(), "completed_at": None,
                   "expires_at": None, "prompt": body.get("prompt", ""),
                   "seconds": str(body.get("seconds") or (source or {}).get("seconds", "4")),
                   "size": body.get("size") or "720x1280", "remixed_from_video_id": parts[1] if source else None,
                   "error": None}
            with fake.lock:
                fake.videos[vid] = obj
            return self.send_json(obj)
        if len(parts) == 2 and parts[1] in ("edits", "extensions") and m == "POST":
            # A new video from a finished one: its model; an extension generates `seconds` more.
            ref = body.get("video")
            source = fake.videos.get(ref.get("id")) if isinstance(ref, dict) else None
            if source is None:
                return self.send_error_json(400, "video must reference a finished video", "video")
            vid = "video_" + secrets.token_hex(10)
            seconds = str(body.get("seconds") or source["seconds"]) if parts[1] == "extensions" \
                else source["seconds"]
            obj = {**source, "id": vid, "status": "queued", "progress": 0, "created_at": now(),
                   "completed_at": None, "prompt": body.get("prompt", ""), "seconds": seconds,
                   "remixed_from_video_id": None}
            with fake.lock:
                fake.videos[vid] = obj
            return self.send_json(obj)
        if parts == ["videos"] and m == "GET":
            items = sorted(fake.videos.values(), key=lambda v: v["created_at"], reverse=True)
            return self.send_json({"object": "list", "data": items, "has_more": False})
        obj = fake.videos.get(parts[1]) if len(parts) > 1 else None
        if obj is None:
            return self.send_error_json(404, "No such video", None)
        if len(parts) == 2 and m == "GET":
            return self.send_json(obj)
        if len(parts) == 2 and m == "DELETE":
            fake.videos.pop(parts[1], None)
            return self.send_json({"id": parts[1], "object": "video.deleted", "deleted": True})
        return self.send_error_json(404, "Invalid URL", "unknown_url")

    def api_chat(self, body: dict, drop: int | None) -> None:
        model = body.get("model", "gpt-4o")
        cid = self.fake.chat_stream_id or "chatcmpl-" + secrets.token_hex(6)
        n = self.fake.sse_event_count
        if not body.get("stream"):
            completion = {"id": cid, "object": "chat.completion", "created": now(), "model": model,
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."},
                                       "finish_reason": "stop", "logprobs": None}],
                          "usage": usage_chat(JSON_OUT_TOKENS)}
            completion = self._scenario(completion)
            if body.get("store"):
                with self.fake.lock:
                    self.fake.chat_completions[cid] = completion
            return self.send_json(completion)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list, usage: Any = ...) -> bytes:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": 1700000000, "model": model,
                   "choices": choices}
            if include_usage:
                obj["usage"] = None if usage is ... else usage
            obj = self._scenario(obj)
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
        events += [chunk([{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]) for i in range(n)]
        events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if include_usage:
            events.append(chunk([], usage_chat(n + 2)))
        events.append(b"data: [DONE]\n\n")
        self.send_sse(events, drop)

    def api_completions(self, body: dict, drop: int | None) -> None:
        model = body.get("model", "gpt-3.5-turbo-instruct")
        if not body.get("stream"):
            return self.send_json({"id": "cmpl-1", "object": "text_completion", "created": now(), "model": model,
                                   "choices": [{"index": 0, "text": "Hello.", "finish_reason": "stop",
                                                "logprobs": None}], "usage": usage_chat(JSON_OUT_TOKENS)})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = []
        for i in range(self.fake.sse_event_count):
            obj = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": model,
                   "choices": [{"index": 0, "text": f"w{i} ", "finish_reason": None, "logprobs": None}]}
            if include_usage:
                obj["usage"] = None
            events.append(b"data: " + json.dumps(obj).encode() + b"\n\n")
        if include_usage:
            events.append(b"data: " + json.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1700000000,
                                                  "model": model, "choices": [],
                                                  "usage": usage_chat(self.fake.sse_event_count + 2)}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        self.send_sse(events, drop)

    def api_embeddings(self, body: dict) -> None:
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        vector = [0.1, -0.2, 0.3, 0.4]
        as_b64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack("<4f", *vector)).decode() if as_b64 else vector}
                for i in range(len(inputs))]
        tokens = 3 * len(inputs)
        self.send_json({"object": "list", "data": data, "model": body.get("model", ""),
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # --- files, uploads, batches ----------------------------------------------------

    def api_files(self, parts: list[str], m: str, query: dict, upload: "_MultipartFile | None") -> None:
        fake = self.fake
        if parts == ["files"] and m == "POST":
            assert upload is not None
            obj = fake.add_file(filename=upload.fields.get("filename", "upload"), purpose=upload.fields.get("purpose", ""),
                                content=bytes(upload.kept) if upload.size <= KEEP_BODY else None, size=upload.size)
            obj["bytes"] = upload.size
            fake.file_projects[obj["id"]] = self.headers.get("OpenAI-Project") or ""
            return self.send_json(obj)
        if parts == ["files"] and m == "GET":
            # OpenAI lists the files of the request's project only.
            project = self.headers.get("OpenAI-Project") or ""
            items = sorted((f for f in fake.files.values() if fake.file_projects.get(f["id"], "") == project),
                           key=lambda f: f["created_at"], reverse=True)
            if "purpose" in query:
                items = [f for f in items if f["purpose"] in query["purpose"]]
            if "after" in query:
                ids = [f["id"] for f in items]
                items = items[ids.index(query["after"][0]) + 1:] if query["after"][0] in ids else []
            limit = int(query.get("limit", ["10000"])[0])
            return self.send_json({"object": "list", "data": items[:limit], "has_more": len(items) > limit,
                                   "first_id": items[0]["id"] if items else None,
                                   "last_id": items[:limit][-1]["id"] if items else None})
        file_id = parts[1] if len(parts) > 1 else ""
        if file_id.startswith("big-"):
            size = int(file_id[4:])
            if len(parts) == 3 and parts[2] == "content":
                return self.send_bytes(size, "application/octet-stream", validator=file_id)
            return self.send_json({"id": file_id, "object": "file", "bytes": size, "created_at": now(),
                                   "filename": "big.bin", "purpose": "assistants", "status": "processed"})
        obj = fake.files.get(file_id)
        if obj is None:
            return self.send_error_json(404, f"No such File object: {file_id}", None)
        if len(parts) == 3 and parts[2] == "content" and m == "GET":
            content = fake.file_content.get(file_id)
            if content is not None:
                return self.send_bytes(len(content), "application/octet-stream", content, validator=file_id)
            return self.send_bytes(obj["bytes"], "application/octet-stream", validator=file_id)
        if len(parts) == 2 and m == "GET":
            return self.send_json(obj)
        if len(parts) == 2 and m == "DELETE":
            with fake.lock:
                fake.files.pop(file_id, None)
                fake.file_content.pop(file_id, None)
            return self.send_json({"id": file_id, "object": "file", "deleted": True})
        return self.send_error_json(404, "Invalid URL", "unknown_url")

    def api_uploads(self, parts: list[str], m: str, body: dict) -> None:
        fake = self.fake
        if parts == ["uploads"] and m == "POST":
            uid = "upload_" + secrets.token_hex(8)
            obj = {"id": uid, "object": "upload", "bytes": body.get("bytes", 0), "created_at": now(),
                   "filename": body.get("filename", ""), "purpose": body.get("purpose", ""),
                   "status": "pending", "expires_at": now() + 3600, "file": None}
            fake.uploads[uid] = obj
            return self.send_json(obj)
        obj = fake.uploads.get(parts[1]) if len(parts) > 1 else None
        if obj is None:
            return self.send_error_json(404, "No such upload", None)
        action = parts[2] if len(parts) > 2 else ""
        if action == "parts":
            return self.send_json({"id": "part_" + secrets.token_hex(6), "object": "upload.part",
                                   "created_at": now(), "upload_id": obj["id"]})
        if action == "complete":
            obj["status"] = "completed"
            obj["file"] = fake.add_file(filename=obj["filename"], purpose=obj["purpose"], size=obj["bytes"])
            return self.send_json(obj)
        if action == "cancel":
            obj["status"] = "cancelled"
            return self.send_json(obj)
        return self.send_error_json(404, "Invalid URL", "unknown_url")

    def api_batches(self, parts: list[str], m: str, body: dict, query: dict) -> None:
        fake = self.fake
        if parts == ["batches"] and m == "POST":
            bid = "batch_" + secrets.token_hex(10)
            obj = {"id": bid, "object": "batch", "endpoint": body.get("endpoint", ""),
                   "errors": None, "input_file_id": body.get("input_file_id", ""),
                   "completion_window": body.get("completion_window", "24h"), "status": "validating",
                   "output_file_id": None, "error_file_id": None, "created_at": now(),
                   "in_progress_at": None, "expires_at": now() + 86400, "finalizing_at": None,
                   "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
                   "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
                   "metadata": body.get("metadata")}
            fake.batches[bid] = obj
            return self.send_json(obj)
        if parts == ["batches"] and m == "GET":
            items = sorted(fake.batches.values(), key=lambda b: b["created_at"], reverse=True)
            limit = int(query.get("limit", ["20"])[0])
            return self.send_json({"object": "list", "data": items[:limit], "has_more": len(items) > limit,
                                   "first_id": items[0]["id"] if items else None,
                                   "last_id": items[:limit][-1]["id"] if items else None})
        obj = fake.batches.get(parts[1]) if len(parts) > 1 else None
        if obj is None:
            return self.send_error_json(404, "No such batch", None)
        if len(parts) == 2 and m == "GET":
            return self.send_json(obj)
        if parts[2:] == ["cancel"] and m == "POST":
            fake.advance_batch(obj["id"], "cancelling")
            return self.send_json(obj)
        return self.send_error_json(404, "Invalid URL", "unknown_url")


def _message(text: str) -> dict:
    return {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _event(kind: str, payload: dict, seq: int) -> bytes:
    data = json.dumps({"type": kind, "sequence_number": seq, **payload})
    return f"event: {kind}\ndata: {data}\n\n".encode()


class _MultipartFile:
    """Counts a multipart upload's file bytes and picks out its small fields, chunk by chunk."""

    def __init__(self, content_type: str) -> None:
        boundary = content_type.split("boundary=", 1)[-1].strip('"')
        self.delimiter = b"\r\n--" + boundary.encode()
        self.buffer = b"\r\n"  # so the first delimiter matches like the others
        self.fields: dict[str, str] = {}
        self.size = 0
        self.kept = bytearray()
        self._part: str | None = None  # name of the part being read
        self._in_headers = False
        self._value = bytearray()

    def __call__(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self._in_headers:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                headers = self.buffer[:end].decode("utf-8", "replace")
                self.buffer = self.buffer[end + 4:]
                self._in_headers = False
                name = headers.split('name="', 1)[-1].split('"', 1)[0] if 'name="' in headers else ""
                if 'filename="' in headers:
                    self.fields["filename"] = headers.split('filename="', 1)[1].split('"', 1)[0]
                self._part = name
                self._value = bytearray()
                continue
            idx = self.buffer.find(self.delimiter)
            if idx < 0:
                keep = len(self.delimiter) + 4
                self._consume(self.buffer[:-keep] if len(self.buffer) > keep else b"")
                self.buffer = self.buffer[-keep:] if len(self.buffer) > keep else self.buffer
                return
            self._consume(self.buffer[:idx])
            if self._part is not None:
                if self._part != "file":
                    self.fields[self._part] = self._value.decode("utf-8", "replace")
            self.buffer = self.buffer[idx + len(self.delimiter):]
            self._part = None
            self._in_headers = True
            # after the delimiter: "\r\n" before headers, or "--" at the end
            if self.buffer.startswith(b"--"):
                self.buffer = b""
                self._in_headers = False
                return
            if len(self.buffer) < 2:
                return
            self.buffer = self.buffer[2:]

    def _consume(self, data: bytes) -> None:
        if not data or self._part is None:
            return
        if self._part == "file":
            self.size += len(data)
            if len(self.kept) <= KEEP_BODY:
                self.kept.extend(data)
        elif len(self._value) < 4096:
            self._value.extend(data)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI API until killed.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sse-delay", type=float, default=0.0, help="seconds between SSE events")
    parser.add_argument("--sse-events", type=int, default=3)
    args = parser.parse_args()
    fake = FakeUpstream(args.host, args.port)
    fake.sse_delay_between = args.sse_delay
    fake.sse_event_count = args.sse_events
    print(fake.base_url, flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
