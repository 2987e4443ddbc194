"""The README's list of paths that need no relay key is the URLconf's, both ways."""
import re
from pathlib import Path

from django.urls import URLPattern
from django.urls.resolvers import RoutePattern

from relay_project import urls

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_keyless_paths() -> set[str]:
    sentence = README.split("These paths need no relay key:", 1)[1].split("Everything else", 1)[0]
    return set(re.findall(r"`(/[^`\s]*)`", sentence))


def routes() -> list[str]:
    """Every fixed route of the URLconf, but the admin's (which has its own login)."""
    out = []
    for pattern in urls.urlpatterns:
        if isinstance(pattern, URLPattern) and isinstance(pattern.pattern, RoutePattern):
            route = "/" + str(pattern.pattern)
            if not route.startswith("/admin/"):
                out.append(route)
    return out


def test_every_route_that_answers_without_a_key_is_in_the_readme(client, db):
    listed = readme_keyless_paths()
    assert len(routes()) >= 7
    for route in routes():
        if client.get(route).status_code != 401:
            assert route in listed, f"{route} answers without a key but the README does not say so"


def test_every_path_the_readme_lists_answers_without_a_key(client, db):
    listed = readme_keyless_paths()
    assert {"/openapi.json", "/.well-known/ai-plugin.json", "/v1/actions/ping"} <= listed
    for path in listed:
        assert client.get(path).status_code == 200, path


def test_relayed_paths_need_a_key(client, db):
    for path in ("/v1/models", "/v1/proxy", "/v1/files/file-1/content"):
        response = client.get(path)
        assert response.status_code == 401 and response.json()["error"]["type"], path
