"""Closing a request's SQLite connection must not checkpoint and delete the WAL each time.

Each case runs in a fresh process: SQLite decides "last connection" per
process and per file, so the test process's own connections would blur it.
"""
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

DJANGO_WRITE = """
import os, django
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE t (x INTEGER)")
    cursor.execute("INSERT INTO t VALUES (1)")
connection.close()  # what Django does at the end of every request
print(os.path.exists(os.environ["WAL"]))
"""

PLAIN_WRITE = """
import os, sqlite3
db = sqlite3.connect(os.environ["DB"])
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE t (x INTEGER)")
db.commit()
db.close()
print(os.path.exists(os.environ["WAL"]))
"""


def run(code: str, db: Path) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": f"sqlite:///{db}",
           "DB": str(db), "WAL": f"{db}-wal"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_closing_a_request_connection_keeps_the_wal(tmp_path):
    assert run(DJANGO_WRITE, tmp_path / "relay.sqlite3") == "True"


def test_without_a_connection_kept_open_the_last_close_deletes_the_wal(tmp_path):
    # The control: what every request paid before (checkpoint, sync, delete).
    assert run(PLAIN_WRITE, tmp_path / "plain.sqlite3") == "False"


CHECKPOINT_SETTING = """
import django
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    print(cursor.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
          cursor.execute("PRAGMA journal_size_limit").fetchone()[0])
"""


def test_checkpoints_come_every_10000_pages_or_as_configured(tmp_path, monkeypatch):
    # At SQLite's default of 1,000 pages one call in 45 paid for a checkpoint.
    monkeypatch.delenv("SQLITE_WAL_AUTOCHECKPOINT", raising=False)
    assert run(CHECKPOINT_SETTING, tmp_path / "a.sqlite3") == "10000 67108864"
    monkeypatch.setenv("SQLITE_WAL_AUTOCHECKPOINT", "500")
    assert run(CHECKPOINT_SETTING, tmp_path / "b.sqlite3") == "500 67108864"
