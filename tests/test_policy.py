"""What the relay refuses itself: blocked paths, odd paths, bodies too large or of the wrong type."""
import pytest
import requests

from tests.conftest import finished_call
from audit_app.models import Outcome


@pytest.fixture
def auth(relay_key):
    return {"Authorization": f"Bearer {relay_key}"}


def error_of(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/evals", "/v1/organization/users",
                                  "/v1/Fine_Tuning/jobs"])
def test_blocked_prefixes_are_403_naming_the_rule(relay_url, auth, upstream, path):
    error = error_of(requests.get(relay_url + path, headers=auth, timeout=10), 403)
    assert "RELAY_BLOCKED_PATH_PREFIXES" in error["message"]
    assert upstream.requests == []
    row = finished_call()
    assert row.outcome == Outcome.REJECTED and row.status == 403 and row.key_id is not None


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/chat/Completions"), ("POST", "/v1/Responses"), ("POST", "/v1/Realtime/client_secrets"),
    ("POST", "/v1/Embeddings"), ("GET", "/v1/Models"), ("POST", "/v1/videos/video_1/Remix"),
])
def test_an_endpoint_spelled_in_other_letter_case_is_refused_not_guessed(relay_url, auth, upstream, method, path):
    # Every rule keyed on the endpoint (scopes, budgets, billing) reads it in lower case, as
    # OpenAI names it; another spelling would pass them all by if upstream took it.
    error = error_of(requests.request(method, relay_url + path, json={"model": "gpt-4o-mini"}, headers=auth,
                                      timeout=10), 404)
    assert error["code"] == "unknown_url"
    assert upstream.requests == []


def test_ids_in_any_letter_case_pass(relay_url, auth, upstream):
    mixed = "file-AbCdEf0123456789AbCdEf01"
    assert requests.get(f"{relay_url}/v1/files/{mixed}/content", headers=auth, timeout=10).status_code == 404
    assert upstream.requests[-1].path == f"/v1/files/{mixed}/content"  # forwarded: upstream's 404


def test_prefix_match_is_by_segment(relay_url, auth, upstream):
    # /v1/evals_extra is not /v1/evals: it is forwarded (and upstream 404s it).
    response = requests.get(f"{relay_url}/v1/evals_extra", headers=auth, timeout=10)
    assert response.status_code == 404
    assert len(upstream.requests) == 1


def test_blocked_prefixes_are_configurable(relay_url, auth, upstream, settings):
    settings.RELAY_BLOCKED_PATH_PREFIXES = ["/v1/images"]
    error_of(requests.post(f"{relay_url}/v1/images/generations", json={}, headers=auth, timeout=10), 403)
    assert requests.get(f"{relay_url}/v1/fine_tuning/jobs", headers=auth, timeout=10).status_code != 403


@pytest.mark.parametrize("raw_path", [
    "/v1/models/../fine_tuning/jobs",
    "/v1/models/%2e%2e/fine_tuning/jobs",
    "/v1/./models",
    "/v1//models",
    "/v1/models%5c..%5cfine_tuning",
])
def test_dot_segments_and_odd_paths_are_400(relay_url, auth, upstream, raw_path):
    # urllib3 would normalise the path; send it byte for byte.
    session = requests.Session()
    req = requests.Request("GET", relay_url + "/v1/models", headers=auth).prepare()
    req.url = relay_url + raw_path
    response = session.send(req, timeout=10)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["code"] in ("invalid_path", "unknown_url")
    assert upstream.requests == []


def test_body_over_limit_is_413_before_forwarding(relay_url, auth, upstream, settings):
    settings.RELAY_MAX_BODY_BYTES = 1000
    error = error_of(
        requests.post(f"{relay_url}/v1/files", data=b"x" * 5000, headers={
            **auth, "Content-Type": "application/octet-stream"}, timeout=10),
        413,
    )
    assert "1000" in error["message"]
    assert upstream.requests == []


def test_chunked_body_over_limit_is_413(start_gunicorn, auth, upstream):
    # A chunked body has no Content-Length to refuse up front; Django's test
    # server cannot read one, so this runs under gunicorn.
    gunicorn_relay = start_gunicorn(RELAY_MAX_BODY_BYTES="100000")

    def chunks():
        for _ in range(10):
            yield b"y" * 65536

    response = requests.post(f"{gunicorn_relay.url}/v1/files", data=chunks(), headers={
        **auth, "Content-Type": "application/octet-stream"}, timeout=10)
    error_of(response, 413)
    # Upstream may have seen the start of the body, never a complete request.
    assert all(r.body_length < 655360 for r in upstream.requests)
    assert finished_call().status == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", ""])
def test_unsupported_body_type_is_415(relay_url, auth, upstream, content_type):
    headers = {**auth, "Content-Type": content_type} if content_type else auth
    response = requests.post(f"{relay_url}/v1/responses", data=b'{"model": "x"}', headers=headers,
                             timeout=10)
    error_of(response, 415)
    assert upstream.requests == []


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "CONNECTX"])
def test_unknown_methods_are_405(relay_url, auth, upstream, method):
    response = requests.request(method, f"{relay_url}/v1/models", headers=auth, timeout=10)
    error_of(response, 405)
    assert upstream.requests == []


def test_the_relay_view_lists_its_whole_policy_in_the_order_it_runs():
    """The request policy is the view's lists (DRF runs permissions, then throttles): the rate
    limit, the only throttle, runs last, so only admitted requests count. No rule is
    registered on import."""
    from proxy_app import policy
    from proxy_app.access import CostReserved, FamilyInScope, KeyRateLimit, ModelInScope, WithinBudget
    from proxy_app.auth import HasRelayKey
    from proxy_app.inspection import BodyReadable
    from proxy_app.policy import NoUserDataFiles, PathAllowed
    from proxy_app.realtime_http import ClientSecretChecked, RealtimeCallAllowed
    from proxy_app.views import RelayView

    assert RelayView.permission_classes == [HasRelayKey, PathAllowed, FamilyInScope, WithinBudget,
                                            NoUserDataFiles, RealtimeCallAllowed, BodyReadable,
                                            ModelInScope, ClientSecretChecked, CostReserved]
    assert RelayView.throttle_classes == [KeyRateLimit]
    assert not hasattr(policy, "REQUEST_RULES")
