"""Scopes, budgets and rate limits: refused before anything is forwarded."""
import json
from datetime import timedelta
from decimal import Decimal

import pytest
import requests
from django.core.cache import cache
from django.utils import timezone

from audit_app.models import Outcome, UsageDaily
from proxy_app.models import UserLimit
from tests.conftest import finished_calls


pytestmark = pytest.mark.usefixtures("empty_cache")


def call(relay_url, key, path="/v1/responses", body=None, **kwargs):
    body = {"model": "gpt-4o-mini", "input": "hi"} if body is None else body
    return requests.post(f"{relay_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"},
                         timeout=30, **kwargs)


def assert_refused(response, status, *, names):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert names in error["message"], error["message"]
    return error


def test_family_scope(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.allowed_families = ["embeddings"]
    key.save()
    assert_refused(call(relay_url, plaintext), 403, names="allowed_families")
    assert upstream.requests == []
    ok = call(relay_url, plaintext, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    assert ok.status_code == 200
    assert [r.path for r in upstream.requests] == ["/v1/embeddings"]


def test_model_scope_in_json_body(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.allowed_models = ["gpt-4o-mini"]
    key.save()
    body = {"input": "x" * 200_000, "model": "gpt-4o"}  # the model after a large field
    error = assert_refused(call(relay_url, plaintext, body=body), 403, names="allowed_models")
    assert error["param"] == "model"
    assert upstream.requests == []
    assert call(relay_url, plaintext).status_code == 200
    sent = upstream.requests[-1]
    assert json.loads(sent.body) == {"model": "gpt-4o-mini", "input": "hi"}
    rows = finished_calls(2)
    assert [r.outcome for r in rows] == [Outcome.REJECTED, Outcome.OK]


def test_model_scope_in_multipart_fields(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.allowed_models = ["whisper-1"]
    key.save()
    files = {"file": ("a.wav", b"RIFF" + b"\0" * 5000, "audio/wav")}
    response = requests.post(f"{relay_url}/v1/audio/transcriptions", files=files,
                             data={"model": "gpt-4o-transcribe"},
                             headers={"Authorization": f"Bearer {plaintext}"}, timeout=30)
    assert_refused(response, 403, names="allowed_models")
    assert upstream.requests == []
    response = requests.post(f"{relay_url}/v1/audio/transcriptions", files=files, data={"model": "whisper-1"},
                             headers={"Authorization": f"Bearer {plaintext}"}, timeout=30)
    assert response.status_code == 200
    assert upstream.requests[-1].body_length == len(response.request.body)


def test_model_scope_inside_batch_input_files(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.allowed_models = ["gpt-4o-mini"]
    key.save()
    lines = [{"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini" if i < 50 else "gpt-4o", "messages": []}} for i in range(60)]
    bad = upstream.add_file(filename="in.jsonl", purpose="batch",
                            content=b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    good = upstream.add_file(filename="ok.jsonl", purpose="batch",
                             content=b"".join(json.dumps(line).encode() + b"\n" for line in lines[:50]))
    batch = {"input_file_id": bad["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    error = assert_refused(call(relay_url, plaintext, "/v1/batches", batch), 403, names="allowed_models")
    assert "line 51" in error["message"]
    assert not any(r.path == "/v1/batches" for r in upstream.requests)
    batch["input_file_id"] = good["id"]
    assert call(relay_url, plaintext, "/v1/batches", batch).status_code == 200


def spend(key, user, cost: str, model: str = "gpt-4o"):
    UsageDaily.objects.create(date=timezone.localdate(), user=user, key=key, model=model,
                              family="responses", calls=1, cost=Decimal(cost))


def test_key_budget(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.monthly_budget_usd = Decimal("5.00")
    key.save()
    spend(key, key.owner, "4.99")
    assert call(relay_url, plaintext).status_code == 200
    cache.clear()
    spend(key, key.owner, "0.01", model="o3")
    error = assert_refused(call(relay_url, plaintext), 429, names="monthly_budget_usd")
    assert "$5.00" in error["message"] and error["code"] == "relay_budget_exceeded"
    assert len(upstream.requests) == 1


def test_last_months_spend_does_not_count(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.monthly_budget_usd = Decimal("1")
    key.save()
    UsageDaily.objects.create(date=timezone.localdate().replace(day=1) - timedelta(days=1), user=key.owner,
                              key=key, model="gpt-4o", family="responses", calls=1, cost=Decimal("50"))
    assert call(relay_url, plaintext).status_code == 200


def test_user_budget_covers_all_their_keys(relay_url, issue_key, upstream):
    key1, _ = issue_key()
    key2, plaintext2 = issue_key()
    UserLimit.objects.create(user=key1.owner, monthly_budget_usd=Decimal("10"))
    spend(key1, key1.owner, "10")
    assert_refused(call(relay_url, plaintext2), 429, names="user monthly_budget_usd")
    assert upstream.requests == []


def test_budget_check_reads_rollups_through_the_cache(issue_key, django_assert_num_queries):
    from proxy_app.access import month_spend

    key, _ = issue_key()
    spend(key, key.owner, "1.25")
    assert month_spend(key_id=key.pk) == Decimal("1.25")
    with django_assert_num_queries(1):  # the cache read, not the rollup query
        assert month_spend(key_id=key.pk) == Decimal("1.25")


def test_rate_limit_per_key(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.requests_per_minute = 3
    key.save()
    statuses = [call(relay_url, plaintext).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    response = call(relay_url, plaintext)
    assert 55 <= int(response.headers["Retry-After"]) <= 60  # until the three calls leave the count
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert len(upstream.requests) == 3
    other_key, other = issue_key()
    assert call(relay_url, other).status_code == 200


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_rate_limit_window_boundary_admits_no_second_burst(relay_url, issue_key, upstream, monkeypatch):
    from proxy_app import access

    minute = 60 * 29_000_000
    clock = Clock(minute + 59.0)  # one second before a minute ends
    monkeypatch.setattr(access, "time", clock)
    key, plaintext = issue_key()
    key.requests_per_minute = 10
    key.save()
    assert [call(relay_url, plaintext).status_code for _ in range(10)] == [200] * 10
    clock.now = minute + 60.5  # the next minute has begun
    assert call(relay_url, plaintext).status_code == 429, "a fixed window would admit a second burst here"
    clock.now = minute + 60 + 54.5  # the burst is still within the last 55 seconds
    response = call(relay_url, plaintext)
    assert response.status_code == 429
    # Waiting as told lets the whole burst leave the count.
    clock.now += int(response.headers["Retry-After"])
    assert clock.now == minute + 60 + 55.5
    assert [call(relay_url, plaintext).status_code for _ in range(11)] == [200] * 10 + [429]
    assert len(upstream.requests) == 20


def test_rate_limit_never_refuses_a_client_within_its_limit(relay_url, issue_key, upstream, monkeypatch):
    from proxy_app import access

    clock = Clock(60 * 29_000_000 + 17.0)
    monkeypatch.setattr(access, "time", clock)
    key, plaintext = issue_key()
    key.requests_per_minute = 2
    key.save()
    statuses = []
    for _ in range(8):  # 1.5 a minute, under its 2 in any minute
        statuses.append(call(relay_url, plaintext).status_code)
        clock.now += 40
    assert statuses == [200] * 8
    # A third call within 41 seconds of the last two is refused.
    clock.now -= 40 - 1
    assert call(relay_url, plaintext).status_code == 429


@pytest.mark.parametrize("cache_url", ["", "redis://127.0.0.1:6379/15"], indirect=True)
def test_rate_limit_is_shared_across_workers(start_gunicorn, issue_key, upstream, cache_url):
    key, plaintext = issue_key()
    key.requests_per_minute = 10
    key.save()
    relay = start_gunicorn(GUNICORN_WORKERS="3", CACHE_URL=cache_url)
    statuses = [call(relay.url, plaintext).status_code for _ in range(16)]
    assert statuses.count(200) == 10 and statuses.count(429) == 6
    assert len(upstream.requests) == 10
