"""POST /v1/proxy, the envelope Custom GPT Actions use: same rules, same audit, strict paths."""
import json

import pytest
import requests

from audit_app.models import Outcome
from tests.conftest import finished_call


def envelope(relay_url, key, payload, raw: bytes | None = None):
    return requests.post(f"{relay_url}/v1/proxy", data=raw if raw is not None else json.dumps(payload),
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                         timeout=30)


def test_get_through_the_envelope(relay_url, relay_key, upstream):
    response = envelope(relay_url, relay_key, {"method": "GET", "path": "/v1/files",
                                               "query": {"purpose": "batch", "limit": 5, "order": ["desc"]}})
    assert response.status_code == 200 and response.json()["object"] == "list"
    assert upstream.requests[-1].method == "GET"
    assert upstream.requests[-1].path == "/v1/files?purpose=batch&limit=5&order=desc"
    row = finished_call()
    assert (row.method, row.path, row.family, row.outcome) == ("GET", "/v1/files", "files", Outcome.OK)


def test_post_with_a_body_is_recorded_as_what_it_called(relay_url, relay_key, upstream):
    body = {"model": "gpt-4o-mini", "input": "hello"}
    response = envelope(relay_url, relay_key, {"method": "POST", "path": "/v1/responses", "body": body})
    assert response.status_code == 200 and response.json()["object"] == "response"
    sent = upstream.requests[-1]
    assert sent.json() == body and sent.header("Content-Type") == "application/json"
    row = finished_call()
    assert (row.method, row.path, row.model) == ("POST", "/v1/responses", "gpt-4o-mini")
    assert row.total_tokens and row.cost


def test_envelope_obeys_the_same_policy_and_scopes(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.allowed_models = ["gpt-4o-mini"]
    key.save()
    blocked = envelope(relay_url, plaintext, {"method": "GET", "path": "/v1/fine_tuning/jobs"})
    assert blocked.status_code == 403 and "RELAY_BLOCKED_PATH_PREFIXES" in blocked.json()["error"]["message"]
    scoped = envelope(relay_url, plaintext, {"method": "POST", "path": "/v1/responses",
                                             "body": {"model": "gpt-4o", "input": "x"}})
    assert scoped.status_code == 403 and "allowed_models" in scoped.json()["error"]["message"]
    assert upstream.requests == []


def test_envelope_needs_a_key(relay_url, upstream):
    response = requests.post(f"{relay_url}/v1/proxy", json={"method": "GET", "path": "/v1/models"}, timeout=10)
    assert response.status_code == 401
    assert upstream.requests == []


BAD_ENVELOPES = [
    ({"method": "GET", "path": "https://evil.example/v1/models"}, 400),
    ({"method": "GET", "path": "http://127.0.0.1:1/v1/models"}, 400),
    ({"method": "GET", "path": "//evil.example/v1/models"}, 400),
    ({"method": "GET", "path": "file:///etc/passwd"}, 400),
    ({"method": "GET", "path": "/v1/models/../fine_tuning/jobs"}, 400),
    ({"method": "GET", "path": "/v1/models/%2e%2e/fine_tuning/jobs"}, 400),
    ({"method": "GET", "path": "/v1/models/%2E%2E%2Ffine_tuning"}, 400),
    ({"method": "GET", "path": "/v1/models/.%2e/files"}, 400),
    ({"method": "GET", "path": "/v1\\models"}, 400),
    ({"method": "GET", "path": "/v1/models\r\nX-Injected: 1"}, 400),
    ({"method": "GET", "path": "/v1/models\x00"}, 400),
    ({"method": "GET", "path": "/v1/models?limit=1"}, 400),
    ({"method": "GET", "path": "/v1/models#frag"}, 400),
    ({"method": "GET", "path": "models"}, 400),
    ({"method": "GET", "path": "/v2/models"}, 400),
    ({"method": "GET", "path": ""}, 400),
    ({"method": "GET", "path": 42}, 400),
    ({"method": "GET"}, 400),
    ({"method": "POST", "path": "/v1/proxy", "body": {}}, 403),
    ({"method": "GET", "path": "/v1/health"}, 403),
    ({"method": "POST", "path": "/v1/%70roxy", "body": {}}, 403),
    ({"method": "GET", "path": "/v1/Health"}, 403),
    ({"method": "GET", "path": "/v1/%61ctions/ping"}, 403),
    ({"method": "GET", "path": "/v1/actions/ping"}, 403),
    ({"method": "TRACE", "path": "/v1/models"}, 400),
    ({"method": "GET", "path": "/v1/models", "query": "limit=1"}, 400),
    ({"method": "GET", "path": "/v1/models", "query": {"a": {"b": 1}}}, 400),
    ({"method": "POST", "path": "/v1/responses", "body": {"model": "m", "stream": True}}, 400),
    ({"method": "POST", "path": "/v1/responses", "body": ["not", "an", "object"]}, 400),
    ({"method": "GET", "path": "/v1/models", "url": "https://evil.example"}, 400),
]


@pytest.mark.parametrize("payload, status", BAD_ENVELOPES)
def test_bad_envelopes_are_refused_and_reach_nothing(relay_url, relay_key, upstream, payload, status):
    response = envelope(relay_url, relay_key, payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert upstream.requests == []
    assert finished_call().outcome == Outcome.REJECTED


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"a string"', b""])
def test_envelopes_that_are_not_objects(relay_url, relay_key, upstream, raw):
    response = envelope(relay_url, relay_key, None, raw=raw)
    assert response.status_code == 400
    assert upstream.requests == []


def test_only_post_opens_an_envelope(relay_url, relay_key, upstream):
    response = requests.get(f"{relay_url}/v1/proxy", headers={"Authorization": f"Bearer {relay_key}"}, timeout=10)
    assert response.status_code == 405
    assert upstream.requests == []
