"""Hostile requests, sent raw to the production server (gunicorn): each gets a clear
error in OpenAI's shape, none a 5xx, and none that the relay refuses reaches upstream."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from tests.conftest import settle


@dataclass
class Hostile:
    name: str
    request: bytes  # everything after the request line's method, built by `raw`
    status: int | tuple[int, ...]
    forwarded: bool = False  # harmless enough to reach upstream (as a normal /v1 call)


def raw(method: str, target: str, *, headers: dict[str, str] | None = None, body: bytes = b"",
        key: str | None = "KEY", extra: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: relay.test"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body and "Content-Length" not in (headers or {}) and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("latin1") + extra + b"\r\n\r\n" + body


JSON = {"Content-Type": "application/json"}

CASES = [
    # Traversal, in its encodings.
    Hostile("dot-dot", raw("GET", "/v1/models/../fine_tuning/jobs"), 400),
    Hostile("encoded dot-dot", raw("GET", "/v1/models/%2e%2e/fine_tuning/jobs"), 400),
    Hostile("upper-case encoded dot-dot", raw("GET", "/v1/models/%2E%2E/fine_tuning"), 400),
    Hostile("dot-dot with encoded slash", raw("GET", "/v1/models/..%2ffine_tuning%2fjobs"), 400),
    Hostile("mixed dot encoding", raw("GET", "/v1/files/.%2e/fine_tuning"), 400),
    Hostile("single dot segment", raw("GET", "/v1/./models"), 400),
    Hostile("empty segment", raw("GET", "/v1//models"), 400),
    Hostile("backslash traversal", raw("GET", "/v1/models%5c..%5cfine_tuning"), 400),
    Hostile("many dot-dots", raw("GET", "/v1/%2e%2e/%2e%2e/%2e%2e/etc/passwd"), 400),
    Hostile("null byte", raw("GET", "/v1/models%00.json"), 400),
    Hostile("blocked prefix, odd case", raw("GET", "/v1/FINE_TUNING/jobs"), 403),
    # Absolute and protocol-relative targets.
    Hostile("absolute-form target", raw("GET", "http://evil.example/v1/models"), 200, forwarded=True),
    Hostile("protocol-relative target", raw("GET", "//evil.example/v1/models"), 404),
    Hostile("outside /v1 (the admin redirects to its login)", raw("GET", "/admin/../v1/models"), (302, 400, 404)),
    # CRLF in headers and paths.
    Hostile("encoded CRLF in path", raw("GET", "/v1/models%0d%0aX-Injected:%201"), 400),
    Hostile("bare CR in header value", raw("GET", "/v1/models", headers={"X-Test": "a\rb"}), 400),
    Hostile("LF-only header injection", raw("GET", "/v1/models", extra=b"\nX-Injected: 1"), (200, 400),
            forwarded=True),
    Hostile("space in header name", raw("GET", "/v1/models", headers={"Bad Header": "x"}), 400),
    Hostile("obsolete line folding", raw("GET", "/v1/models", extra=b"\r\n  folded"), 400),
    # Oversized.
    Hostile("oversized header", raw("GET", "/v1/models", headers={"X-Big": "a" * 20000}), (400, 431)),
    Hostile("too many headers", raw("GET", "/v1/models", headers={f"X-H{i}": "1" for i in range(150)}),
            (400, 431)),
    Hostile("request line too long", raw("GET", "/v1/models/" + "a" * 9000), (400, 414)),
    Hostile("huge declared body", raw("POST", "/v1/files", headers={
        "Content-Type": "application/octet-stream", "Content-Length": str(10**12)}), 413),
    # Bodies.
    Hostile("invalid JSON", raw("POST", "/v1/responses", headers=JSON, body=b'{"model": '), 400),
    Hostile("JSON array", raw("POST", "/v1/responses", headers=JSON, body=b'["model", "gpt-4o"]'), 400),
    Hostile("JSON string", raw("POST", "/v1/responses", headers=JSON, body=b'"hello"'), 400),
    Hostile("JSON null", raw("POST", "/v1/chat/completions", headers=JSON, body=b"null"), 400),
    Hostile("JSON with lone surrogate bytes", raw("POST", "/v1/embeddings", headers=JSON,
                                                  body=b'{"input": "\xff\xfe"}'), 400),
    Hostile("text/plain body", raw("POST", "/v1/responses", headers={"Content-Type": "text/plain"},
                                   body=b"model=gpt-4o"), 415),
    Hostile("XML body", raw("POST", "/v1/responses", headers={"Content-Type": "application/xml"},
                            body=b"<model/>"), 415),
    Hostile("body without content type", raw("POST", "/v1/responses", body=b'{"model": "x"}'), 415),
    Hostile("multipart without boundary", raw("POST", "/v1/files", headers={
        "Content-Type": "multipart/form-data"}, body=b"--x\r\n\r\n"), 400),
    Hostile("negative content length", raw("POST", "/v1/responses", headers={
        **JSON, "Content-Length": "-5"}), 400),
    Hostile("non-numeric content length", raw("POST", "/v1/responses", headers={
        **JSON, "Content-Length": "12abc"}), 400),
    Hostile("conflicting framing", raw("POST", "/v1/responses", headers={
        **JSON, "Content-Length": "5", "Transfer-Encoding": "chunked"}, body=b"0\r\n\r\n"), 400),
    Hostile("broken chunk size", raw("POST", "/v1/files", headers={
        "Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}, body=b"zz\r\nabc\r\n"),
        400),
    Hostile("deeply nested JSON", raw("POST", "/v1/responses", headers=JSON,
                                      body=b'{"input": ' + b"[" * 2000 + b"]" * 2000 + b"}"), 400),
    Hostile("envelope nested deeply", raw("POST", "/v1/proxy", headers=JSON,
                                          body=b'{"body": ' + b'{"a":' * 2000 + b"1" + b"}" * 2001), 400),
    Hostile("non-UTF-8 envelope path", raw("POST", "/v1/proxy", headers=JSON,
                                           body=b'{"method": "GET", "path": "/v1/files/\\ud800"}'), 400),
    Hostile("encoded slash with bytes that are not UTF-8", raw("GET", "/v1/files/a%2F%FF"), (400, 404)),
    # Admin-key APIs and addresses.
    Hostile("admin-key API under /v1/projects", raw("GET", "/v1/projects/proj_1/api_keys"), 403),
    Hostile("X-Forwarded-For not an address", raw("GET", "/v1/models", headers={
        "X-Forwarded-For": "not-an-ip, 1.2.3.4:5678"}), 200, forwarded=True),
    # Methods.
    Hostile("TRACE", raw("TRACE", "/v1/models"), 405),
    Hostile("PROPFIND", raw("PROPFIND", "/v1/models"), 405),
    Hostile("lower-case method", raw("get", "/v1/models"), (400, 405)),
    Hostile("CONNECT", raw("CONNECT", "api.openai.com:443"), (400, 404, 405)),
    # Keys in the wrong place, or not keys.
    Hostile("no key", raw("GET", "/v1/models", key=None), 401),
    Hostile("key without Bearer", raw("GET", "/v1/models", key=None, headers={"Authorization": "KEY"}), 401),
    Hostile("key as api-key header", raw("GET", "/v1/models", key=None, headers={"Api-Key": "KEY"}), 401),
    Hostile("key in query string", raw("GET", "/v1/models?api_key=KEY", key=None), 400),
    Hostile("key in cookie", raw("GET", "/v1/models", key=None, headers={"Cookie": "key=KEY"}), 401),
    Hostile("basic auth", raw("GET", "/v1/models", key=None,
                              headers={"Authorization": "Basic dXNlcjpLRVk="}), 401),
    Hostile("expired key", raw("GET", "/v1/models", key="EXPIRED"), 401),
    Hostile("revoked key", raw("GET", "/v1/models", key="REVOKED"), 401),
    Hostile("another user's key prefix", raw("GET", "/v1/models", key="PREFIX"), 401),
    Hostile("upstream-style key", raw("GET", "/v1/models", key="sk-proj-abcdef0123456789"), 401),
    Hostile("key with trailing junk", raw("GET", "/v1/models", key="KEY x"), 401),
]


def send(port: int, data: bytes) -> tuple[int, bytes, dict[str, str]]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        response = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                response += chunk
                head, sep, body = response.partition(b"\r\n\r\n")
                if sep:
                    headers = {k.lower(): v.strip() for k, _, v in
                               (line.decode("latin1").partition(":") for line in head.split(b"\r\n")[1:])}
                    if len(body) >= int(headers.get("content-length", "-1")) >= 0:
                        break
        except (ConnectionResetError, socket.timeout):
            pass
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    headers = {k.lower(): v.strip() for k, _, v in
               (line.decode("latin1").partition(":") for line in head.split(b"\r\n")[1:])}
    return status, body, headers


def test_hostile_requests(start_gunicorn, issue_key, upstream):
    assert len(CASES) >= 40
    key, plaintext = issue_key("alice")
    expired_key, expired = issue_key("alice", expires_at=timezone.now() - timedelta(days=1))
    revoked_key, revoked = issue_key("alice")
    revoked_key.revoke()
    bob_key, _ = issue_key("bob")
    secrets = {b"KEY": plaintext, b"EXPIRED": expired, b"REVOKED": revoked, b"PREFIX": bob_key.prefix}
    # Behind one proxy, as in production: X-Forwarded-For is read (and must be validated).
    relay = start_gunicorn(GUNICORN_WORKERS="1", RELAY_TRUSTED_PROXIES="1", RELAY_TRUST_X_FORWARDED_FOR="true")
    port = int(relay.url.rsplit(":", 1)[1])
    failures = []
    for case in CASES:
        data = case.request
        for placeholder, value in secrets.items():
            data = data.replace(placeholder, value.encode())
        upstream.requests.clear()
        status, body, headers = send(port, data)
        expected = case.status if isinstance(case.status, tuple) else (case.status,)
        problems = []
        if status not in expected:
            problems.append(f"status {status}, expected {expected}")
        if status >= 500 or status == 0:
            problems.append("a server error or no answer")
        if status >= 400:
            try:
                error = json.loads(body)["error"]
                if set(error) != {"message", "type", "param", "code"}:
                    problems.append(f"error fields {sorted(error)}")
            except (ValueError, KeyError, TypeError):
                problems.append(f"not an OpenAI-shaped error: {body[:120]!r}")
        reached = [r.path for r in upstream.requests]
        if status >= 400 and status != 404 and reached:
            problems.append(f"refused, yet upstream saw {reached}")
        if reached and not case.forwarded:
            problems.append(f"upstream saw {reached}")
        if any(not p.startswith("/v1/") or ".." in p for p in reached):
            problems.append(f"odd upstream path {reached}")
        if plaintext.encode() in body or b"sk-upstream" in body:
            problems.append("a secret in the response")
        if problems:
            failures.append(f"{case.name}: {'; '.join(problems)}")
    settle()
    assert not failures, "\n".join(failures)
