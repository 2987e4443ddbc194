"""Relay keys: how they are issued, stored and checked; rejected requests reach nothing upstream."""
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone

from tests.conftest import finished_call
from audit_app.models import Outcome
from proxy_app.models import RelayKey, hash_key


def get_models(relay_url: str, **headers) -> requests.Response:
    return requests.get(f"{relay_url}/v1/models", headers=headers, timeout=10)


def assert_openai_error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_bearer_key_is_accepted(relay_url, relay_key, upstream):
    response = get_models(relay_url, Authorization=f"Bearer {relay_key}")
    assert response.status_code == 200
    assert len(upstream.requests) == 1


def test_x_relay_key_header_is_accepted(relay_url, relay_key, upstream):
    assert get_models(relay_url, **{"X-Relay-Key": relay_key}).status_code == 200


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer tr-not-a-real-key"}, "invalid_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_api_key"),
        ({"X-Api-Key": "whatever"}, "missing_api_key"),
    ],
)
def test_missing_or_unknown_key_is_401_and_not_forwarded(relay_url, relay_key, upstream, headers, code):
    error = assert_openai_error(get_models(relay_url, **headers), 401)
    assert error["code"] == code
    assert upstream.requests == []
    row = finished_call()
    assert (row.outcome, row.status, row.key_id) == (Outcome.REJECTED, 401, None)


def test_expired_key_is_401(relay_url, issue_key, upstream):
    _, plaintext = issue_key(expires_at=timezone.now() - timedelta(seconds=1))
    error = assert_openai_error(get_models(relay_url, Authorization=f"Bearer {plaintext}"), 401)
    assert "expired" in error["message"]
    assert upstream.requests == []


def test_revoked_key_is_401(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.revoke()
    error = assert_openai_error(get_models(relay_url, Authorization=f"Bearer {plaintext}"), 401)
    assert "revoked" in error["message"]
    assert plaintext not in error["message"]
    assert upstream.requests == []


def test_disabled_owner_is_401(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    key.owner.is_active = False
    key.owner.save()
    assert_openai_error(get_models(relay_url, Authorization=f"Bearer {plaintext}"), 401)
    assert upstream.requests == []


def test_key_is_stored_hashed_never_in_clear(issue_key):
    key, plaintext = issue_key(name="laptop")
    key.refresh_from_db()
    assert key.key_hash == hash_key(plaintext) != plaintext
    assert plaintext.startswith(key.prefix) and len(plaintext) > len(key.prefix) + 30
    stored = [str(v) for v in RelayKey.objects.values_list().get()]
    assert not any(plaintext in v for v in stored)


def test_create_relay_key_prints_key_once_on_last_line(db, capsys):
    call_command("create_relay_key", "bob", "--name", "ci", "--expires-days", "30")
    lines = capsys.readouterr().out.strip().splitlines()
    plaintext = lines[-1]
    key = RelayKey.lookup(plaintext)
    assert key is not None and key.owner.username == "bob" and key.name == "ci"
    assert timedelta(days=29) < key.expires_at - timezone.now() <= timedelta(days=30)
    assert not any(plaintext in line for line in lines[:-1])


def test_last_used_is_recorded(relay_url, issue_key, upstream):
    key, plaintext = issue_key()
    assert key.last_used_at is None
    get_models(relay_url, Authorization=f"Bearer {plaintext}")
    key.refresh_from_db()
    assert key.last_used_at is not None
