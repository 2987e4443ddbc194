"""Forwarding fidelity: what upstream receives, and what the client gets back."""
import hashlib
import os

import pytest
import requests

from tests.conftest import finished_call
from audit_app.models import Outcome
from tests.conftest import UPSTREAM_KEY


@pytest.fixture
def auth(relay_key):
    return {"Authorization": f"Bearer {relay_key}"}


def test_query_string_is_kept_exactly(relay_url, auth, upstream):
    query = "limit=2&after=file-1&purpose=batch&purpose=assistants&z=%20a+b&q=%2Fx%3F&u=%C3%A9&empty="
    requests.get(f"{relay_url}/v1/files?{query}", headers=auth, timeout=10)
    assert upstream.requests[-1].path == f"/v1/files?{query}"


def test_request_headers_pass_through_an_allowlist(relay_url, relay_key, upstream):
    requests.post(
        f"{relay_url}/v1/responses",
        json={"model": "gpt-4o-mini", "input": "hi"},
        headers={
            "Authorization": f"Bearer {relay_key}",
            "X-Relay-Key": relay_key,
            "Cookie": "sessionid=abc",
            "OpenAI-Beta": "assistants=v2",
            "Idempotency-Key": "idem-1",
            "X-Stainless-Lang": "python",
            "X-Forwarded-For": "10.0.0.1",
            "Proxy-Authorization": "Basic eDp5",
            "X-Internal-Token": "secret-internal",
        },
        timeout=10,
    )
    got = upstream.requests[-1]
    assert got.header("Authorization") == f"Bearer {UPSTREAM_KEY}"
    assert got.header("OpenAI-Beta") == "assistants=v2"
    assert got.header("Idempotency-Key") == "idem-1"
    assert got.header("X-Stainless-Lang") == "python"
    for name in ("X-Relay-Key", "Cookie", "X-Forwarded-For", "Proxy-Authorization", "X-Internal-Token"):
        assert got.header(name) is None, name
    sent = " ".join(f"{k}: {v}" for k, v in got.headers)
    assert relay_key not in sent


def test_organization_and_project_are_sent_when_configured(relay_url, auth, upstream, settings):
    settings.OPENAI_ORGANIZATION = "org-team"
    settings.OPENAI_PROJECT = "proj_relay"
    requests.get(f"{relay_url}/v1/models", headers=auth, timeout=10)
    got = upstream.requests[-1]
    assert got.header("OpenAI-Organization") == "org-team"
    assert got.header("OpenAI-Project") == "proj_relay"


def test_response_headers_pass_through_an_allowlist(relay_url, auth, upstream):
    response = requests.get(f"{relay_url}/v1/models", headers=auth, timeout=10)
    assert response.headers["x-request-id"].startswith("req_")
    assert "openai-processing-ms" in response.headers
    assert "x-ratelimit-limit-requests" in response.headers
    assert "x-upstream-secret-header" not in response.headers
    assert "set-cookie" not in response.headers


def test_upstream_cookies_are_never_replayed(relay_url, auth, upstream):
    for _ in range(2):
        requests.get(f"{relay_url}/v1/models", headers=auth, timeout=10)
    assert all(r.header("Cookie") is None for r in upstream.requests)


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 3 * 1024 * 1024 + 7])
def test_binary_body_arrives_byte_for_byte(relay_url, auth, upstream, size):
    blob = os.urandom(size)
    files = {"file": ("data.bin", blob, "application/octet-stream")}
    response = requests.post(f"{relay_url}/v1/files", files=files, data={"purpose": "batch"},
                             headers=auth, timeout=30)
    assert response.status_code == 200, response.text
    got = upstream.requests[-1]
    sent = response.request.body
    assert got.body_sha256 == hashlib.sha256(sent).hexdigest()
    assert got.body_length == len(sent)
    assert response.json()["bytes"] == size
    row = finished_call()
    assert row.bytes_in == len(sent) and row.outcome == Outcome.OK


def test_json_body_arrives_byte_for_byte(relay_url, auth, upstream):
    body = b'{"model": "text-embedding-3-small",  "input": ["\\u00e9t\\u00e9", "b"], "x": 1.50}'
    requests.post(f"{relay_url}/v1/embeddings", data=body,
                  headers={**auth, "Content-Type": "application/json"}, timeout=10)
    assert upstream.requests[-1].body == body


def test_chunked_request_body_is_streamed_upstream(gunicorn_relay, auth, upstream):
    parts = [os.urandom(70_000) for _ in range(5)]
    response = requests.post(f"{gunicorn_relay.url}/v1/files", data=iter(parts),
                             headers={**auth, "Content-Type": "application/octet-stream"}, timeout=30)
    got = upstream.requests[-1]
    assert got.body_sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    assert finished_call().bytes_in == 350_000
    assert response.status_code < 500


def test_download_arrives_byte_for_byte(relay_url, auth, upstream):
    size = 5 * 1024 * 1024 + 3
    response = requests.get(f"{relay_url}/v1/files/big-{size}/content", headers=auth, timeout=30)
    direct = requests.get(f"{upstream.base_url}/files/big-{size}/content", timeout=30)
    assert response.status_code == 200
    assert len(response.content) == size
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(direct.content).digest()
    assert int(response.headers["Content-Length"]) == size
    assert finished_call().bytes_out == size


def test_upstream_errors_pass_through_verbatim(relay_url, auth, upstream):
    body = {"error": {"message": "bad model", "type": "invalid_request_error", "param": "model",
                      "code": "model_not_found"}}
    upstream.inject("/v1/responses", status=404, body=body)
    response = requests.post(f"{relay_url}/v1/responses", json={"model": "nope"}, headers=auth, timeout=10)
    assert response.status_code == 404
    assert response.json() == body
    row = finished_call()
    assert row.outcome == Outcome.UPSTREAM_ERROR and row.upstream_status == 404
    assert "bad model" in row.error and row.model == "nope"


def test_429_passes_through_with_retry_after(relay_url, auth, upstream):
    upstream.inject("/v1/chat/completions", status=429, headers={"Retry-After": "17"},
                    body={"error": {"message": "slow down", "type": "requests", "param": None,
                                    "code": "rate_limit_exceeded"}})
    response = requests.post(f"{relay_url}/v1/chat/completions", json={"model": "gpt-4o"},
                             headers=auth, timeout=10)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "17"
    assert finished_call().status == 429
