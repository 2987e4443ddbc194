"""The GPT Actions schema, and schemathesis fuzzing the live relay from it."""
import io
import re

import hypothesis
import pytest
import requests
import schemathesis
from django.core.management import call_command
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from proxy_app import envelope, paths
from proxy_app.actions_schema import ENVELOPE_PATH_PATTERN, document
from proxy_app.errors import PolicyDenied, RelayError
from tests.conftest import settle

FINE_TUNED = "ft:gpt-4o-mini-2024-07-18:acme:support-bot:9aBcDeF1"


def test_schema_is_importable_by_the_actions_editor(client, settings):
    settings.RELAY_PUBLIC_URL = "https://relay.example.com"
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert doc["servers"] == [{"url": "https://relay.example.com"}]
    ops = [op for item in doc["paths"].values() for method, op in item.items() if method != "parameters"]
    ids = [op["operationId"] for op in ops]
    assert len(ops) <= 30 and len(set(ids)) == len(ids)
    assert doc["components"]["securitySchemes"]["RelayKey"] == {
        "type": "http", "scheme": "bearer", "description": "Your personal relay key."}
    assert doc["security"] == [{"RelayKey": []}]
    for path in ("/v1/responses", "/v1/embeddings", "/v1/files", "/v1/files/{file_id}", "/v1/batches",
                 "/v1/vector_stores", "/v1/models", "/v1/proxy"):
        assert path in doc["paths"], path
    assert "/v1/files/{file_id}/content" not in doc["paths"]  # metadata only


def test_plugin_manifest_agrees_with_the_schema(client, settings):
    settings.RELAY_PUBLIC_URL = "https://relay.example.com/"
    manifest = client.get("/.well-known/ai-plugin.json").json()
    doc = client.get("/openapi.json").json()
    assert manifest["api"] == {"type": "openapi", "url": "https://relay.example.com/openapi.json"}
    assert manifest["auth"]["authorization_type"] == "bearer"
    assert doc["servers"][0]["url"].rstrip("/") + "/openapi.json" == manifest["api"]["url"]


def test_schemathesis_finds_no_relay_5xx(relay_url, relay_key, upstream, settings):
    """Every operation of /openapi.json, fuzzed against the live relay (and the fake upstream)."""
    settings.RELAY_PUBLIC_URL = relay_url
    schema = schemathesis.openapi.from_url(f"{relay_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 20
    calls = 0

    for operation in operations:
        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=6, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck),
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
        def fuzz(case):
            nonlocal calls
            response = case.call(headers={"Authorization": f"Bearer {relay_key}"}, timeout=30)
            calls += 1
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            assert "error" in response.json() if response.status_code >= 400 else True

        fuzz()
    settle()
    assert calls >= 40


def test_schema_validates_as_openapi_3_1(settings):
    settings.RELAY_PUBLIC_URL = "https://relay.example.com"
    validate(document(), cls=OpenAPIV31SpecValidator)


def object_schemas(node, where="#"):
    """Every schema in the document whose type is (or includes) object, with where it is."""
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "object" or (isinstance(kind, list) and "object" in kind):
            yield where, node
        for key, value in node.items():
            yield from object_schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from object_schemas(value, f"{where}/{i}")


def test_no_object_schema_is_bare():
    """The Actions editor flags objects without properties; each also says what else may come."""
    found = list(object_schemas(document()))
    assert len(found) >= 15
    for where, schema in found:
        assert schema.get("properties"), where
        assert "additionalProperties" in schema, where


def test_servers_is_the_public_url_without_a_trailing_slash(settings):
    settings.RELAY_PUBLIC_URL = "https://relay.example.com/"
    assert document()["servers"] == [{"url": "https://relay.example.com"}]


def test_path_parameters_accept_a_fine_tuned_model_id():
    pattern = document()["paths"]["/v1/models/{model}"]["parameters"][0]["schema"]["pattern"]
    assert re.search(pattern, FINE_TUNED)
    assert not re.search(pattern, "..") and not re.search(pattern, "a/b")


def test_envelope_pattern_is_the_one_in_the_schema_and_accepts_a_fine_tuned_model_id():
    body = document()["paths"]["/v1/proxy"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["path"]["pattern"] == ENVELOPE_PATH_PATTERN
    for path in (f"/v1/models/{FINE_TUNED}", "/v1/fine_tuning/jobs/ftjob-1/checkpoints",
                 "/v1/files/file-abc/content", "/v1/models", "/v1/models/", "/v1/a%20b"):
        assert re.search(ENVELOPE_PATH_PATTERN, path), path


def server_accepts(path: str) -> bool:
    """What the relay does with an envelope path: refuse its shape, or take it (policy may still deny)."""
    try:
        paths.parse(envelope.check_path(path))
    except PolicyDenied:
        return True  # a well-formed path to the relay's own endpoints: refused by policy, not by shape
    except RelayError:
        return False
    return True


AGREEMENT_CASES = [
    f"/v1/models/{FINE_TUNED}", "/v1/", "/v1", "v1/models", "/v1/models/..", "/v1/models/./x", "/v1/..a/b",
    "/v1//models", "/v1/models//", "/v1/models/", "/v1/a%2eb", "/v1/a%2Fb", "/v1/a%5cb", "/v1/a%3F", "/v1/a%23",
    "/v1/a%0a", "/v1/a%1F", "/v1/a%7f", "/v1/a%20b", "/v1/a%zz", "/v1/x://y", "/v1/a?b", "/v1/a#b", "/v1/a\\b",
    "/v1/a\nb", "/v1/models\n", "/v1/\u2028://x", "/v1/é", "/v1/proxy", "/V1/models", "https://x/v1/models",
]


@pytest.mark.parametrize("path", AGREEMENT_CASES)
def test_envelope_pattern_and_server_agree_on_edge_cases(path):
    assert bool(re.search(ENVELOPE_PATH_PATTERN, path)) == server_accepts(path)


@hypothesis.settings(max_examples=3000, deadline=None, database=None)
@hypothesis.given(st.one_of(
    st.text(alphabet="/.:%2eEfF35cC3f0a1d7v\\?# \n\x00é\u2028x", max_size=24),
    st.text(alphabet="/.:%2eEfF35cC3f0a1d7\\?# \n\x00é\u2028x", max_size=24).map(lambda s: "/v1/" + s),
))
def test_envelope_pattern_accepts_exactly_what_the_server_accepts(path):
    assert bool(re.search(ENVELOPE_PATH_PATTERN, path)) == server_accepts(path), path


def test_a_gpt_can_call_a_fine_tuned_model_through_the_envelope(relay_url, relay_key, upstream):
    response = requests.post(f"{relay_url}/v1/proxy", json={"method": "GET", "path": f"/v1/models/{FINE_TUNED}"},
                             headers={"Authorization": f"Bearer {relay_key}"}, timeout=10)
    assert response.status_code == 200 and response.json()["id"] == FINE_TUNED
    assert upstream.requests[-1].path == f"/v1/models/{FINE_TUNED}"


def test_a_non_ascii_envelope_path_is_relayed_and_a_lone_surrogate_refused(relay_url, relay_key, upstream):
    """Found by schemathesis once the pattern allowed what the server allows: both were 500s."""
    auth = {"Authorization": f"Bearer {relay_key}", "Content-Type": "application/json"}
    response = requests.post(f"{relay_url}/v1/proxy", json={"method": "GET", "path": "/v1/models/modèle-一"},
                             headers=auth, timeout=10)
    assert response.status_code == 200
    assert upstream.requests[-1].path == "/v1/models/mod%C3%A8le-%E4%B8%80"
    response = requests.post(f"{relay_url}/v1/proxy", data=b'{"method": "GET", "path": "/v1/models/\\ud800"}',
                             headers=auth, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["param"] == "path"


# --- RELAY_PUBLIC_URL must be a public https address -------------------------------------------


def deploy_check_output() -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command("check", deploy=True, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


@pytest.mark.parametrize("url, warning", [
    ("http://localhost:8000", "relay.W001"),
    ("http://relay.example.com", "relay.W001"),
    ("relay.example.com", "relay.W001"),
    ("https://localhost:8443", "relay.W002"),
    ("https://10.1.2.3", "relay.W002"),
    ("https://relay.internal", "relay.W002"),
])
def test_check_deploy_warns_when_the_public_url_is_not_public_https(settings, url, warning):
    settings.RELAY_PUBLIC_URL = url
    output = deploy_check_output()
    assert warning in output and "RELAY_PUBLIC_URL" in output


def test_check_deploy_is_quiet_about_a_public_https_url(settings):
    settings.RELAY_PUBLIC_URL = "https://relay.example.com"
    assert "relay.W00" not in deploy_check_output()


def test_plain_check_leaves_the_public_url_to_deploy_checks(settings):
    settings.RELAY_PUBLIC_URL = "http://localhost:8000"
    out = io.StringIO()
    call_command("check", stdout=out, stderr=out)
    assert "relay.W00" not in out.getvalue()


def test_gunicorn_warns_at_start_up_about_an_http_public_url(start_gunicorn):
    relay = start_gunicorn(RELAY_PUBLIC_URL="http://localhost:8000")
    settle()
    log = relay.log()
    assert "relay.W001" in log and "RELAY_PUBLIC_URL is 'http://localhost:8000'" in log
    assert "RELAY_PUBLIC_URL=https://" in log  # the hint says what to set


def test_gunicorn_starts_quietly_with_a_public_https_url(start_gunicorn):
    relay = start_gunicorn(RELAY_PUBLIC_URL="https://relay.example.com")
    assert requests.get(f"{relay.url}/openapi.json", timeout=10).json()["servers"] == [
        {"url": "https://relay.example.com"}]
    assert "relay.W00" not in relay.log()
