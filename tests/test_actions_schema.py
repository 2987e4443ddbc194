"""The GPT Actions schema, and schemathesis fuzzing the live relay from it."""
import hypothesis
import schemathesis

from tests.conftest import settle


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
