"""The restore drill: a database with calls, files, batches and a sealed ledger is backed up
online with scripts/backup_db.py, restored into a fresh database, and verify_audit passes
there with every row of every table back. On SQLite and on PostgreSQL (DATABASE_URL).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading

import pytest
import requests
from django.core.management import call_command
from django.db import connection

from audit_app.ledger import seal
from audit_app.models import ApiCall, BatchRecord, BatchResult, FileRecord, LedgerEntry
from tests.conftest import ROOT, database_url_for_subprocess, finished_calls, settle

SCRIPT = ROOT / "scripts" / "backup_db.py"

# Prints, for every table the relay owns, its row count and a hash of all its rows in key
# order, read through the ORM from whatever DATABASE_URL points at.
SNAPSHOT = r"""
import hashlib, json, django
django.setup()
from django.apps import apps
out = {}
for model in apps.get_models():
    if model._meta.app_label not in ("audit_app", "proxy_app", "auth"):
        continue
    digest, count = hashlib.sha256(), 0
    for row in model.objects.order_by("pk").values_list():
        digest.update(repr(row).encode())
        count += 1
    out[model._meta.label] = [count, digest.hexdigest()]
print(json.dumps(out))
"""


def relay_env(database_url: str) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "relay_project.settings", "DATABASE_URL": database_url,
            "DATABASE_POOL": "false"}


def snapshot(database_url: str) -> dict[str, list]:
    result = subprocess.run([sys.executable, "-c", SNAPSHOT], cwd=ROOT, env=relay_env(database_url),
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def verify_audit(database_url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "verify_audit"], cwd=ROOT, env=relay_env(database_url),
                          capture_output=True, text=True)


def backup_db(*args: str, database_url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--database-url", database_url], cwd=ROOT,
                          capture_output=True, text=True)


@pytest.fixture
def fresh_database(tmp_path):
    """The URL of a new, empty database of the same kind as the test database."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored.sqlite3'}"
        return
    import psycopg

    name = f"{settings['NAME']}_restored"
    admin = dict(host=settings["HOST"], port=settings["PORT"], user=settings["USER"],
                 password=settings["PASSWORD"] or None, dbname="postgres", autocommit=True)
    with psycopg.connect(**admin) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgres://{settings['USER']}:{settings['PASSWORD']}@{settings['HOST']}:{settings['PORT']}/{name}"
    with psycopg.connect(**admin) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def audited(sdk, upstream, relay_url, relay_key):
    """Calls (streamed too), an uploaded file, a batch counted to its results, all sealed."""
    sdk.responses.create(model="gpt-4o-mini", input="hi")
    with sdk.responses.create(model="gpt-4o-mini", input="hi", stream=True) as stream:
        list(stream)
    sdk.embeddings.create(model="text-embedding-3-small", input="hi")
    lines = b"".join(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": "gpt-4o-mini", "messages": []}}).encode() + b"\n"
                     for i in range(3))
    input_file = sdk.files.create(file=("in.jsonl", io.BytesIO(lines)), purpose="batch")
    batch = sdk.batches.create(input_file_id=input_file.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    upstream.advance_batch(batch.id, "completed", output_lines=[
        upstream.make_batch_output_line(f"req-{i}", "gpt-4o-mini-2024-07-18", 100, 50) for i in range(3)])
    call_command("poll_batches", "--concurrency", "1", stdout=io.StringIO(), stderr=io.StringIO())
    finished_calls(5)
    settle()
    assert seal().sealed
    assert ApiCall.objects.count() == 5 and ApiCall.objects.filter(chain_seq__isnull=True).count() == 0
    assert FileRecord.objects.exists() and BatchRecord.objects.exists() and BatchResult.objects.count() == 3
    return relay_url, relay_key


def test_a_backup_taken_while_the_relay_writes_restores_with_every_row_and_a_verified_ledger(
        audited, fresh_database, tmp_path):
    relay_url, relay_key = audited
    source = database_url_for_subprocess()
    dump = tmp_path / "relay.backup"

    # Online: calls keep arriving while the backup runs.
    stop, flowing = threading.Event(), threading.Event()
    made = []

    def traffic() -> None:
        while not stop.is_set():
            made.append(requests.post(f"{relay_url}/v1/responses", json={"model": "gpt-4o-mini", "input": "more"},
                                      headers={"Authorization": f"Bearer {relay_key}"}, timeout=30).status_code)
            flowing.set()

    writer = threading.Thread(target=traffic, daemon=True)
    writer.start()
    assert flowing.wait(30)
    try:
        result = backup_db("backup", str(dump), database_url=source)
    finally:
        stop.set()
        writer.join()
    assert result.returncode == 0, result.stderr
    assert len(made) >= 2 and set(made) == {200}
    assert f"backed up {'sqlite' if connection.vendor == 'sqlite' else 'postgres'} database" in result.stdout
    settle()

    restored = backup_db("restore", str(dump), database_url=fresh_database)
    assert restored.returncode == 0, restored.stderr

    # What was sealed came back unchanged: verify_audit walks the ledger over the restored rows.
    verified = verify_audit(fresh_database)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ok" in verified.stdout.lower()

    # Every table is there; the sealed part of it row for row. Calls that arrived during the
    # backup are in it or not depending on when they committed, so the call table is compared
    # up to the last sealed call, and the rest by count at least.
    after = snapshot(fresh_database)
    ledger_entries = LedgerEntry.objects.count()
    assert after["audit_app.LedgerEntry"][0] == ledger_entries
    for label in ("audit_app.FileRecord", "audit_app.BatchRecord", "audit_app.BatchResult",
                  "audit_app.LedgerEntry", "proxy_app.RelayKey", "auth.User"):
        assert after[label] == snapshot(source)[label], label
    assert after["audit_app.ApiCall"][0] >= 5


def test_a_restored_database_is_identical_table_by_table(audited, fresh_database, tmp_path):
    source = database_url_for_subprocess()
    dump = tmp_path / "relay.backup"
    assert backup_db("backup", str(dump), database_url=source).returncode == 0
    assert backup_db("restore", str(dump), database_url=fresh_database).returncode == 0
    before, after = snapshot(source), snapshot(fresh_database)
    assert after == before
    assert all(after[label][0] for label in ("audit_app.ApiCall", "audit_app.FileRecord", "audit_app.BatchRecord",
                                             "audit_app.BatchResult", "audit_app.LedgerEntry",
                                             "audit_app.UsageDaily", "proxy_app.RelayKey"))
    assert verify_audit(fresh_database).returncode == 0


def test_verify_audit_on_a_restored_database_catches_a_row_that_did_not_come_back_intact(
        audited, fresh_database, tmp_path):
    dump = tmp_path / "relay.backup"
    assert backup_db("backup", str(dump), database_url=database_url_for_subprocess()).returncode == 0
    assert backup_db("restore", str(dump), database_url=fresh_database).returncode == 0
    tamper = ("from audit_app.models import ApiCall; import django;"
              "ApiCall.objects.filter(pk=ApiCall.objects.order_by('pk').first().pk).update(output_tokens=999999)")
    subprocess.run([sys.executable, "-c", "import django; django.setup(); " + tamper.replace("import django;", "")],
                   cwd=ROOT, env=relay_env(fresh_database), check=True)
    verified = verify_audit(fresh_database)
    assert verified.returncode != 0, verified.stdout


def test_restore_refuses_to_overwrite_an_existing_sqlite_database(tmp_path):
    existing = tmp_path / "db.sqlite3"
    existing.write_bytes(b"")
    (tmp_path / "backup").write_bytes(b"")
    result = backup_db("restore", str(tmp_path / "backup"), database_url=f"sqlite:///{existing}")
    assert result.returncode != 0 and "restore only into a new database" in result.stderr


def test_backups_into_a_directory_keep_only_the_newest(transactional_db, tmp_path):
    source = database_url_for_subprocess()
    for _ in range(3):
        result = backup_db("backup", str(tmp_path), "--keep", "2", database_url=source)
        assert result.returncode == 0, result.stderr
    kept = sorted(tmp_path.glob("relay-*.backup"))
    assert len(kept) == 2 and "removed" in result.stdout
    assert backup_db("backup", str(tmp_path / "one.backup"), "--keep", "2", database_url=source).returncode != 0
