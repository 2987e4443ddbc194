"""What docs/operations.md tells operators, held to: key rotation's effects, and every file
it names exists."""
from __future__ import annotations

import re

import requests

from audit_app.macs import chain_key
from tests.conftest import ROOT

DOC = ROOT / "docs" / "operations.md"
# Named by the doc, written by the issue that owns them (the fail-closed issue: trusted proxies).
WRITTEN_ELSEWHERE = {"docs/security.md"}


def test_setting_audit_chain_key_to_the_current_secret_key_keeps_the_chain_key(settings):
    settings.SECRET_KEY, settings.AUDIT_CHAIN_KEY = "the-original-secret", ""
    derived = chain_key()
    settings.SECRET_KEY, settings.AUDIT_CHAIN_KEY = "a-brand-new-secret", "the-original-secret"
    assert chain_key() == derived
    # Without that step, a new SECRET_KEY is a new chain key: the whole trail stops verifying.
    settings.AUDIT_CHAIN_KEY = ""
    assert chain_key() != derived


def test_a_new_secret_key_leaves_relay_keys_working(relay_url, relay_key, settings):
    settings.SECRET_KEY = "a-brand-new-secret"
    response = requests.get(f"{relay_url}/v1/models", headers={"Authorization": f"Bearer {relay_key}"}, timeout=10)
    assert response.status_code == 200


def test_admin_sessions_survive_a_secret_key_change_only_with_the_old_key_in_the_fallbacks(
        client, django_user_model, settings):
    admin = django_user_model.objects.create_superuser("root", password="unused")
    kept, dropped = client, client.__class__()
    for c in (kept, dropped):
        c.force_login(admin)
        assert c.get("/admin/").status_code == 200
    old = settings.SECRET_KEY
    settings.SECRET_KEY = "a-brand-new-secret"
    assert dropped.get("/admin/").status_code == 302  # logged out: back to the login page
    settings.SECRET_KEY_FALLBACKS = [old]
    assert kept.get("/admin/").status_code == 200


def test_every_repository_file_the_doc_names_exists():
    text = DOC.read_text()
    named = set(re.findall(r"`((?:scripts|tests|audit_app|proxy_app|relay_project|docs)/[\w./*-]+)`", text))
    assert len(named) > 10
    for path in named - WRITTEN_ELSEWHERE:
        assert list(ROOT.glob(path)), f"docs/operations.md names {path}, which does not exist"
    assert "docs/operations.md" in (ROOT / "README.md").read_text()


def test_secret_key_fallbacks_come_from_the_environment():
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
                               "print(settings.SECRET_KEY_FALLBACKS)"],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "relay_project.settings", "SECRET_KEY_FALLBACKS": "old-1,old-2"})
    assert result.stdout.strip() == "['old-1', 'old-2']"
