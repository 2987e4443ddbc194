"""Fail closed (issue 14): when the relay cannot read a request the way upstream
will, a scoped key gets a 4xx and nothing is forwarded. One section per finding
of the hostile review; each refused request is checked for an OpenAI-shaped
4xx and an upstream that saw nothing."""
from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from audit_app.models import ApiCall, Outcome
from tests.conftest import finished_calls, settle


pytestmark = pytest.mark.usefixtures("empty_cache")


@pytest.fixture
def scoped(issue_key):
    """A key limited to gpt-4o-mini and whisper-1."""
    key, plaintext = issue_key()
    key.allowed_models = ["gpt-4o-mini", "whisper-1"]
    key.save()
    return key, plaintext


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def refused(response, upstream, status: int | tuple[int, ...] = 403) -> dict:
    """An OpenAI-shaped 4xx, and nothing reached upstream."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert upstream.requests == [], [r.path for r in upstream.requests]
    return error


# --- 1. multipart forms --------------------------------------------------------------------

BOUNDARY = "relayboundary"


def form(*fields: tuple[str, bytes], audio: bool = True) -> bytes:
    """A multipart body with each (Content-Disposition parameters, value) as given."""
    parts = [f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode() + value + b"\r\n"
             for disposition, value in fields]
    if audio:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                     "Content-Type: audio/wav\r\n\r\n".encode() + b"RIFF" + b"\0" * 3000 + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post_form(relay_url: str, key: str, body: bytes, path: str = "/v1/audio/transcriptions"):
    return requests.post(f"{relay_url}{path}", data=body, timeout=30, headers={
        **auth(key), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


@pytest.mark.parametrize("fields", [
    [('name="model"', b"whisper-1"), ('name="model"', b"gpt-4o-transcribe")],  # upstream reads the last
    [('name="model"', b"gpt-4o-transcribe"), ('name="model"', b"whisper-1")],  # two are refused either way
    [("name=model", b"gpt-4o-transcribe")],  # no quotes
    [('name = "model"', b"gpt-4o-transcribe")],  # spaces
    [('name="Model"', b"whisper-1")],  # a name a looser reader takes for model
    [('name="x"; name="model"', b"whisper-1")],  # named twice
    [('name="model"', b"w" * 600)],  # too long to read
    [('name="model"', b"\xff\xfe")],  # not UTF-8
    [],  # no model at all: upstream would refuse or pick one
], ids=["duplicate-last-denied", "duplicate-last-allowed", "unquoted", "spaces", "case", "named-twice",
        "too-long", "not-utf8", "missing"])
def test_a_form_the_relay_cannot_read_as_upstream_does_is_refused(relay_url, scoped, upstream, fields):
    error = refused(post_form(relay_url, scoped[1], form(*fields)), upstream)
    assert "allowed_models" in error["message"]
    assert error["param"] == "model"


def test_a_form_cut_before_its_closing_delimiter_is_refused(relay_url, scoped, upstream):
    body = form(('name="model"', b"whisper-1")).rsplit(f"--{BOUNDARY}--".encode(), 1)[0]
    refused(post_form(relay_url, scoped[1], body), upstream)


def test_a_form_with_one_readable_allowed_model_is_forwarded(relay_url, scoped, upstream):
    body = form(("name=model", b"whisper-1"))
    response = post_form(relay_url, scoped[1], body)
    assert response.status_code == 200, response.text
    assert upstream.requests[-1].body_length == len(body)


def test_the_audit_row_records_the_model_upstream_reads_from_a_form(relay_url, relay_key, upstream):
    body = form(('name="model"', b"whisper-1"), ('name="model"', b"gpt-4o-transcribe"))
    assert post_form(relay_url, relay_key, body).status_code == 200  # no scope: forwarded
    assert finished_calls(1)[0].model == "gpt-4o-transcribe"


def test_a_content_type_with_two_boundaries_is_refused(relay_url, scoped, upstream):
    response = requests.post(f"{relay_url}/v1/audio/transcriptions", data=form(('name="model"', b"whisper-1")),
                             timeout=30, headers={**auth(scoped[1]), "Content-Type":
                                                  f"multipart/form-data; boundary=other; boundary={BOUNDARY}"})
    refused(response, upstream, 400)


# --- 2. mislabelled JSON ---------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/x-www-form-urlencoded"])
def test_json_under_another_label_is_checked_as_json(relay_url, scoped, upstream, content_type):
    headers = {**auth(scoped[1]), "Content-Type": content_type}
    denied = json.dumps({"model": "gpt-4o", "input": "hi"})
    error = refused(requests.post(f"{relay_url}/v1/responses", data=denied, headers=headers, timeout=30), upstream)
    assert "'gpt-4o' is not one of them" in error["message"]
    allowed = json.dumps({"model": "gpt-4o-mini", "input": "hi"})
    assert requests.post(f"{relay_url}/v1/responses", data=allowed, headers=headers, timeout=30).status_code == 200


def test_a_form_encoded_body_on_an_endpoint_that_takes_a_model_is_refused(relay_url, scoped, upstream):
    response = requests.post(f"{relay_url}/v1/responses", data={"model": "gpt-4o", "input": "hi"},
                             headers=auth(scoped[1]), timeout=30)
    refused(response, upstream, (400, 403))


# --- 3. JSON the reader cannot read ------------------------------------------------------------

BIG = "x" * (1024 * 1024 + 10)  # past RELAY_INSPECT_MAX_BYTES: read by the streaming reader


def post_raw(relay_url: str, key: str, body: bytes, path: str = "/v1/responses"):
    return requests.post(f"{relay_url}{path}", data=body, timeout=60,
                         headers={**auth(key), "Content-Type": "application/json"})


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("body", [
    b'\xef\xbb\xbf{"model": "gpt-4o", "input": "INPUT"}',  # a byte-order mark first
    b'{"model": "MODEL_LONG", "input": "INPUT"}',  # a model over 512 bytes
    b'{"model": "gpt-4o-mini", "input": "INPUT", "model": "gpt-4o"}',  # upstream takes the last
    b'{"input": "INPUT", "mod\\u0065l": "gpt-4o"}',  # an escaped key
    b'{"model": "gpt-4o-mini", "input": "INPUT", "model": "MODEL_LONG"}',  # the last one unreadable
    b'{"model": ["gpt-4o"], "input": "INPUT"}',  # not a string
    b'{"input": "INPUT"}',  # no model: upstream picks its default
], ids=["bom", "long-model", "duplicate", "escaped-key", "duplicate-unreadable", "not-a-string", "missing"])
def test_json_without_one_readable_allowed_model_is_refused(relay_url, scoped, upstream, body, size):
    body = body.replace(b"INPUT", (BIG if size == "large" else "hi").encode())
    body = body.replace(b"MODEL_LONG", b"gpt-4o-mini" + b" " * 600)
    error = refused(post_raw(relay_url, scoped[1], body), upstream, (400, 403))
    assert error["param"] in ("model", None)


def test_large_json_with_an_allowed_model_is_forwarded_whole(relay_url, scoped, upstream):
    body = json.dumps({"input": BIG, "model": "gpt-4o-mini"}).encode()
    assert post_raw(relay_url, scoped[1], body).status_code == 200
    assert upstream.requests[-1].body_length == len(body)


@pytest.mark.parametrize("path, body", [
    ("/v1/videos/video_1/remix", {"prompt": "again"}),
    ("/v1/videos/edits", {"prompt": "a dog", "video": {"id": "video_1"}}),
    ("/v1/videos/extensions", {"prompt": "more", "video": {"id": "video_1"}, "seconds": "4"}),
    ("/v1/chatkit/sessions", {"workflow": {"id": "wf_1"}, "user": "alice"}),
])
def test_work_on_a_model_the_request_does_not_name_is_refused_to_a_scoped_key(relay_url, scoped, upstream,
                                                                            path, body):
    # The source video's model, the workflow's: the relay cannot check them against the scope.
    _, key = scoped
    error = refused(requests.post(f"{relay_url}{path}", json=body, headers=auth(key), timeout=30), upstream)
    assert error["code"] == "outside_key_scope"
    assert "does not name" in error["message"]


def test_an_assistant_update_may_leave_the_model_out(relay_url, scoped, upstream):
    response = post_raw(relay_url, scoped[1], b'{"name": "renamed"}', "/v1/assistants/asst_1")
    assert response.status_code != 403, response.text
    assert upstream.requests


# --- 4. batch input files ------------------------------------------------------------------------


def batch_line(model: str, i: int = 0) -> bytes:
    return json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": model, "messages": []}}).encode()


@pytest.mark.parametrize("content", [
    # A bare CR inside a line: split there, the denied model sat on a "line" that did not parse.
    batch_line("gpt-4o-mini", 0) + b"\n" + batch_line("gpt-4o", 1).replace(b'"body"', b'"x": "\r", "body"') + b"\n",
    batch_line("gpt-4o-mini", 0) + b"\n" + b'{"custom_id": "1", "body": {"model": "gpt-4o"' + b"\n",  # does not parse
    batch_line("gpt-4o-mini", 0) + b"\n" + b'{"custom_id": "1", "body": {"messages": []}}' + b"\n",  # no body.model
    batch_line("gpt-4o-mini", 0) + b"\r\n" + b'{"custom_id": "1", "body": {"model": 5}}' + b"\r\n",  # not a string
], ids=["bare-cr", "unparseable", "no-model", "model-not-string"])
def test_a_batch_input_line_the_relay_cannot_read_refuses_the_batch(relay_url, scoped, upstream, content):
    file = upstream.add_file(filename="in.jsonl", purpose="batch", content=content)
    response = requests.post(f"{relay_url}/v1/batches", json={
        "input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        headers=auth(scoped[1]), timeout=30)
    assert response.status_code == 403, response.text
    assert "line 2" in response.json()["error"]["message"]
    assert not any(r.path.startswith("/v1/batches") for r in upstream.requests)


def test_a_crlf_batch_file_of_allowed_models_runs(relay_url, scoped, upstream):
    content = b"".join(batch_line("gpt-4o-mini", i) + b"\r\n" for i in range(3))
    file = upstream.add_file(filename="in.jsonl", purpose="batch", content=content)
    response = requests.post(f"{relay_url}/v1/batches", json={
        "input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        headers=auth(scoped[1]), timeout=30)
    assert response.status_code == 200, response.text


# --- 6. X-Forwarded-For ------------------------------------------------------------------------


@pytest.mark.parametrize("forwarded, trusted, recorded", [
    ("not-an-ip", 1, "127.0.0.1"),
    ("1.2.3.4:5678", 1, "127.0.0.1"),
    ("6.6.6.6, 10.0.0.5", 1, "10.0.0.5"),  # the leftmost entry is the client's to write
    ("6.6.6.6, 10.0.0.5, 10.0.0.9", 2, "10.0.0.5"),
    ("10.0.0.5", 0, "127.0.0.1"),  # no proxy trusted: the header means nothing
])
def test_the_client_address_is_read_from_the_right_and_validated(relay_url, relay_key, upstream, settings,
                                                                 forwarded, trusted, recorded):
    settings.RELAY_TRUSTED_PROXIES = trusted
    settings.RELAY_TRUST_X_FORWARDED_FOR = bool(trusted)  # the old switch, which believed the leftmost entry
    response = requests.get(f"{relay_url}/v1/models", timeout=30,
                            headers={**auth(relay_key), "X-Forwarded-For": forwarded})
    assert response.status_code == 200
    assert finished_calls(1)[0].client_ip == recorded


def test_trusted_proxy_networks_are_skipped_from_the_right(relay_url, relay_key, upstream, settings):
    settings.RELAY_TRUSTED_PROXY_NETWORKS = ["127.0.0.0/8", "10.0.0.0/8"]
    requests.get(f"{relay_url}/v1/models", timeout=30,
                 headers={**auth(relay_key), "X-Forwarded-For": "6.6.6.6, 7.7.7.7, 10.1.2.3"})
    assert finished_calls(1)[0].client_ip == "7.7.7.7"


# --- 7. text PostgreSQL cannot store ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini\u0000x", "gpt-4o-mini\ud800"])
def test_a_model_name_postgresql_cannot_store_still_finishes_the_row(relay_url, relay_key, upstream, model):
    body = json.dumps({"model": model, "input": "hi"})  # ASCII-escaped: valid JSON upstream reads
    response = requests.post(f"{relay_url}/v1/responses", data=body, timeout=30,
                             headers={**auth(relay_key), "Content-Type": "application/json"})
    assert response.status_code == 200
    row = finished_calls(1)[0]
    assert row.outcome == Outcome.OK
    assert row.model.startswith("gpt-4o-mini") and "\x00" not in row.model
    row.model.encode("utf-8")  # no lone surrogate


def test_a_refused_path_with_a_nul_is_recorded_not_journaled(relay_url, relay_key, upstream):
    # The rollup bucket of a rejected call is named after the path's first segment.
    response = requests.get(f"{relay_url}/v1/mo%00dels", headers=auth(relay_key), timeout=30)
    refused(response, upstream, 400)
    row = finished_calls(1)[0]
    assert row.outcome == Outcome.REJECTED and "\x00" not in row.path and "\x00" not in row.family
    from audit_app.models import UsageDaily

    assert UsageDaily.objects.get().family == "mo?dels"


# --- 8. the rate limit counts admitted requests only ------------------------------------------------


def test_requests_refused_by_a_later_check_do_not_spend_the_rate_limit(relay_url, scoped, upstream):
    key, plaintext = scoped
    key.requests_per_minute = 2
    key.save()
    for _ in range(3):  # refused on the body's model: never admitted
        post_raw(relay_url, plaintext, b'{"model": "gpt-4o", "input": "hi"}')
    for _ in range(2):
        assert post_raw(relay_url, plaintext, b'{"model": "gpt-4o-mini", "input": "hi"}').status_code == 200
    third = post_raw(relay_url, plaintext, b'{"model": "gpt-4o-mini", "input": "hi"}')
    assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"


# --- 9. deep JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/proxy"])
def test_deeply_nested_json_is_a_400_in_openais_shape(relay_url, relay_key, upstream, path):
    body = b'{"model": "gpt-4o-mini", "input": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert len(body) < 5000
    error = refused(post_raw(relay_url, relay_key, body, path), upstream, 400)
    assert "nested too deeply" in error["message"]


# --- 11. attempts with a revoked or expired key ---------------------------------------------------------


@pytest.mark.parametrize("state", ["revoked", "expired"])
def test_an_attempt_with_a_dead_key_is_recorded_against_that_key_and_its_owner(relay_url, issue_key, upstream,
                                                                              state):
    key, plaintext = issue_key("mallory", expires_at=timezone.now() - timedelta(days=1)) \
        if state == "expired" else issue_key("mallory")
    if state == "revoked":
        key.revoke()
    refused(requests.get(f"{relay_url}/v1/models", headers=auth(plaintext), timeout=30), upstream, 401)
    row = finished_calls(1)[0]
    assert row.outcome == Outcome.REJECTED and row.status == 401
    assert row.key_id == key.pk and row.user_id == key.owner_id


# --- 12. unauthenticated requests ---------------------------------------------------------------------


def test_failed_authentications_are_throttled_per_address_without_audit_rows(relay_url, upstream, settings):
    settings.RELAY_UNAUTHENTICATED_PER_MINUTE = 3
    if int(time.time()) % 60 > 55:  # the count is per minute: stay inside one
        time.sleep(61 - int(time.time()) % 60)
    statuses = [requests.get(f"{relay_url}/v1/models", headers=auth(f"tr-wrong{i}"), timeout=30).status_code
                for i in range(6)]
    assert statuses == [401, 401, 401, 429, 429, 429]
    settle()
    assert ApiCall.objects.count() == 3
    assert upstream.requests == []


# --- 13. a key in the query string --------------------------------------------------------------------


@pytest.mark.parametrize("query", ["api_key=SECRET", "limit=2&API_KEY=SECRET", "key=SECRET",
                                   "access_token=SECRET"])
def test_a_key_in_the_query_string_is_refused_and_never_forwarded(relay_url, relay_key, upstream, query):
    response = requests.get(f"{relay_url}/v1/models?{query.replace('SECRET', relay_key)}", timeout=30)
    error = refused(response, upstream, 400)
    assert error["code"] == "key_in_query_string"
    assert relay_key not in response.text


def test_a_key_in_the_envelopes_query_is_refused_too(relay_url, relay_key, upstream):
    response = requests.post(f"{relay_url}/v1/proxy", headers=auth(relay_key), timeout=30,
                             json={"method": "GET", "path": "/v1/models", "query": {"api_key": relay_key}})
    assert refused(response, upstream, 400)["code"] == "key_in_query_string"


def test_the_access_log_never_shows_a_key_from_the_url(start_gunicorn, relay_key, upstream):
    relay = start_gunicorn(GUNICORN_ACCESSLOG="-", GUNICORN_LOGLEVEL="info")
    response = requests.get(f"{relay.url}/v1/models?api_key={relay_key}&limit=2", timeout=30)
    assert response.status_code == 400
    settle()
    time.sleep(0.5)  # the access line is written as the response ends
    log = relay.log()
    assert "/v1/models?api_key=[redacted]&limit=2" in log
    assert relay_key not in log and relay_key[3:] not in log


# --- 14. keys quoted in upstream errors -------------------------------------------------------------------


def test_a_key_quoted_in_an_upstream_error_is_scrubbed_from_the_audit_row(relay_url, relay_key, upstream):
    masked = "sk-proj-" + "*" * 40 + "abcd"
    upstream.inject("/v1/models", status=401, body={"error": {
        "message": f"Incorrect API key provided: {masked}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.", "type": "invalid_request_error",
        "param": None, "code": "invalid_api_key"}})
    assert requests.get(f"{relay_url}/v1/models", headers=auth(relay_key), timeout=30).status_code == 401
    row = finished_calls(1)[0]
    assert "Incorrect API key provided: sk-[redacted]" in row.error
    assert "abcd" not in row.error and "****" not in row.error


# --- 15. the admin-key APIs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/projects/proj_1/users", "/v1/projects/proj_1/service_accounts",
                                  "/v1/projects/proj_1/api_keys", "/v1/projects/proj_1/roles",
                                  "/v1/organization/admin_api_keys"])
def test_every_admin_key_api_is_blocked_by_default(relay_url, relay_key, upstream, path):
    error = refused(requests.get(f"{relay_url}{path}", headers=auth(relay_key), timeout=30), upstream, 403)
    assert error["code"] == "blocked_path"


# --- 16. an encoded slash stays encoded (gunicorn keeps the raw path) ------------------------------------------


def test_an_encoded_slash_reaches_upstream_still_encoded(start_gunicorn, relay_key, upstream):
    relay = start_gunicorn()
    response = requests.get(f"{relay.url}/v1/files/file-a%2Fb/content", headers=auth(relay_key), timeout=30)
    assert response.status_code < 500
    assert [r.path for r in upstream.requests] == ["/v1/files/file-a%2Fb/content"]


# --- 17. non-ASCII paths in the envelope ---------------------------------------------------------------------


def test_a_non_ascii_envelope_path_is_recorded_as_it_was_sent(relay_url, relay_key, upstream):
    response = requests.post(f"{relay_url}/v1/proxy", headers=auth(relay_key), timeout=30,
                             json={"method": "GET", "path": "/v1/files/fïlé-ü"})
    assert response.status_code < 500, response.text
    assert [r.path for r in upstream.requests] == ["/v1/files/f%C3%AFl%C3%A9-%C3%BC"]
    assert finished_calls(1)[0].path == "/v1/files/fïlé-ü"


@pytest.mark.parametrize("path", ["/v1/files/\ud800", "/v1/files/%FF"])
def test_an_envelope_path_that_is_not_utf8_is_refused(relay_url, relay_key, upstream, path):
    response = requests.post(f"{relay_url}/v1/proxy", headers={**auth(relay_key), "Content-Type": "application/json"},
                             data=json.dumps({"method": "GET", "path": path}), timeout=30)
    refused(response, upstream, 400)


# --- 18. a disallowed Host --------------------------------------------------------------------------------------


def test_a_disallowed_host_gets_an_openai_shaped_400(relay_url, relay_key, upstream, settings):
    settings.ALLOWED_HOSTS = ["relay.example"]
    response = requests.get(f"{relay_url}/v1/models", headers={**auth(relay_key), "Host": "evil.example"},
                            timeout=30)
    refused(response, upstream, 400)


# --- 10. admin actions need their permission ----------------------------------------------------------------


@pytest.fixture
def view_only_staff(django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="unused", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    return user


def test_a_view_only_staff_user_can_run_no_admin_action(client, view_only_staff, issue_key):
    from django.contrib import admin
    from django.test import RequestFactory

    from proxy_app.models import RelayKey

    key, _ = issue_key("alice")
    client.force_login(view_only_staff)
    response = client.post("/admin/proxy_app/relaykey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    assert response.status_code in (200, 302, 403)
    key.refresh_from_db()
    assert key.revoked_at is None
    # Every action of every registered admin, not only revoke: none is offered to a view-only user.
    request = RequestFactory().get("/admin/")
    request.user = view_only_staff
    offered = {f"{model._meta.label}.{name}" for model, model_admin in admin.site._registry.items()
               for name in (model_admin.get_actions(request) or {})}
    assert offered == set(), offered
    assert RelayKey.objects.get(pk=key.pk).revoked_at is None


# --- 19. verify_audit reports every finding --------------------------------------------------------------------


def test_verify_audit_reports_every_edit_not_only_the_first(relay_url, relay_key, upstream):
    from django.core.management import call_command
    from django.db import connection

    from audit_app.ledger import seal, verify

    for i in range(4):
        requests.post(f"{relay_url}/v1/responses", json={"model": "gpt-4o-mini", "input": str(i)},
                      headers=auth(relay_key), timeout=30)
    finished_calls(4)
    settle()
    assert seal().calls == 4
    rows = list(ApiCall.objects.order_by("pk"))
    with connection.cursor() as cursor:
        for row in (rows[0], rows[2]):
            cursor.execute(f"UPDATE {ApiCall._meta.db_table} SET status = 299 WHERE id = %s", [row.pk])
    result = verify(record=False)
    assert result.count == 2
    assert [f"call {rows[0].pk}" in result.findings[0], f"call {rows[2].pk}" in result.findings[1]] == [True, True]
    from io import StringIO

    err = StringIO()
    with pytest.raises(SystemExit) as stopped:
        call_command("verify_audit", stdout=StringIO(), stderr=err)
    assert stopped.value.code == 1
    assert f"call {rows[0].pk}" in err.getvalue() and f"call {rows[2].pk}" in err.getvalue()
    assert "2 finding(s)" in err.getvalue()


# --- the redaction rules themselves ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kept, gone", [
    ("Incorrect API key provided: sk-proj-****************abcd. You can find it", "sk-[redacted]", "abcd"),
    ("key tr-AbCdEf0123456789_-xyz was refused", "tr-[redacted]", "AbCdEf"),
    ("GET /v1/models?limit=2&api_key=tr-secret123 HTTP/1.1", "limit=2&api_key=[redacted] HTTP", "secret123"),
    ("model gpt-4o-mini and task-runner are not keys", "gpt-4o-mini and task-runner", "[redacted]"),
])
def test_key_like_strings_are_scrubbed_and_nothing_else(text, kept, gone):
    from relay_project.redact import scrub_keys

    assert kept in scrub_keys(text) and gone not in scrub_keys(text)


def test_text_is_made_storable_for_postgresql():
    from relay_project.redact import storable

    assert storable("a\x00b\ud800c") == "a?b?c"
    assert storable("fïlé") == "fïlé"



def test_verify_audit_lists_a_bounded_number_of_findings_and_counts_them_all():
    from audit_app.ledger import FINDINGS_LISTED, Verification

    out = Verification(checked=500)
    for i in range(FINDINGS_LISTED + 50):
        out.add(f"call {i} was edited after it was sealed")
    out.add("")  # no finding
    assert out.count == FINDINGS_LISTED + 50 and len(out.findings) == FINDINGS_LISTED
    assert not out.ok and out.problem == "call 0 was edited after it was sealed"
    assert out.summary().startswith(f"{FINDINGS_LISTED + 50} finding(s) (the first {FINDINGS_LISTED} listed)")
