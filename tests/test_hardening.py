"""Production settings, admin brute force, CORS."""
import os
import secrets
import subprocess
import sys

import pytest
import requests
from django.urls import reverse

from tests.conftest import ROOT


def test_production_settings_pass_check_deploy():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "relay_project.settings", "DEBUG": "false",
           "HTTPS": "true", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "relay.example.com",
           "RELAY_PUBLIC_URL": "https://relay.example.com"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_settings_refuse_to_start_without_a_secret_key():
    # Empty rather than absent: a `.env` beside manage.py (./scripts/serve writes one) fills
    # only variables the environment does not have, so it cannot supply a key here.
    env = {**os.environ, "SECRET_KEY": "", "DJANGO_SETTINGS_MODULE": "relay_project.settings", "DEBUG": "false"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


@pytest.mark.django_db
def test_admin_login_locks_out_after_repeated_failures(client, django_user_model, settings):
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_superuser("admin", "a@example.com", "right-password")
    url = reverse("admin:login")
    for _ in range(3):
        response = client.post(url, {"username": "admin", "password": "wrong"}, REMOTE_ADDR="10.1.1.1")
    assert response.status_code == 429
    # Locked: even the right password is refused now...
    response = client.post(url, {"username": "admin", "password": "right-password"}, REMOTE_ADDR="10.1.1.1")
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    # ...from that address.
    response = client.post(url, {"username": "admin", "password": "right-password"}, REMOTE_ADDR="10.2.2.2")
    assert response.status_code == 302


@pytest.fixture
def cors(settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://tools.example.com"]


def test_cors_preflight_needs_no_key_and_reaches_nothing(cors, relay_url, upstream):
    response = requests.options(f"{relay_url}/v1/responses", headers={
        "Origin": "https://tools.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-lang"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://tools.example.com"
    assert "authorization" in response.headers["Access-Control-Allow-Headers"]
    assert upstream.requests == []


def test_cors_refuses_other_origins(cors, relay_url, upstream):
    response = requests.options(f"{relay_url}/v1/responses", headers={
        "Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in response.headers
    assert upstream.requests == []


def test_cors_headers_on_real_calls(cors, relay_url, relay_key, upstream):
    response = requests.get(f"{relay_url}/v1/models", headers={
        "Origin": "https://tools.example.com", "Authorization": f"Bearer {relay_key}"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://tools.example.com"
    assert "x-request-id" in response.headers["Access-Control-Expose-Headers"]
