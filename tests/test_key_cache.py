"""Authenticated keys are remembered per process for RELAY_KEY_CACHE_SECONDS.

A change saved in this process (the admin's) takes effect at once; one made
elsewhere (another worker, SQL, a queryset update: no signals) within the TTL.
"""
import time

import requests
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from proxy_app import key_cache
from proxy_app.models import RelayKey, UserLimit


def key_queries(plaintext: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert RelayKey.lookup(plaintext) is not None
    return sum('FROM "proxy_app_relaykey"' in q["sql"] for q in ctx.captured_queries)


def status(relay_url: str, plaintext: str) -> int:
    return requests.get(f"{relay_url}/v1/models", headers={"Authorization": f"Bearer {plaintext}"},
                        timeout=10).status_code


def test_a_key_seen_lately_is_not_queried_again(issue_key, settings):
    settings.RELAY_KEY_CACHE_SECONDS = 60
    _, plaintext = issue_key()
    assert key_queries(plaintext) == 1
    assert key_queries(plaintext) == 0


def test_ttl_zero_queries_every_time(issue_key, settings):
    settings.RELAY_KEY_CACHE_SECONDS = 0
    _, plaintext = issue_key()
    assert key_queries(plaintext) == 1
    assert key_queries(plaintext) == 1


def test_unknown_keys_are_not_remembered(db, settings):
    settings.RELAY_KEY_CACHE_SECONDS = 60
    before = len(key_cache._entries)
    assert RelayKey.lookup("tr-no-such-key") is None
    assert len(key_cache._entries) == before


def test_saves_in_this_process_drop_the_cached_key(issue_key, settings):
    settings.RELAY_KEY_CACHE_SECONDS = 60
    key, plaintext = issue_key()
    RelayKey.lookup(plaintext)
    key.allowed_models = ["gpt-4o-mini"]
    key.save()
    assert RelayKey.lookup(plaintext).allowed_models == ["gpt-4o-mini"]
    UserLimit.objects.create(user=key.owner, monthly_budget_usd=5)
    assert RelayKey.lookup(plaintext).owner.relay_limit.monthly_budget_usd == 5


def test_revoking_or_disabling_a_key_in_use_refuses_it_at_once(relay_url, issue_key, upstream, settings):
    settings.RELAY_KEY_CACHE_SECONDS = 60
    key, plaintext = issue_key()
    assert status(relay_url, plaintext) == 200
    key.revoke()
    assert status(relay_url, plaintext) == 401

    other, other_plaintext = issue_key("bob")
    assert status(relay_url, other_plaintext) == 200
    other.owner.is_active = False
    other.owner.save()
    assert status(relay_url, other_plaintext) == 401


def test_a_revocation_made_elsewhere_bites_within_the_ttl(relay_url, issue_key, upstream, settings):
    settings.RELAY_KEY_CACHE_SECONDS = 1.5  # room for a slow CI machine between the calls
    key, plaintext = issue_key()
    assert status(relay_url, plaintext) == 200
    # As another worker or host would: no signal reaches this process.
    RelayKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert status(relay_url, plaintext) == 200  # still remembered here
    time.sleep(1.6)
    assert status(relay_url, plaintext) == 401


def test_expiry_is_checked_on_every_call_even_when_cached(relay_url, issue_key, upstream, settings):
    settings.RELAY_KEY_CACHE_SECONDS = 60
    key, plaintext = issue_key(expires_at=timezone.now() + timezone.timedelta(seconds=1.5))
    assert status(relay_url, plaintext) == 200
    time.sleep(1.6)
    assert status(relay_url, plaintext) == 401
