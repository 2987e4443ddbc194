"""A fake of OpenAI's organization Usage and Costs APIs: a real HTTP server on 127.0.0.1.

Serves `/v1/organization/usage/{endpoint}` and `/v1/organization/costs` from
records the test sets, in daily buckets with `group_by` and cursor pagination
(`page_days` buckets a page, whatever `limit` asks, so that a month takes several
pages). Only the standard library.
"""
from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ADMIN_KEY = "sk-admin-FAKE-0123456789abcdef"
_RESULT_KINDS = {
    "completions": ("input_tokens", "input_cached_tokens", "output_tokens"),
    "embeddings": ("input_tokens",),
    "moderations": ("input_tokens",),
    "images": ("images",),
    "audio_speeches": ("characters",),
    "audio_transcriptions": ("seconds",),
}


@dataclass
class FakeOrgApi:
    usage: list[dict[str, Any]] = field(default_factory=list)  # {endpoint, day, model, project_id, num_model_requests, ...}
    costs: list[dict[str, Any]] = field(default_factory=list)  # {day, project_id, line_item, value}
    page_days: int = 2
    fail: dict[str, int] = field(default_factory=dict)  # path suffix -> status to answer
    requests: list[tuple[str, dict[str, list[str]], str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                fake.requests.append((url.path, query, self.headers.get("authorization", "")))
                status, body = fake.answer(url.path, query, self.headers.get("authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, query: dict[str, list[str]], auth: str) -> tuple[int, dict]:
        if auth != f"Bearer {ADMIN_KEY}":
            return 401, _error("Incorrect API key provided: sk-admin-****cdef.", "invalid_api_key")
        for suffix, status in self.fail.items():
            if path.endswith(suffix):
                return status, _error("The server had an error processing your request.", "server_error")
        if path == "/v1/organization/costs":
            kind, records = "costs", self.costs
        elif path.startswith("/v1/organization/usage/") and path.rsplit("/", 1)[1] in _RESULT_KINDS:
            kind = path.rsplit("/", 1)[1]
            records = [r for r in self.usage if r["endpoint"] == kind]
        else:
            return 404, _error(f"Unknown path {path}", "unknown_url")
        if query.get("bucket_width", ["1d"]) != ["1d"]:
            return 400, _error("bucket_width must be 1d in this fake", "invalid_value")
        start = datetime.fromtimestamp(int(query["start_time"][0]), tz=timezone.utc).date()
        end = datetime.fromtimestamp(int(query["end_time"][0]), tz=timezone.utc).date()
        page_start = date.fromisoformat(query["page"][0]) if "page" in query else start
        group_by = query.get("group_by", [])
        days = []
        day = page_start
        while day < end and len(days) < self.page_days:
            days.append(day)
            day += timedelta(days=1)
        data = [self._bucket(kind, d, [r for r in records if r["day"] == d], group_by) for d in days]
        more = day < end
        return 200, {"object": "page", "data": data, "has_more": more, "next_page": day.isoformat() if more else None}

    @staticmethod
    def _bucket(kind: str, day: date, records: list[dict], group_by: list[str]) -> dict:
        start = int(datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc).timestamp())
        groups: dict[tuple, dict] = defaultdict(dict)
        for r in records:
            group = tuple(r.get(g) for g in group_by)
            out = groups[group]
            if kind == "costs":
                out.setdefault("object", "organization.costs.result")
                amount = out.setdefault("amount", {"value": 0.0, "currency": "usd"})
                amount["value"] += r["value"]
            else:
                out.setdefault("object", f"organization.usage.{kind}.result")
                out["num_model_requests"] = out.get("num_model_requests", 0) + r.get("num_model_requests", 0)
                for name in _RESULT_KINDS[kind]:
                    out[name] = out.get(name, 0) + r.get(name, 0)
            for g, value in zip(group_by, group):
                out[g] = value
        return {"object": "bucket", "start_time": start, "end_time": start + 86400, "results": list(groups.values())}


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
