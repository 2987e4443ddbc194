"""The relay's own endpoints: no key, JSON always, never audited."""
import pytest

from audit_app.models import ApiCall

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/", "/health", "/v1/health"])
def test_health_needs_no_key(client, path):
    response = client.get(path)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["version"]
    assert not ApiCall.objects.exists()


def test_ping_needs_no_key(client):
    response = client.get("/v1/actions/ping")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_wrong_method_on_local_endpoint_is_openai_shaped_405(client):
    response = client.post("/health", data="{}", content_type="application/json")
    assert response.status_code == 405
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}


def test_unknown_path_outside_v1_is_json_404(client):
    response = client.get("/nope/really")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "unknown_url"
