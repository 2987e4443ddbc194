"""The Realtime API's HTTP side through the relay: WebRTC calls (an SDP offer)
and ephemeral client secrets, recorded with their caller."""
from __future__ import annotations

import json

import requests

from tests.conftest import finished_call, settle

OFFER = b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def limited_key(issue_key, models=None, budget=None):
    key, plaintext = issue_key()
    key.allowed_models = models or []
    key.monthly_budget_usd = budget
    key.save()
    return key, plaintext


def test_a_webrtc_call_with_an_sdp_offer_is_forwarded_and_its_location_reaches_the_client(
        relay_url, upstream, issue_key):
    key, plaintext = issue_key()
    resp = requests.post(f"{relay_url}/v1/realtime/calls", data=OFFER, timeout=10,
                         headers={"Authorization": f"Bearer {plaintext}", "Content-Type": "application/sdp"})
    assert resp.status_code == 201, resp.text
    assert resp.headers["Content-Type"] == "application/sdp" and resp.content.startswith(b"v=0")
    assert resp.headers["Location"].startswith("/v1/realtime/calls/rtc_")
    assert upstream.requests[-1].body == OFFER
    row = finished_call()
    # The call's audio is billed by OpenAI and never crosses the relay: usage unknown, never $0.
    assert (row.key_id, row.status, row.billing, row.cost) == (key.id, 201, "unknown", None)


def test_a_client_secret_minted_through_the_relay_is_recorded_with_its_caller(sdk, upstream, relay_key):
    secret = sdk.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-realtime"})
    assert secret.value.startswith("ek_")
    row = finished_call()
    assert (row.path, row.user.username, row.status, row.billing) == (
        "/v1/realtime/client_secrets", "alice", 200, "free")


def test_a_model_scoped_key_mints_a_client_secret_only_for_an_allowed_model(relay_url, upstream, issue_key):
    key, plaintext = limited_key(issue_key, models=["gpt-realtime-mini"])

    def mint(body):
        return requests.post(f"{relay_url}/v1/realtime/client_secrets", json=body, timeout=10,
                             headers={"Authorization": f"Bearer {plaintext}"})

    assert mint({"session": {"type": "realtime", "model": "gpt-realtime-mini"}}).status_code == 200
    refused = mint({"session": {"type": "realtime", "model": "gpt-realtime"}})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "outside_key_scope"
    unnamed = mint({"session": {"type": "realtime"}})
    assert unnamed.status_code == 403 and unnamed.json()["error"]["param"] == "session.model"
    settle()
    minted = [r for r in upstream.requests if r.path.endswith("/client_secrets")]
    assert len(minted) == 1


def test_a_limited_keys_client_secret_is_read_as_upstream_reads_it_or_refused(relay_url, upstream, issue_key, settings):
    key, plaintext = limited_key(issue_key, models=["gpt-realtime-mini"])
    auth = {"Authorization": f"Bearer {plaintext}"}
    url = f"{relay_url}/v1/realtime/client_secrets"
    denied = json.dumps({"session": {"type": "realtime", "model": "gpt-realtime"}}).encode()
    # Upstream reads the body as JSON whatever its label: so does the relay.
    for label in ("application/octet-stream", "application/x-www-form-urlencoded"):
        r = requests.post(url, data=denied, headers={**auth, "Content-Type": label}, timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "outside_key_scope"), label
    # Of two `model` keys the relay and upstream could take different ones.
    twice = b'{"session": {"type": "realtime", "model": "gpt-realtime-mini", "model": "gpt-realtime"}}'
    r = requests.post(url, data=twice, headers={**auth, "Content-Type": "application/json"}, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_body")
    # A body it cannot read whole before forwarding: sent chunked, or over the inspection limit.
    r = requests.post(url, data=iter([denied]), headers={**auth, "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 403 and "Content-Length" in r.json()["error"]["message"]
    settings.RELAY_INSPECT_MAX_BYTES = 64
    allowed = {"session": {"type": "realtime", "model": "gpt-realtime-mini", "instructions": "x" * 64}}
    r = requests.post(url, json=allowed, headers=auth, timeout=10)
    assert r.status_code == 403 and "over 64 bytes" in r.json()["error"]["message"]
    settle()
    assert not [r for r in upstream.requests if r.path.endswith("/client_secrets")]


def test_a_key_with_a_budget_may_not_start_a_webrtc_call_directly(relay_url, upstream, issue_key):
    key, plaintext = limited_key(issue_key, budget="10.00")
    resp = requests.post(f"{relay_url}/v1/realtime/calls", data=OFFER, timeout=10,
                         headers={"Authorization": f"Bearer {plaintext}", "Content-Type": "application/sdp"})
    assert resp.status_code == 403 and "client secret" in resp.json()["error"]["message"]
    assert not [r for r in upstream.requests if r.path.endswith("/calls")]


def test_the_sdk_starts_a_webrtc_call_through_the_relay(sdk, upstream, relay_key):
    answer = sdk.realtime.calls.create(sdp=OFFER.decode())
    assert answer.content.startswith(b"v=0")
    row = finished_call()
    assert (row.path, row.status, row.billing) == ("/v1/realtime/calls", 201, "unknown")


def test_a_team_budget_makes_a_key_limited_so_it_may_not_start_a_webrtc_call_directly(
        relay_url, upstream, django_user_model):
    from decimal import Decimal

    from django.contrib.auth.models import Group

    from proxy_app.models import RelayKey, Team

    team = Team.objects.create(group=Group.objects.create(name="ops"), monthly_budget_usd=Decimal("1.00"))
    owner = django_user_model.objects.create_user("carol")
    owner.groups.add(team.group)
    key, plaintext = RelayKey.issue(owner)
    assert key.team == team and key.monthly_budget_usd is None
    resp = requests.post(f"{relay_url}/v1/realtime/calls", data=OFFER, timeout=10,
                         headers={"Authorization": f"Bearer {plaintext}", "Content-Type": "application/sdp"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "outside_key_scope"
    settle()
    assert not [r for r in upstream.requests if r.path.endswith("/calls")]


def test_a_client_secret_whose_transcription_is_not_an_object_is_refused_with_400_not_a_5xx(
        relay_url, upstream, issue_key):
    key, plaintext = limited_key(issue_key, models=["gpt-realtime-mini"])
    for transcription in ("x", ["x"]):
        resp = requests.post(f"{relay_url}/v1/realtime/client_secrets", timeout=10,
                             headers={"Authorization": f"Bearer {plaintext}"},
                             json={"session": {"type": "realtime", "model": "gpt-realtime-mini",
                                               "audio": {"input": {"transcription": transcription}}}})
        assert resp.status_code == 400, (resp.status_code, resp.text[:300])
        assert resp.json()["error"]["code"] == "invalid_body"
    settle()
    assert not [r for r in upstream.requests if r.path.endswith("/client_secrets")]


def test_a_client_secret_naming_a_denied_model_in_any_field_is_refused(relay_url, upstream, issue_key):
    key, plaintext = limited_key(issue_key, models=["gpt-realtime-mini"])
    resp = requests.post(f"{relay_url}/v1/realtime/client_secrets", timeout=10,
                         headers={"Authorization": f"Bearer {plaintext}"},
                         json={"session": {"type": "realtime", "model": "gpt-realtime-mini",
                                           "tools": [{"type": "image_generation", "model": "gpt-image-1"}]}})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "outside_key_scope"
    settle()
    assert not [r for r in upstream.requests if r.path.endswith("/client_secrets")]


def test_a_limited_key_may_mint_sessions_and_secrets_only_through_the_checked_client_secrets(
        relay_url, upstream, issue_key):
    key, plaintext = limited_key(issue_key, models=["gpt-realtime-mini"], budget="5.00")
    h = {"Authorization": f"Bearer {plaintext}"}
    refused = [
        requests.post(f"{relay_url}/v1/realtime/sessions", json={"voice": "alloy"}, headers=h, timeout=10),
        requests.post(f"{relay_url}/v1/realtime/transcription_sessions", headers=h, timeout=10,
                      json={"input_audio_transcription": {"model": "gpt-4o-transcribe-NOT-ALLOWED"}}),
        requests.post(f"{relay_url}/v1/realtime/translations/client_secrets", headers=h, timeout=10,
                      json={"session": {"model": "gpt-realtime-translate-NOT-ALLOWED"}}),
        requests.post(f"{relay_url}/v1/realtime/calls/rtc_123/accept", headers=h, timeout=10,
                      json={"type": "realtime", "model": "gpt-realtime"}),
    ]
    assert [r.status_code for r in refused] == [403] * 4, [r.text[:200] for r in refused]
    assert {r.json()["error"]["code"] for r in refused} == {"outside_key_scope"}
    settle()
    reached = [r.path for r in upstream.requests if "/realtime/" in r.path]
    assert not reached, reached
